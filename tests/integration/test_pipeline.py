"""The pipeline end to end: kafka-mock + graph-sim + chatprovd as separate processes."""

import json
import os
import random
import signal
import time
import uuid

import pytest

from stack import Stack, group_event, one_on_one_event, INPUT

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_REQUEST_ID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chatprov:client-request-id")
FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3}


def client_request_id(event_id):
    return str(uuid.uuid5(CLIENT_REQUEST_ID_NS, event_id))


def examples():
    with open(os.path.join(os.environ["CHATPROV_SOURCE_DIR"], "etc", "examples",
                           "create-chat.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def documented_bodies():
    with open(os.path.join(HERE, "data", "documented_bodies.json")) as f:
        return json.load(f)["bodies"]


def assert_clean_exit(daemon):
    code = daemon.stop()
    assert code == 0, daemon.log_text()[-3000:]


def test_documented_examples(tmp_path):
    """Microsoft's six examples: Graph receives the documented bodies, results carry its ids."""
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        stack.start_daemon()
        events = examples()
        # Example 3 first: its pair is new, so Graph answers 202 and runs an operation;
        # examples 1 and 6 name the same pair afterwards and get the existing chat.
        trace = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                 ("x-correlation-id", b"onboarding-42")]
        stack.produce([events[2]], headers=trace)
        stack.wait_results([events[2]["id"]], timeout=60)
        stack.produce(events[:2] + events[3:], headers=trace)
        results = stack.wait_results([e["id"] for e in events], timeout=60)
        ledger = stack.graph.ledger()
        assert_clean_exit(stack.daemon)

    for event in events:
        result = results[event["id"]]
        assert result["schema"] == "chatprov.result.v1"
        assert result["status"] == "succeeded", result
        assert result["graph"]["clientRequestId"] == client_request_id(event["id"])
        assert result["chat"]["chatType"] == event["chatType"]
    # Example 3 has an app: Graph answers 202 and the operation is followed to its end.
    assert results["docs-example-3"]["operation"]["status"] == "succeeded"
    assert results["docs-example-3"]["graph"]["httpStatus"] == 202
    # Examples 1 and 6 name the same pair: Graph returns the existing one-on-one chat.
    assert results["docs-example-1"]["chat"]["id"] == results["docs-example-3"]["chat"]["id"]
    assert results["docs-example-1"]["chat"]["id"] == results["docs-example-6"]["chat"]["id"]

    # Results are keyed like their input (the id here) and carry the input's headers.
    for entry in stack.result_messages:
        assert entry["key"] == entry["result"]["id"].encode()
        assert ("traceparent", trace[0][1]) in entry["headers"], entry["headers"]
        assert ("x-correlation-id", b"onboarding-42") in entry["headers"]
    ledger_ids = {chat["id"] for chat in ledger["chats"]}
    for result in results.values():
        assert result["chat"]["id"] in ledger_ids
    by_crid = {}
    for chat in ledger["chats"]:
        by_crid.setdefault(chat["clientRequestId"], chat)
    received = {p["clientRequestId"] for p in ledger["chat_posts"]}
    for event, body in zip(events, documented_bodies()):
        crid = client_request_id(event["id"])
        assert crid in received
        if crid in by_crid:
            assert by_crid[crid]["body"] == body, event["id"]


def mixed_events(n, invalid_share=0.05, seed=7):
    rng = random.Random(seed)
    events, expected = [], {}
    pairs = [(rng.randrange(40), 40 + rng.randrange(40)) for _ in range(30)]
    for i in range(n):
        roll = rng.random()
        if roll < invalid_share:
            kind = rng.choice(["topic_on_one", "three_members", "bad_guid", "two_apps"])
            ev = one_on_one_event(i, pair=(i, i + 1))
            ev["id"] = "bad-%06d" % i
            if kind == "topic_on_one":
                ev["topic"] = "not allowed"
            elif kind == "three_members":
                ev["members"].append({"userId": str(uuid.uuid4())})
            elif kind == "bad_guid":
                ev["members"][0]["userId"] = "8ba98gf6-7fc2-4eb2-c7f2-aef9f21fd98g"
            else:
                ev["installedApps"] = [str(uuid.uuid4()), str(uuid.uuid4())]
            expected[ev["id"]] = "rejected"
        elif roll < 0.45:
            ev = group_event(i, members=3 + i % 5, app=(i % 10 == 0))
            expected[ev["id"]] = "succeeded"
        else:
            ev = one_on_one_event(i, pair=rng.choice(pairs), app=(i % 7 == 0))
            expected[ev["id"]] = "succeeded"
        events.append(ev)
    return events, expected


def test_thousand_mixed_events(tmp_path):
    """1,000 mixed events, 5 % invalid: one final outcome per id, nothing invalid sent."""
    events, expected = mixed_events(1000)
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        stack.start_daemon()
        stack.produce(events)
        results = stack.wait_results(expected, timeout=180)
        time.sleep(1)
        stack.read_results(timeout=1)
        ledger = stack.graph.ledger()
        assert_clean_exit(stack.daemon)
        dlq = stack.read_topic("chat.dlq")

    for event_id, status in expected.items():
        copies = stack.results[event_id]
        assert len(copies) == 1, copies
        assert results[event_id]["status"] == status, results[event_id]
        if status == "rejected":
            assert results[event_id]["error"]["code"] == "InvalidRequest"
            assert results[event_id]["error"]["message"]
            assert results[event_id]["graph"] is None
    ledger_ids = {chat["id"] for chat in ledger["chats"]}
    for event_id, status in expected.items():
        if status == "succeeded":
            assert results[event_id]["chat"]["id"] in ledger_ids
    sent = {p["clientRequestId"] for p in ledger["chat_posts"]}
    invalid = {client_request_id(i) for i, s in expected.items() if s == "rejected"}
    assert not sent & invalid, "Graph was called for an invalid event"
    assert ledger["duplicate_group_chats"] == 0
    # Every rejected message went to the DLQ byte for byte, with the reason in a header.
    rejected = [e for e in events if expected[e["id"]] == "rejected"]
    assert len(dlq) == len(rejected)
    originals = {json.dumps(e).encode() for e in rejected}
    for msg in dlq:
        assert msg.value() in originals
        assert dict(msg.headers())["chatprov-reject-reason"]


def test_transient_503s_lose_nothing(tmp_path):
    """graph-sim answers 5 % of POSTs with 503: every event still succeeds."""
    events = [group_event(i) for i in range(300)]
    config = dict(FAST_OPERATIONS, fault_503_rate=0.05, fault_503_retry_after_s=0)
    with Stack(tmp_path, sim_config=config) as stack:
        stack.start_daemon()
        stack.produce(events)
        results = stack.wait_results([e["id"] for e in events], timeout=120)
        ledger = stack.graph.ledger()
        assert_clean_exit(stack.daemon)
    assert all(r["status"] == "succeeded" for r in results.values())
    assert ledger["requests"]["POST /{version}/chats"].get("503", 0) > 0
    assert ledger["duplicate_group_chats"] == 0


def test_token_refresh_during_a_run(tmp_path):
    """Tokens live 10 s during a 60 s trickle of events: refreshed, no event fails."""
    config = dict(FAST_OPERATIONS, token_lifetime_s=10)
    with Stack(tmp_path, sim_config=config) as stack:
        stack.start_daemon()
        ids = []
        for second in range(60):
            batch = [group_event(second * 5 + k) for k in range(5)]
            stack.produce(batch)
            ids += [e["id"] for e in batch]
            time.sleep(1)
        results = stack.wait_results(ids, timeout=60)
        ledger = stack.graph.ledger()
        assert_clean_exit(stack.daemon)
    assert all(r["status"] == "succeeded" for r in results.values())
    assert ledger["token_grants"]["client_secret"] >= 5
    assert ledger["requests"]["POST /{version}/chats"].get("401", 0) == 0


def test_sigterm_mid_run_then_restart(tmp_path):
    """SIGTERM while requests are in flight, then a restart: every id gets its result."""
    events = [group_event(i, app=(i % 5 == 0)) for i in range(600)]
    config = dict(FAST_OPERATIONS, latency_ms=50)
    with Stack(tmp_path, sim_config=config) as stack:
        # 8 requests in flight at 50 ms each: about 4 s of work, so the stop lands mid-run.
        first = stack.start_daemon(graph={"max_in_flight": "8"})
        stack.produce(events)
        deadline = time.time() + 60
        while len(stack.results) < 100 and time.time() < deadline:
            stack.read_results(timeout=0.3)
        assert len(stack.results) >= 100
        assert first.stop(signal.SIGTERM) == 0, first.log_text()[-3000:]
        assert "STOPPING" in first.log_text() or "stopping" in first.log_text()
        assert len(stack.results) < len(events), "the stop came too late to test anything"
        stack.start_daemon(graph={"max_in_flight": "8"})
        results = stack.wait_results([e["id"] for e in events], timeout=180)
        assert_clean_exit(stack.daemon)
    assert all(r["status"] == "succeeded" for r in results.values())
