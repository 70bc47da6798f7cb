"""The group-chat lookup after an unknown outcome (issue 13, item 6): graph-sim creates the
chat and answers 504, chatprovd must find that chat instead of creating a second one when the
owner's chats span several pages, when members are named by a UPN that is not their mail, and
when the replay of a done request fails long after its POST left. docs/state.md, "Unknown
outcomes"."""

import signal
import uuid

from chaos import (FAST_GROUP, READY_LOG, assert_no_duplicate_group_chats, chat_id,
                   client_request_id, drain_results, group_chats_by_crid, posts_by_crid,
                   wait_copies, wait_for_log)
from graphsim import chat_body
from stack import Stack, group_event
from test_hostile_servers import OtherHost

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


def test_lookup_of_a_group_chat_of_more_than_25_members(tmp_path):
    """Graph lists at most 25 members of a chat in a lookup (its documented known issue), so a
    30-member chat never matched and was created again. Now a chat that lists 25 of the
    request's members is read in full (GET /chats/{id}/members): a decoy with the same topic and
    the same first 25 members but 5 others is rejected, the chat of the 504 is found."""
    events = [group_event(i, members=30, topic="All hands") for i in (0, 10, 20)]
    with Stack(tmp_path) as stack:
        token = stack.graph.token()
        for event in events:
            users = [m["userId"] for m in event["members"][:25]]
            users += ["00000000-0000-4000-8000-%012d" % k for k in range(5)]
            r = stack.graph.post_chat(chat_body("group", users, topic="All hands"), token,
                                      headers={"client-request-id": str(uuid.uuid4())})
            assert r.status == 201, r
        stack.graph.config(**CREATED_504)
        results = run(stack, events)
        ledger = assert_found_once(stack, events, results)
    members = ledger["requests"]["GET /{version}/chats/{id}/members"]
    assert members.get("200", 0) >= 2 * len(events), members


# Directory users whose UPN is not their mail: Graph lists chat members by object id and mail.
USERS = [{"upn": "jane.doe@contoso.onmicrosoft.com", "mail": "jane@contoso.com",
          "id": "5f0c3d1e-6a7b-4c8d-9e0f-1a2b3c4d5e6f"},
         {"upn": "bob.roe@contoso.onmicrosoft.com", "mail": "bob.roe@fabrikam.com",
          "id": "6e1d4e2f-7b8c-4d9e-8f10-2b3c4d5e6f70"}]


def test_lookup_resolves_members_named_by_upn(tmp_path):
    """Members named by UPN (the owner too) whose mail differs: the lookup resolves them to
    object ids (GET /users/{upn}) and finds the chat. Never created twice. A later lookup of
    the same members asks Graph for no id again (cached)."""
    events = []
    for i in range(5):
        event = group_event(i)
        event["members"][:2] = [{"userId": "Jane.Doe@contoso.onmicrosoft.com"},
                                {"userId": "bob.roe@contoso.onmicrosoft.com"}]
        events.append(event)
    first, later = events[:3], events[3:]
    with Stack(tmp_path, sim_config=dict(CREATED_504, users=USERS)) as stack:
        stack.start_daemon(**FAST_GROUP)
        stack.produce(first, partition=0)
        stack.wait_results([e["id"] for e in first], timeout=60)
        resolved = stack.graph.ledger()["requests"].get("GET /{version}/users/{id}", {})
        stack.produce(later, partition=0)
        stack.wait_results([e["id"] for e in later], timeout=60)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        results = {e["id"]: stack.results[e["id"]][0] for e in events}
        ledger = assert_found_once(stack, events, results)
    assert set(resolved) == {"200"} and 2 <= resolved["200"] <= 2 * len(first), resolved
    assert ledger["requests"]["GET /{version}/users/{id}"] == resolved


def test_lookup_window_starts_at_the_intent(tmp_path):
    """Graph's clock runs 50 s behind ours (the lookup allows 60 s of skew) and every answer
    takes 8 s: the first POST creates the chat and answers 504, the lookup finds it and the
    result is recorded about 16 s after the intent. A new instance then gets the request
    again and cannot fetch the recorded result (kafka-mock fails every ListOffsets): it
    looks the chat up from the intent's time, not the result's, finds it, creates nothing."""
    event = group_event(1)
    sim = dict(CREATED_504, clock_skew_s=-50, latency_ms=8000)
    with Stack(tmp_path, sim_config=sim) as stack:
        first = run(stack, [event], timeout=90)[event["id"]]
        assert first["status"] == "succeeded", first
        stack.graph.config(fault_created_504_rate=0, latency_ms=0)
        stack.start_daemon(**FAST_GROUP)
        assert wait_for_log(stack.daemon, READY_LOG, 30)
        assert wait_for_log(stack.daemon, "restored state of partition 0", 30)
        errors = ",".join(["TOPIC_AUTHORIZATION_FAILED"] * 40)
        assert stack.kafka.command("push-errors 2 " + errors).startswith("OK")
        stack.produce([event], partition=0)
        wait_copies(stack, [event["id"]], 2, timeout=60)
        assert stack.kafka.command("clear-errors 2").startswith("OK")
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        log = stack.daemon.log_text()
        drain_results(stack)
        ledger = stack.graph.ledger()
    assert "cannot fetch the recorded result" in log, log[-3000:]
    assert "lookup: found the chat created earlier" in log, log[-3000:]
    assert_no_duplicate_group_chats(ledger)
    copies = stack.results[event["id"]]
    assert [c["status"] for c in copies] == ["succeeded", "succeeded"], copies
    assert chat_id(copies[1]) == chat_id(first), copies
    crid = client_request_id(event["id"])
    assert group_chats_by_crid(ledger)[crid] == [chat_id(first)]
    assert [p.get("fault") for p in posts_by_crid(ledger)[crid]] == ["created_504"]


def test_foreign_next_link_is_not_followed(tmp_path):
    """A chat list whose @odata.nextLink names another host (a listener of our own): the
    lookup neither follows it (the bearer token would go there) nor creates the chat again:
    the request ends failed/OutcomeUnknown after its one POST."""
    events = [group_event(i, topic="Standup") for i in range(2)]
    other = OtherHost()
    try:
        sim = {"chats_page_size": 1, "hostile_mode": "foreign_next_link",
               "foreign_location_root": "http://127.0.0.1:%d/beta" % other.port}
        with Stack(tmp_path, sim_config=sim) as stack:
            token = stack.graph.token()
            for event in events:
                r = stack.graph.post_chat(
                    chat_body("group", [event["members"][0]["userId"], event["members"][1]
                                        ["userId"]], topic="Standup"),
                    token, headers={"client-request-id": str(uuid.uuid4())})
                assert r.status == 201, r
            stack.graph.config(**CREATED_504)
            results = run(stack, events)
            log = stack.daemon.log_text()
            drain_results(stack)
            ledger = stack.graph.ledger()
    finally:
        other.close()
    assert other.requests == [], "the lookup followed a next link to another host"
    assert "the lookup's next page is not on the Graph host" in log, log[-3000:]
    assert_no_duplicate_group_chats(ledger)
    posts = posts_by_crid(ledger)
    for event in events:
        result = results[event["id"]]
        assert result["status"] == "failed", result
        assert result["error"]["code"] == "OutcomeUnknown", result
        crid = client_request_id(event["id"])
        assert [p.get("fault") for p in posts[crid]] == ["created_504"], posts[crid]
