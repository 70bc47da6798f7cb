"""Guarantees at the edges (issue 13): the longest valid ids in bytes, 202 operations resumed
after a SIGKILL, and poll URLs read back from the state topic. chatprovd runs as a process
against kafka-mock and graph-sim; docs/crash-safety.md says what each test proves."""

import http.server
import json
import signal
import threading
import time

from confluent_kafka import Producer

from chaos import (CHAOS_SIM, FAST_GROUP, STATE_HEADER, assert_copies_agree,
                   assert_no_duplicate_group_chats, chat_id, client_request_id, drain_results,
                   posts_by_crid, state_records, wait_copies, with_overrides)
from stack import STATE, Stack, group_event, one_on_one_event


# ---- what an instance finished stays known while it runs ----

def test_answered_ids_are_replayed_after_a_minute(tmp_path):
    """Group chats (with and without an app) answered by one instance, sent again once its
    once-a-minute pass over the state (state_forget_older) has run: every copy gets the
    recorded result, Graph gets no second POST. Before, the mirror took the time of what an
    instance wrote from the delivery report (librdkafka's mock cluster answers LogAppendTime
    1234 ms), so the pass forgot every request as older than a week's retention and each one
    was POSTed again: a second group chat per id (the soak's ASan run: 4)."""
    events = [group_event(i, app=(i % 4 == 0)) for i in range(24)]
    ids = [e["id"] for e in events]
    with Stack(tmp_path) as stack:
        config = stack.write_config(**FAST_GROUP)
        stack.start_daemon(config)
        stack.produce(events)
        stack.wait_results(ids, timeout=120)
        # The pass runs at most a minute after the last result; 75 s leave room on a busy host.
        end = time.monotonic() + 75
        while time.monotonic() < end:
            stack.read_results(timeout=0.5)
        stack.produce(events)
        wait_copies(stack, ids, 2, timeout=120)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        drain_results(stack)
        ledger = stack.graph.ledger()
        log = stack.daemon.log_text()

    posts = posts_by_crid(ledger)
    twice = [i for i in ids if len(posts.get(client_request_id(i), [])) != 1]
    assert not twice, "%d of %d ids POSTed again" % (len(twice), len(ids))
    assert_no_duplicate_group_chats(ledger)
    assert_copies_agree(stack)
    assert "forgot" not in log, [line for line in log.splitlines() if "forgot" in line]
    for i in ids:
        assert [r["status"] for r in stack.results[i]] == ["succeeded"] * 2, stack.results[i]


# ---- ids of 200 characters, up to 800 bytes ----

def multibyte_id(i):
    """200 code points, none of them ASCII: even i 'é' (2 bytes each, 400 bytes), odd i an
    emoji (4 bytes each, 800 bytes, the most a valid id can be); the first one tells them
    apart."""
    first = chr(0x100 + i) if i % 2 == 0 else chr(0x1F300 + i)
    fill = "\u00e9" if i % 2 == 0 else "\U0001F600"
    return first + fill * 199


def test_multibyte_ids_across_restarts(tmp_path):
    """200 group chats whose ids are 200 multibyte characters (400 and 800 bytes): chatprovd
    is SIGKILLed half-way, restarted, then stopped and restarted again and sent all 200 once
    more. Every id ends succeeded with one chat, every copy of a result agrees, and Graph
    got one POST per id: the state of such ids survives restores like any other."""
    events = []
    for i in range(200):
        ev = group_event(i)
        ev["id"] = multibyte_id(i)
        events.append(ev)
    ids = [e["id"] for e in events]
    assert len(ids[1].encode()) == 800 and len(ids[0].encode()) == 400
    # 4 requests in flight at 100 ms each: 200 take 5 s, so the kill lands half-way.
    with Stack(tmp_path, sim_config=dict(CHAOS_SIM, latency_ms=100)) as stack:
        config = stack.write_config(**with_overrides(FAST_GROUP,
                                                     {"graph": {"max_in_flight": "4"}}))
        stack.start_daemon(config)
        stack.produce(events)
        deadline = time.monotonic() + 90
        while len(stack.results) < 100 and time.monotonic() < deadline:
            stack.read_results(timeout=0.2)
        assert stack.daemon.sigkill() == -9
        assert 100 <= len(stack.results) < 200, len(stack.results)
        stack.start_daemon(config)
        stack.wait_results(ids, timeout=120)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        drain_results(stack)
        before = {i: len(stack.results[i]) for i in ids}
        stack.start_daemon(config)
        stack.produce(events)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and \
                any(len(stack.results.get(i, [])) <= before[i] for i in ids):
            stack.read_results(timeout=0.5)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        drain_results(stack)
        ledger = stack.graph.ledger()
        state = state_records(stack)

    late = [i for i in ids if len(stack.results.get(i, [])) <= before[i]]
    assert not late, "%d ids not answered again after the restart" % len(late)
    assert_no_duplicate_group_chats(ledger)
    assert_copies_agree(stack)
    posts = posts_by_crid(ledger)
    twice = [i for i in ids if len(posts.get(client_request_id(i), [])) != 1]
    assert not twice, "%d ids posted %s times" % (
        len(twice), sorted({len(posts.get(client_request_id(i), [])) for i in twice}))
    for i in ids:
        assert stack.results[i][0]["status"] == "succeeded", stack.results[i][0]
        assert stack.results[i][0]["id"] == i
    done = {key for key, kind, _, _ in state if kind == "done"}
    assert set(ids) <= done


