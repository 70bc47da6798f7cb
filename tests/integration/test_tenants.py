"""Tenant profiles end to end: [tenant.NAME] sections with their own credentials and limits in
one chatprovd process. Each event is sent with its tenant's token (graph-sim attributes a chat
to the tenant its bearer token was issued for), throttling is per tenant, an unknown tenant is
rejected, and a tenant with broken credentials holds only its own events."""

import os
import time
import uuid

import pytest

from graphsim import wait_for
from stack import CLIENT_ID, SECRET, TENANT, Stack, group_event

FAB_TENANT = "fabrikam.onmicrosoft.com"
FAB_CLIENT = "00000000-0000-0000-0000-0000000000fa"
TAIL_TENANT = "tailspin.onmicrosoft.com"
TAIL_CLIENT = "00000000-0000-0000-0000-00000000007a"
CLIENT_REQUEST_ID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chatprov:client-request-id")
FAB_LIMIT, WINDOW_S, N = 5, 2, 20


def crid(event_id):
    return str(uuid.uuid5(CLIENT_REQUEST_ID_NS, event_id))


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def tenant_event(i, tenant):
    ev = group_event(i, tenant=tenant)
    ev["id"] = "%s-%04d" % (tenant or "default", i)
    return ev


def test_two_tenants_tokens_and_limits(tmp_path):
    sim = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3,
           "clients": [{"tenant": TENANT, "client_id": CLIENT_ID, "secret": SECRET},
                       {"tenant": FAB_TENANT, "client_id": FAB_CLIENT, "secret": "fab-secret"},
                       {"tenant": TAIL_TENANT, "client_id": TAIL_CLIENT,
                        "secret": "tail-secret"}]}
    tmp = str(tmp_path)
    with Stack(tmp_path, sim_config=sim) as stack:
        overrides = {
            "limits": {"window_s": str(WINDOW_S), "chat_creates_per_10s_per_tenant": "10000"},
            "tenant.fabrikam": {
                "tenant_id": FAB_TENANT, "client_id": FAB_CLIENT,
                "client_secret_file": write(os.path.join(tmp, "fab-secret"), "fab-secret\n"),
                "chat_creates_per_10s_per_tenant": str(FAB_LIMIT)},
            "tenant.tailspin": {
                "tenant_id": TAIL_TENANT, "client_id": TAIL_CLIENT,
                "client_secret_file": write(os.path.join(tmp, "tail-secret"), "wrong\n")},
        }
        daemon = stack.start_daemon(**overrides)
        fab = [tenant_event(i, "fabrikam") for i in range(N)]
        default = [tenant_event(i, None) for i in range(N)]
        unknown = tenant_event(0, "nope")
        tail = [tenant_event(i, "tailspin") for i in range(3)]
        # Interleaved in one backlog: the throttled tenant must not hold the other back.
        stack.produce([e for pair in zip(fab, default) for e in pair] + [unknown] + tail)
        results = stack.wait_results([e["id"] for e in fab + default + [unknown]], timeout=60)
        assert wait_for(lambda: "AADSTS7000215" in daemon.log_text(), 10)
        time.sleep(1)
        stack.read_results(timeout=0.5)
        ledger = stack.graph.ledger()
        log = daemon.log_text()
        assert daemon.stop() == 0, log[-3000:]

    for e in fab + default:
        assert results[e["id"]]["status"] == "succeeded", results[e["id"]]
    # Each chat was created with its own tenant's token.
    chats = {c["clientRequestId"]: c for c in ledger["chats"]}
    for e in fab:
        assert chats[crid(e["id"])]["tenant"] == FAB_TENANT
    for e in default:
        assert chats[crid(e["id"])]["tenant"] == TENANT

    # Throttling per tenant: fabrikam is paced at 5 per 2 s, the default tenant is not.
    fab_times = sorted(chats[crid(e["id"])]["createdAt"] for e in fab)
    default_times = sorted(chats[crid(e["id"])]["createdAt"] for e in default)
    min_span_ms = (N - FAB_LIMIT) * WINDOW_S * 1000 / FAB_LIMIT  # beyond the first burst
    assert fab_times[-1] - fab_times[0] >= min_span_ms * 0.85, fab_times
    assert default_times[-1] - default_times[0] < 1500, default_times
    assert default_times[-1] < fab_times[2 * FAB_LIMIT - 1], "default waited for fabrikam"

    # An unknown profile name: rejected with the reason, Graph never asked.
    r = results[unknown["id"]]
    assert r["status"] == "rejected"
    assert "tenant: no profile named 'nope' is configured" in r["error"]["message"], r
    assert crid(unknown["id"]) not in {p["clientRequestId"] for p in ledger["chat_posts"]}

    # Broken credentials of one profile: reported once with code and hint, its own events
    # held (no result, no POST), everyone else unaffected.
    lines = [line for line in log.splitlines() if "AADSTS7000215" in line]
    assert len(lines) == 1, lines
    assert "profile 'tailspin'" in lines[0] and "invalid client secret" in lines[0]
    assert ledger["token_failures"] == {"AADSTS7000215": 1}
    for e in tail:
        assert e["id"] not in stack.results
        assert crid(e["id"]) not in {p["clientRequestId"] for p in ledger["chat_posts"]}


def test_broken_tenant_does_not_stall_others(tmp_path):
    """One misconfigured tenant's backlog must not stop the others: its events end (failed,
    with the token error) once retries run out, and the consumer keeps going."""
    sim = {"clients": [{"tenant": TENANT, "client_id": CLIENT_ID, "secret": SECRET},
                       {"tenant": TAIL_TENANT, "client_id": TAIL_CLIENT,
                        "secret": "tail-secret"}]}
    with Stack(tmp_path, sim_config=sim) as stack:
        stack.start_daemon(
            kafka={"max_queued": "10"}, retry={"max_elapsed_s": "3"},
            **{"tenant.tailspin": {
                "tenant_id": TAIL_TENANT, "client_id": TAIL_CLIENT,
                "client_secret_file": write(os.path.join(str(tmp_path), "tail"), "wrong\n")}})
        broken = [tenant_event(i, "tailspin") for i in range(30)]
        fine = [tenant_event(i, None) for i in range(5)]
        stack.produce(broken + fine)
        results = stack.wait_results([e["id"] for e in fine], timeout=20)
    assert all(r["status"] == "succeeded" for r in results.values())
