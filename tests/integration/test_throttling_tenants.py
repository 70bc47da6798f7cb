"""Two tenants in ONE partition, one of them throttled hard by Graph: the other's events go at
its own rate (per-tenant queues, no head-of-line blocking).

graph-sim allows every tenant 5 POST /chats per 1 s. chatprovd believes contoso may send 20
per 1 s (so Graph throttles it hard) and knows fabrikam's real limit (5 per 1 s). contoso's
backlog is produced first, fabrikam's behind it, all under the same Kafka key.

Figures: pytest -s, or $CHATPROV_BUILD_DIR/test-figures/throttling-tenants.txt."""

import os

import pytest

from stack import CLIENT_ID, SECRET, TENANT, Stack, group_event
from throttling_figures import client_request_id, format_figures, post_figures, report

WINDOW_S = 1
SERVER_LIMIT = 5
CONFIGURED = 20
FABRIKAM = "fabrikam.onmicrosoft.com"
FABRIKAM_CLIENT = "00000000-0000-0000-0000-0000000000fb"
FABRIKAM_SECRET = "fabrikam-secret"
CONTOSO_EVENTS = 80
FABRIKAM_EVENTS = 40


def test_throttled_tenant_does_not_block_the_other(tmp_path):
    sim = {"limit_per_tenant": SERVER_LIMIT, "limit_window_s": WINDOW_S,
           "clients": [{"tenant": TENANT, "client_id": CLIENT_ID, "secret": SECRET},
                       {"tenant": FABRIKAM, "client_id": FABRIKAM_CLIENT,
                        "secret": FABRIKAM_SECRET}]}
    contoso = [group_event(i, topic="Contoso %d" % i) for i in range(CONTOSO_EVENTS)]
    fabrikam = [group_event(1000 + i, topic="Fabrikam %d" % i, tenant="fabrikam")
                for i in range(FABRIKAM_EVENTS)]
    with Stack(tmp_path, sim_config=sim) as stack:
        secret = os.path.join(str(tmp_path), "fabrikam-secret")
        with open(secret, "w") as f:
            f.write(FABRIKAM_SECRET + "\n")
        stack.start_daemon(**{
            "limits": {"chat_creates_per_10s_per_tenant": str(CONFIGURED), "window_s": str(WINDOW_S)},
            "tenant.fabrikam": {"tenant_id": FABRIKAM, "client_id": FABRIKAM_CLIENT,
                                "client_secret_file": secret,
                                "chat_creates_per_10s_per_tenant": str(SERVER_LIMIT)}})
        stack.produce(contoso + fabrikam, key=b"same")
        results = stack.wait_results([e["id"] for e in contoso + fabrikam], timeout=120)
        ledger = stack.graph.ledger()
        assert stack.daemon.stop() == 0, stack.daemon.log_text()[-3000:]

    assert all(r["status"] == "succeeded" for r in results.values())
    crids = {client_request_id(e["id"]): name
             for name, events in (("contoso", contoso), ("fabrikam", fabrikam))
             for e in events}
    posts = {"contoso": [], "fabrikam": []}
    for p in ledger["chat_posts"]:
        posts[crids[p["clientRequestId"]]].append(p)
    fig_c = post_figures(posts["contoso"], SERVER_LIMIT / WINDOW_S, WINDOW_S)
    fig_f = post_figures(posts["fabrikam"], SERVER_LIMIT / WINDOW_S, WINDOW_S)
    last_created = {name: max(p["at"] for p in ps if p["status"] in (201, 202))
                    for name, ps in posts.items()}
    fabrikam_start_lag_s = (min(p["at"] for p in posts["fabrikam"]) -
                            min(p["at"] for p in posts["contoso"])) / 1000.0
    fig_c["retry_after_violations"] = ledger["retry_after_violations"]
    report("throttling-tenants", "contoso(configured 20/s, Graph 5/s) %s" % format_figures(fig_c))
    report("throttling-tenants", "fabrikam(configured 5/s, Graph 5/s) %s start_lag_s=%.2f "
           "finished_before_contoso_by_s=%.2f"
           % (format_figures(fig_f), fabrikam_start_lag_s,
              (last_created["contoso"] - last_created["fabrikam"]) / 1000.0))

    # contoso really was throttled hard ...
    assert fig_c["throttled_429"] > 0
    # ... and only its first, blind burst (20 requests at once, Graph had 5 tokens) can still
    # arrive after Graph advertised a Retry-After: they were all in flight before chatprovd
    # saw the first 429. Afterwards a block ends with one probe, never a burst.
    assert ledger["retry_after_violations"] <= CONFIGURED - SERVER_LIMIT
    # ... and fabrikam, queued behind it in the same partition, did not wait for it:
    # it started at once, ran at its own limit, and finished while contoso was still busy.
    assert fabrikam_start_lag_s < 1.0
    # Blocked behind contoso, fabrikam would create nothing for contoso's 16 s. A stray 429 at
    # an exactly matched limit (timing jitter, about one per run) costs it a 1 s block and a
    # halved rate for a while: ~18 % of this short run; without one it runs at ~100 %.
    assert fig_f["goodput_share"] >= 0.75, fig_f
    assert fig_f["throttled_share"] <= 0.05, fig_f
    assert last_created["fabrikam"] < last_created["contoso"]