# ---- 202 operations resumed after a SIGKILL ----

def test_operations_resumed_after_sigkill(tmp_path):
    """60 group chats with an app (graph-sim answers 202; each operation runs 10 s). Once
    every operation is recorded in the state topic, chatprovd is SIGKILLed and restarted:
    the new instance resumes them, within [operations] timeout_s counted from the real
    start. Every id succeeds, and its result reads like any other: the attempts made, the
    chat's webUrl and createdDateTime, the operation's final status."""
    sim = dict(CHAOS_SIM, operation_in_progress_after_s=0.5, operation_done_after_s=10)
    events = [group_event(i, app=True) for i in range(60)]
    ids = [e["id"] for e in events]
    with Stack(tmp_path, sim_config=sim) as stack:
        overrides = with_overrides(FAST_GROUP, {"operations": {"poll_interval_s": "0.5",
                                                               "timeout_s": "60"}})
        stack.start_daemon(**overrides)
        stack.produce(events)
        deadline = time.monotonic() + 60
        recorded = set()
        while time.monotonic() < deadline and not set(ids) <= recorded:
            recorded = {k for k, kind, _, _ in state_records(stack, timeout=1.0)
                        if kind == "operation"}
        assert set(ids) <= recorded, "only %d operations recorded" % len(recorded & set(ids))
        stack.read_results(timeout=0.5)
        assert not stack.results, "operations ended before the kill: %s" % list(stack.results)
        assert stack.daemon.sigkill() == -9
        stack.start_daemon(**overrides)
        results = stack.wait_results(ids, timeout=90)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        drain_results(stack)
        ledger = stack.graph.ledger()

    assert_no_duplicate_group_chats(ledger)
    assert_copies_agree(stack)
    assert len(ledger["operations"]) == len(ids)
    for i in ids:
        r = results[i]
        assert r["status"] == "succeeded", r
        assert r["attempts"] >= 1, r
        assert r["operation"]["status"] == "succeeded", r
        assert r["chat"]["webUrl"] and r["chat"]["createdDateTime"], r
        assert r["graph"]["httpStatus"] == 202, r
        assert r["graph"]["requestId"], r  # the POST's, recorded with its operation


# ---- poll URLs from the state topic ----

class Recorder(http.server.BaseHTTPRequestHandler):
    """A host that is not Graph: it notes every request and what authorization it carried."""
    seen = []

    def handle_one(self):
        Recorder.seen.append((self.command, self.path, self.headers.get("Authorization")))
        body = b'{"status": "succeeded", "targetResourceId": "19:forged@thread.v2"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = handle_one

    def log_message(self, *args):
        pass


def forge_operation(bootstrap, event_id, partition, location):
    producer = Producer({"bootstrap.servers": bootstrap})
    value = json.dumps({"location": location, "startedAt": int(time.time() * 1000),
                        "attempts": 1}).encode()
    producer.produce(STATE, key=event_id.encode(), value=value, partition=partition,
                     headers=[(STATE_HEADER, b"operation")])
    assert producer.flush(10) == 0


def test_forged_operation_record(tmp_path):
    """Operation records whose poll URL points at another host (another port of 127.0.0.1,
    the same host and port behind user info) are put on the state topic before chatprovd
    starts. No request leaves for that host, with a token or without: each such request is
    treated as sent with an unknown outcome (a group chat looked up, then created once; a
    one-on-one chat posted), and answered."""
    Recorder.seen = []
    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    port = foreign.server_address[1]
    events = [group_event(1), one_on_one_event(2), group_event(3, app=True)]
    ids = [e["id"] for e in events]
    try:
        with Stack(tmp_path, sim_config=CHAOS_SIM) as stack:
            sim = stack.graph.url.split("://", 1)[1]
            locations = ["http://127.0.0.1:%d/beta/chats('19:a@thread.v2')/operations('o1')"
                         % port,
                         "http://127.0.0.1:%d/beta/chats('19:b@thread.v2')/operations('o2')"
                         % port,
                         "http://%s@127.0.0.1:%d/beta/chats('19:c@thread.v2')/operations('o3')"
                         % (sim, port)]
            for event, location in zip(events, locations):
                forge_operation(stack.kafka.bootstrap, event["id"], 2, location)
            stack.start_daemon(**FAST_GROUP)
            stack.produce(events, partition=2)
            results = stack.wait_results(ids, timeout=60)
            assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
            log = stack.daemon.log_text()
            ledger = stack.graph.ledger()
    finally:
        foreign.shutdown()

    assert Recorder.seen == [], Recorder.seen
    assert log.count("recorded operation URL is not on") == 3, log[-3000:]
    assert_no_duplicate_group_chats(ledger)
    posts = posts_by_crid(ledger)
    for event in events:
        r = results[event["id"]]
        assert r["status"] == "succeeded", r
        assert chat_id(r) and "forged" not in chat_id(r), r
        assert len(posts[client_request_id(event["id"])]) == 1
    # The two group chats are looked up once each: a refused operation record is not an
    # answer lost in flight, so the lookup does not wait for an operation (docs/state.md).
    lookups = sum(ledger["requests"].get("GET /{version}/users/{id}/chats", {}).values())
    assert lookups == 2, ledger["requests"]
