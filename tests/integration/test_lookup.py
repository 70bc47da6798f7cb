"""The group-chat lookup after an unknown outcome (issue 13, item 6): graph-sim creates the
chat and answers 504, chatprovd must find that chat instead of creating a second one when the
owner's chats span several pages, when members are named by a UPN that is not their mail, and
when the replay of a done request fails long after its POST left. docs/state.md, "Unknown
outcomes"."""

import signal
import uuid

from chaos import (FAST_GROUP, READY_LOG, assert_no_duplicate_group_chats, chat_id,
                   client_request_id, drain_results, group_chats_by_crid, posts_by_crid,
                   wait_for_log)
from graphsim import chat_body
from stack import STATE, Stack, group_event

# Every group-chat POST creates its chat and answers 504: each request goes through the lookup.
CREATED_504 = {"fault_created_504_rate": 1}


def run(stack, events, timeout=60, **overrides):
    stack.start_daemon(**dict(FAST_GROUP, **overrides))
    stack.produce(events, partition=0)
    results = stack.wait_results([e["id"] for e in events], timeout=timeout)
    assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
    return results


def assert_found_once(stack, events, results):
    """Each request succeeded with the one chat its one POST created."""
    drain_results(stack)
    ledger = stack.graph.ledger()
    assert_no_duplicate_group_chats(ledger)
    chats, posts = group_chats_by_crid(ledger), posts_by_crid(ledger)
    for event in events:
        crid = client_request_id(event["id"])
        result = results[event["id"]]
        assert result["status"] == "succeeded", (result, stack.daemon.log_text()[-3000:])
        assert chats.get(crid) == [chat_id(result)], (event["id"], chats.get(crid), result)
        assert [p.get("fault") for p in posts[crid]] == ["created_504"], posts[crid]
    return ledger


def test_lookup_reads_every_page(tmp_path):
    """The owner already has 7 chats of the same topic (other members), 2 per page: the chat
    created by the 504 is on the 4th page. Found there; never created twice."""
    events = [group_event(i, topic="Standup") for i in range(3)]
    with Stack(tmp_path, sim_config={"chats_page_size": 2}) as stack:
        token = stack.graph.token()
        for event in events:
            owner = event["members"][0]["userId"]
            for k in range(7):
                other = "00000000-0000-4000-8000-%012d" % (k + 1)
                r = stack.graph.post_chat(chat_body("group", [owner, other], topic="Standup"),
                                          token, headers={"client-request-id": str(uuid.uuid4())})
                assert r.status == 201, r
        stack.graph.config(**CREATED_504)
        results = run(stack, events)
        ledger = assert_found_once(stack, events, results)
    pages = ledger["requests"]["GET /{version}/users/{id}/chats"]
    assert pages.get("200", 0) >= 4 * len(events), pages
