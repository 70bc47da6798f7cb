"""Onboarding as it really happens (issue 14): new hires Teams does not know yet, a tenant
whose admin has not consented yet, and the failed requests re-driven from the DLQ.

Times are scaled by CHATPROV_ONBOARDING_SCALE (default 0.2: users appear 4..12 s after the
run starts instead of 20..60 s, and every [retry] not_found_* duration shrinks alike);
1 runs it at the real durations.
"""

import calendar
import json
import os
import random
import re
import subprocess
import time

from chaos import (assert_no_duplicate_group_chats, chat_id, client_request_id,
                   group_chats_by_crid, posts_by_crid)
from stack import DLQ, INPUT, Stack, build_path, group_event, one_on_one_event
from test_metrics import Scrape, metrics_port

SCALE = float(os.environ.get("CHATPROV_ONBOARDING_SCALE", "0.2"))
FAST_OPERATIONS = {"operation_in_progress_after_s": 0.05, "operation_done_after_s": 0.2}
CONSENT_MESSAGE = (b"Missing role permissions on the request. API requires one of "
                   b"'Chat.Create'. Roles on the request ''.")
HINT = "needs the application permission Chat.Create, granted with admin consent"


def scaled(seconds):
    return "%g" % (seconds * SCALE)


def warm_up(stack):
    """One request through, so that the daemon holds a token and its partitions."""
    ev = one_on_one_event(999999)
    stack.produce([ev])
    stack.wait_results([ev["id"]], timeout=60)


def completed_ms(result):
    stamp = result["completedAt"]  # 2026-12-02T13:40:11.123Z
    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) * 1000 \
        + int(stamp[20:23])


def test_late_users_all_succeed(tmp_path):
    """30 % of 100 group chats name a user who appears 20..60 s (scaled) after the run
    starts: every request succeeds, each group chat once, the waits hold no one else up,
    `attempts` counts the tries Graph saw, the metric counts the 404s, the log names the
    member."""
    rng = random.Random(14)
    events = [group_event(i) for i in range(100)]
    late = {}  # event id -> (late user, seconds after the knob)
    for ev in rng.sample(events, 30):
        user = ev["members"][1]["userId"]
        late[ev["id"]] = (user, rng.uniform(20, 60) * SCALE)
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        daemon = stack.start_daemon(retry={"not_found_s": scaled(600),
                                           "not_found_base_delay_s": scaled(2),
                                           "not_found_max_delay_s": scaled(60),
                                           # the 404 budget stands apart from these
                                           "max_attempts": "2", "max_elapsed_s": "1"})
        port = metrics_port(daemon)
        warm_up(stack)
        stack.graph.config(late_users=[{"user": u, "after_s": s} for u, s in late.values()])
        knob_set_ms = time.time() * 1000
        stack.produce(events)
        results = stack.wait_results([e["id"] for e in events], timeout=120 * SCALE + 60)
        time.sleep(0.5)
        ledger = stack.graph.ledger()
        scrape = Scrape(port)
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        log = daemon.log_text()

    first_known_ms = knob_set_ms + min(s for _, s in late.values()) * 1000
    posts = posts_by_crid(ledger)
    not_found = 0
    for ev in events:
        r = results[ev["id"]]
        assert r["status"] == "succeeded", r
        crid = client_request_id(ev["id"])
        statuses = [p["status"] for p in posts[crid]]
        assert r["attempts"] == len(statuses), (r, statuses)
        if ev["id"] not in late:
            assert statuses == [201], statuses
            # Intake went on: nobody waited for the late members.
            assert completed_ms(r) < first_known_ms, (r["completedAt"], first_known_ms)
            continue
        user, after_s = late[ev["id"]]
        assert statuses[-1] == 201 and set(statuses[:-1]) == {404} and len(statuses) >= 2, \
            statuses
        not_found += len(statuses) - 1
        known_ms = knob_set_ms + after_s * 1000
        assert posts[crid][-2]["at"] < known_ms + 50, (posts[crid], known_ms)
        assert posts[crid][-1]["at"] > known_ms - 1000, (posts[crid], known_ms)
        assert "member %s unknown to Teams" % user in log, user
    assert_no_duplicate_group_chats(ledger)
    assert all(len(ids) == 1 for ids in group_chats_by_crid(ledger).values())
    assert scrape.value("chatprov_not_found_retries_total", tenant="default") == not_found
    assert scrape.value("chatprov_retries_total", tenant="default") == 0
    print("late users: %d 404s waited out over %d requests" % (not_found, len(late)))


