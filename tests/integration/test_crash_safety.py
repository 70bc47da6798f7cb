"""Crash safety (issue 5): SIGKILL chaos, unknown outcomes of group-chat POSTs, and a request
replayed across a restart. chatprovd runs as separate processes against kafka-mock and
graph-sim; docs/crash-safety.md says what each test proves."""

import random
import signal
import time

from chaos import (CHAOS_SIM, FAST_GROUP, READY_LOG, assert_copies_agree,
                   assert_no_duplicate_group_chats, chat_id, check_outcomes, client_request_id,
                   drain_results, group_chats_by_crid, kill_loop, mixed_events,
                   posts_by_crid, split, state_records, wait_copies, wait_for_log,
                   with_overrides)
from stack import OUTPUT, Stack, group_event, one_on_one_event


def test_sigkill_chaos(tmp_path):
    """3,000 mixed events, 500 more as each chatprovd incarnation starts; each is SIGKILLed
    (at least 4 s after its start, once it is at work on fresh requests) and restarted at
    once, 5 times: nothing lost, no group chat twice, every operation seen to its end, every
    copy of a result the same outcome."""
    events, expected = mixed_events(3000)
    with Stack(tmp_path, sim_config=CHAOS_SIM) as stack:
        # 4 requests in flight at 20 ms each: a 500-event chunk takes seconds, so the kills
        # land in the middle of one.
        config = stack.write_config(**with_overrides(FAST_GROUP,
                                                     {"graph": {"max_in_flight": "4"}}))
        kills = kill_loop(stack, config, random.Random(5), split(events, 6))
        stack.wait_results(expected, timeout=150)
        assert wait_for_log(stack.daemon, READY_LOG, 30)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        drain_results(stack)
        ledger = stack.graph.ledger()

    print("incarnations (s since start):", [k.summary() for k in kills])
    # Each kill landed with fresh work unanswered.
    for i, k in enumerate(kills):
        assert k.results_at_kill < 500 * (i + 1), (i, k.summary())
    assert ledger["operations"], "no 202 operation was exercised"
    check_outcomes(stack, ledger, expected)


def created_504_run(stack, events, lookup):
    """One daemon run over `events` with [recovery] group_chat_lookup = lookup."""
    stack.start_daemon(**with_overrides(FAST_GROUP,
                                        {"recovery": {"group_chat_lookup": lookup}}))
    stack.produce(events)
    results = stack.wait_results([e["id"] for e in events], timeout=90)
    assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
    return results


def test_group_chat_created_but_504(tmp_path):
    """graph-sim creates 30 % of group chats and answers 504 (and answers 10 % with a plain
    504, nothing created). With lookup the created chat is found and reported; without it the
    outcome is failed/OutcomeUnknown. Never a second chat."""
    sim = dict(CHAOS_SIM, fault_created_504_rate=0.3, fault_504_rate=0.1)
    with_lookup = [group_event(i) for i in range(200)]
    without = [group_event(i) for i in range(1000, 1200)]
    with Stack(tmp_path, sim_config=sim) as stack:
        found = created_504_run(stack, with_lookup, "yes")
        stack.graph.config(fault_504_rate=0)
        unknown = created_504_run(stack, without, "no")
        drain_results(stack)
        ledger = stack.graph.ledger()

    assert_no_duplicate_group_chats(ledger)
    assert_copies_agree(stack)
    posts = posts_by_crid(ledger)
    chats = group_chats_by_crid(ledger)

    def hit(event):
        return any(p.get("fault") == "created_504" for p in posts[client_request_id(event["id"])])

    looked_up = [e for e in with_lookup if hit(e)]
    assert len(looked_up) >= 20, "too few created_504 faults to test anything"
    lookups = sum(ledger["requests"].get("GET /{version}/users/{id}/chats", {}).values())
    assert lookups >= len(looked_up), (lookups, len(looked_up))
    for event in with_lookup:
        result = found[event["id"]]
        crid = client_request_id(event["id"])
        assert result["status"] == "succeeded", result
        assert chats.get(crid) == [chat_id(result)], (event["id"], chats.get(crid), result)
        if hit(event):
            # Found by lookup: the POST that created the chat was the last one.
            assert posts[crid][-1].get("fault") == "created_504", (event["id"], posts[crid])

    unknown_hits = [e for e in without if hit(e)]
    assert len(unknown_hits) >= 20, "too few created_504 faults to test anything"
    for event in without:
        result = unknown[event["id"]]
        crid = client_request_id(event["id"])
        assert len(chats.get(crid, [])) == 1, (event["id"], chats.get(crid))
        if hit(event):
            assert result["status"] == "failed", result
            assert result["error"]["code"] == "OutcomeUnknown", result
            assert len(posts[crid]) == 1, (event["id"], posts[crid])
        else:
            assert result["status"] == "succeeded", result
            assert chats[crid] == [chat_id(result)]


def test_same_id_twice_across_restart(tmp_path):
    """Three requests (group, group with an app: 202, one-on-one) are answered, chatprovd is
    stopped, and seconds later a new instance gets the same three again: the same outcome,
    no second Graph call, served from the state topic (same partition as the input)."""
    events = [group_event(1), group_event(2, app=True), one_on_one_event(3)]
    ids = [e["id"] for e in events]
    with Stack(tmp_path, sim_config=CHAOS_SIM) as stack:
        stack.start_daemon(**FAST_GROUP)
        stack.produce(events, partition=1)
        stack.wait_results(ids, timeout=60)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        time.sleep(3)
        stack.start_daemon(**FAST_GROUP)
        stack.produce(events, partition=1)
        wait_copies(stack, ids, 2, timeout=60)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        drain_results(stack)
        ledger = stack.graph.ledger()
        state = state_records(stack)
        output = stack.read_topic(OUTPUT)

    posts = posts_by_crid(ledger)
    for event in events:
        copies = stack.results[event["id"]]
        assert len(copies) == 2, copies
        assert copies[0]["status"] == copies[1]["status"] == "succeeded", copies
        assert chat_id(copies[0]) == chat_id(copies[1]), copies
        assert len(posts[client_request_id(event["id"])]) == 1, posts
    # The operation was polled by the first instance only.
    assert len(ledger["operations"]) == 1

    # The state topic: per id, on the input's partition, "done" holding the published result.
    first_bytes = {}
    for msg in output:
        first_bytes.setdefault(msg.key().decode(), msg.value())
    for event in events:
        mine = [(kind, part, value) for key, kind, part, value in state if key == event["id"]]
        kinds = [k for k, _, _ in mine]
        assert mine, "no state record for %s (state topic: %d records)" % (event["id"],
                                                                            len(state))
        assert {p for _, p, _ in mine} == {1}, mine
        assert "done" in kinds, kinds
        done = [v for k, _, v in mine if k == "done"]
        assert done[0] == first_bytes[event["id"]], (done[0], first_bytes[event["id"]])
        if event["chatType"] == "group":
            assert kinds.index("intent") < kinds.index("done"), kinds
    op_kinds = [kind for key, kind, _, _ in state if key == events[1]["id"]]
    assert "operation" in op_kinds and op_kinds.index("operation") < op_kinds.index("done")