def test_user_never_appears_fails_after_not_found_s(tmp_path):
    """A member Teams never learns of: the request is tried for [retry] not_found_s after the
    first 404 (not for max_elapsed_s, not for max_attempts), then fails with Graph's code,
    and its original message goes to the DLQ with why."""
    ghost = "7e0e2d8e-0000-4000-8000-0000000000aa"
    ev = group_event(1)
    ev["members"][2]["userId"] = ghost
    budget_s = 4.0
    with Stack(tmp_path, sim_config=dict(FAST_OPERATIONS, unknown_users=[ghost])) as stack:
        daemon = stack.start_daemon(retry={"not_found_s": "%g" % budget_s,
                                           "not_found_base_delay_s": "0.3",
                                           "not_found_max_delay_s": "1",
                                           "max_attempts": "1", "max_elapsed_s": "1"})
        warm_up(stack)
        stack.produce([ev])
        r = stack.wait_results([ev["id"]], timeout=60)[ev["id"]]
        ledger = stack.graph.ledger()
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        dlq = read_dlq(stack, [ev["id"]])
        log = daemon.log_text()

    assert r["status"] == "failed", r
    assert r["error"]["code"] == "NotFound" and r["error"]["httpStatus"] == 404, r
    assert ghost in r["error"]["message"]
    posts = posts_by_crid(ledger)[client_request_id(ev["id"])]
    assert [p["status"] for p in posts] == [404] * len(posts) and len(posts) >= 4, posts
    assert r["attempts"] == len(posts)
    # The last try is at the end of the budget, counted from the first 404.
    spread_s = (posts[-1]["at"] - posts[0]["at"]) / 1000
    assert budget_s - 0.3 <= spread_s <= budget_s + 1.5, spread_s
    assert client_request_id(ev["id"]) not in group_chats_by_crid(ledger)
    assert "member %s still unknown to Teams after [retry] not_found_s" % ghost in log
    [copy] = [m for m in dlq if m.key() == ev["id"].encode()]
    headers = dict(copy.headers())
    assert headers["chatprov-status"] == b"failed"
    assert headers["chatprov-error-code"] == b"NotFound"
    assert headers["chatprov-http-status"] == b"404"


def read_dlq(stack, ids, timeout=30):
    """The DLQ records of these ids, once all of them are there (the copy is acknowledged
    before the offset is committed, not before the result is read)."""
    keys = {i.encode() for i in ids}
    deadline = time.time() + timeout
    while True:
        found = [m for m in stack.read_topic(DLQ) if m.key() in keys]
        if {m.key() for m in found} >= keys or time.time() > deadline:
            return found


def redrive(stack, dlq_messages):
    """What `chatprovctl redrive` does: each DLQ record back to the input topic with its
    original key, value and headers (those the DLQ added are left out)."""
    for msg in dlq_messages:
        original = [(k, v) for k, v in (msg.headers() or []) if not k.startswith("chatprov-")]
        stack.produce([msg.value()], topic=INPUT, key=msg.key(), headers=original, flush=False)
    stack.flush_producer()


def chatprovctl(config, *args):
    """The operator's command against the stack's configuration; its stdout."""
    proc = subprocess.run([build_path("daemon", "chatprovctl"), "--config", config] + list(args),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def input_coordinates(stack, ids, timeout=30):
    """Where each id's message sits in the input topic: {key: (partition, offset)}."""
    keys = {i.encode() for i in ids}
    deadline = time.time() + timeout
    while True:
        found = {m.key(): (m.partition(), m.offset()) for m in stack.read_topic(INPUT)
                 if m.key() in keys}
        if set(found) >= keys or time.time() > deadline:
            return found


def test_consent_missing_then_redrive(tmp_path):
    """A bulk run against a tenant whose admin has not consented yet: 150 requests fail with
    Graph's 403 at once (no retry), one warning with the hint, a metric per tenant, and each
    request lands in the DLQ byte for byte with the headers that say why. Consent granted,
    the DLQ records re-produced to the input: every id succeeds, each group chat once. A
    succeeded id sent again, and the whole re-drive again, are answered from the state topic
    without Graph."""
    rng = random.Random(3)
    events = []
    for i in range(150):
        if i % 3 == 0:
            events.append(one_on_one_event(i, app=(i % 9 == 0)))
        else:
            events.append(group_event(i, app=(i % 10 == 1)))
    ids = [e["id"] for e in events]
    traceparent = {e["id"]: "00-%032x-%016x-01" % (rng.getrandbits(128), rng.getrandbits(64))
                   for e in events}
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        daemon = stack.start_daemon()
        port = metrics_port(daemon)
        warm_up(stack)
        stack.graph.config(consent_missing=["contoso.onmicrosoft.com"])
        for ev in events:
            stack.produce([ev], headers=[("traceparent", traceparent[ev["id"]].encode()),
                                         ("x-batch", b"onboarding-2026-12")], flush=False)
        stack.flush_producer()
        failed = stack.wait_results(ids, timeout=90)
        time.sleep(0.5)
        scrape = Scrape(port)
        ledger = stack.graph.ledger()
        dlq = read_dlq(stack, ids)
        coordinates = input_coordinates(stack, ids)

        # --- consent granted: re-drive every failed request ---
        stack.graph.config(consent_missing=[])
        dry = chatprovctl(daemon.config_path, "redrive", "--code", "Forbidden", "--dry-run")
        moved = chatprovctl(daemon.config_path, "redrive", "--code", "Forbidden")
        deadline = time.time() + 90
        while time.time() < deadline and not all(len(stack.results[i]) >= 2 for i in ids):
            stack.read_results(timeout=0.5)
        after = stack.graph.ledger()

        # --- a succeeded id again, and the whole re-drive again: from the state topic ---
        stack.produce([events[1]], headers=[("traceparent", b"again")])
        moved_again = chatprovctl(daemon.config_path, "redrive", "--code", "Forbidden")
        deadline = time.time() + 60
        while time.time() < deadline and not (
                len(stack.results[events[1]["id"]]) >= 4 and
                all(len(stack.results[i]) >= 3 for i in ids)):
            stack.read_results(timeout=0.5)
        final = stack.graph.ledger()
        final_scrape = Scrape(port)
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        log = daemon.log_text()
        dlq_after = read_dlq(stack, ids)

    # The first run: failed with Graph's code, at once, nothing created.
    for ev in events:
        r = failed[ev["id"]]
        assert r["status"] == "failed", r
        assert r["error"]["code"] == "Forbidden" and r["error"]["httpStatus"] == 403, r
        assert r["error"]["message"] == CONSENT_MESSAGE.decode()
        assert r["attempts"] == 1, r
    crids = {client_request_id(i) for i in ids}
    first_posts = [p for p in ledger["chat_posts"] if p["clientRequestId"] in crids]
    assert [p["status"] for p in first_posts] == [403] * len(events)
    assert not [c for c in ledger["chats"] if c["clientRequestId"] in crids]
    assert scrape.value("chatprov_forbidden_total", tenant="default") == len(events)
    assert scrape.value("chatprov_retries_total", tenant="default") == 0
    assert log.count(HINT) == 1, log.count(HINT)
    hint_line = [line for line in log.splitlines() if HINT in line][0]
    assert CONSENT_MESSAGE.decode() in hint_line and "default" in hint_line

    # The DLQ: each original message byte for byte, its headers, then why.
    by_key = {m.key().decode(): m for m in dlq}
    assert sorted(by_key) == sorted(ids) and len(dlq) == len(ids)
    for ev in events:
        msg = by_key[ev["id"]]
        partition, offset = coordinates[ev["id"].encode()]
        assert msg.value() == stack_bytes(ev)
        assert msg.headers() == [
            ("traceparent", traceparent[ev["id"]].encode()),
            ("x-batch", b"onboarding-2026-12"),
            ("chatprov-status", b"failed"),
            ("chatprov-error-code", b"Forbidden"),
            ("chatprov-error-message", CONSENT_MESSAGE),
            ("chatprov-http-status", b"403"),
            ("chatprov-source-topic", INPUT.encode()),
            ("chatprov-source-partition", str(partition).encode()),
            ("chatprov-source-offset", str(offset).encode()),
        ], msg.headers()

    # chatprovctl redrive --code Forbidden: --dry-run counts, the run moves every record,
    # the second run moves them again (harmless: answered from the state topic).
    for out in (moved, moved_again):
        assert "moved %d records" % len(events) in out, out
        assert len(re.findall(r"^moved \S+ \[\d+\] @\d+ key ", out, re.M)) == len(events)
    assert "would move %d records" % len(events) in dry, dry
    assert not re.findall(r"^moved ", dry, re.M), dry

    # The re-drive: every id succeeded, each group chat once, with the input's headers.
    posts = posts_by_crid(after)
    chats = group_chats_by_crid(after)
    for ev in events:
        copies = stack.results[ev["id"]]
        r = copies[1]
        assert r["status"] == "succeeded", r
        crid = client_request_id(ev["id"])
        assert [p["status"] for p in posts[crid]] in ([403, 201], [403, 202]), posts[crid]
        if ev["chatType"] == "group":
            assert chats[crid] == [chat_id(r)], (chats.get(crid), r)
    assert_no_duplicate_group_chats(final)
    redriven = [m for m in stack.result_messages
                if m["result"]["id"] in failed and m["result"]["status"] == "succeeded"]
    assert all(("x-batch", b"onboarding-2026-12") in m["headers"] for m in redriven
               if m["result"]["id"] != events[1]["id"])

    # Sent again: the recorded success, no Graph call; nothing new in the DLQ.
    assert len(final["chat_posts"]) == len(after["chat_posts"]), "Graph was asked again"
    for ev in events:
        copies = stack.results[ev["id"]]
        assert {c["status"] for c in copies[1:]} == {"succeeded"}, copies
        assert len({chat_id(c) for c in copies[1:]}) == 1, copies
    assert len(stack.results[events[1]["id"]]) == 4
    assert len(dlq_after) == len(dlq)
    assert final_scrape.value("chatprov_forbidden_total", tenant="default") == len(events)


def stack_bytes(event):
    """The bytes Stack.produce sent for an event dict."""
    return json.dumps(event).encode()


def test_redrive_looks_up_an_unknown_outcome(tmp_path):
    """A group chat whose POST Graph carried out but answered 504 (retries spent) fails with
    an unknown outcome. Re-driven, it is looked up before anything is created: the chat is
    found and reported, never created twice. A group chat Graph refused (403) is re-driven
    straight to a POST."""
    made = group_event(1)
    refused = group_event(2)
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        daemon = stack.start_daemon(retry={"max_attempts": "1"})
        warm_up(stack)
        stack.graph.config(fault_created_504_rate=1.0)
        stack.produce([made])
        first = stack.wait_results([made["id"]], timeout=60)[made["id"]]
        stack.graph.config(fault_created_504_rate=0, consent_missing=["contoso.onmicrosoft.com"])
        stack.produce([refused])
        stack.wait_results([refused["id"]], timeout=60)
        stack.graph.config(consent_missing=[])
        dlq = read_dlq(stack, [made["id"], refused["id"]])
        lookups_before = sum(stack.graph.ledger()["requests"]
                             .get("GET /{version}/users/{id}/chats", {}).values())
        redrive(stack, dlq)
        deadline = time.time() + 60
        while time.time() < deadline and not all(
                len(stack.results.get(e["id"], [])) >= 2 for e in (made, refused)):
            stack.read_results(timeout=0.5)
        ledger = stack.graph.ledger()
        assert daemon.stop() == 0, daemon.log_text()[-3000:]

    assert first["status"] == "failed" and first["error"]["httpStatus"] == 504, first
    assert len(dlq) == 2
    again = stack.results[made["id"]][1]
    assert again["status"] == "succeeded", again
    chats = group_chats_by_crid(ledger)
    assert chats[client_request_id(made["id"])] == [chat_id(again)]
    posts = posts_by_crid(ledger)
    assert [p["status"] for p in posts[client_request_id(made["id"])]] == [504]
    lookups = sum(ledger["requests"].get("GET /{version}/users/{id}/chats", {}).values())
    assert lookups == lookups_before + 1, (lookups_before, lookups)
    assert stack.results[refused["id"]][1]["status"] == "succeeded"
    assert [p["status"] for p in posts[client_request_id(refused["id"])]] == [403, 201]
    assert_no_duplicate_group_chats(ledger)
    assert re.search(r"request failed before: attempting it again", daemon.log_text())
