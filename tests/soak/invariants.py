"""invariants - what the soak checks once the stack is drained, from the output topic,
graph-sim's ledger and the group's committed offsets. Each check adds what it finds broken
to a Violations list under its invariant's name, with the ids concerned."""

from chaos import chat_id, client_request_id, group_chats_by_crid

EXAMPLES = 10


def outcome(result):
    return (result.get("status"), chat_id(result), (result.get("error") or {}).get("code"))


def check_every_id_answered(v, results, expected):
    missing = sorted(set(expected) - set(results))
    if missing:
        v.add("one-outcome-per-id", "%d input ids have no result on the output topic"
              % len(missing), missing)
    unknown = sorted(str(i) for i in set(results) - set(expected))
    if unknown:
        v.add("one-outcome-per-id", "%d results name ids never sent" % len(unknown), unknown)


def check_copies_agree(v, results):
    bad = []
    for event_id, copies in sorted(results.items(), key=lambda kv: str(kv[0])):
        seen = {outcome(c) for c in copies}
        if len(seen) > 1:
            bad.append("%s: %s" % (event_id, sorted(seen, key=str)))
    if bad:
        v.add("one-outcome-per-id", "%d ids have result copies that disagree on status, chat "
              "id or error code" % len(bad), bad)


def check_expected_status(v, results, expected):
    wrong = []
    for event_id, status in sorted(expected.items()):
        copies = results.get(event_id)
        if copies and copies[0].get("status") != status:
            got = copies[0]
            wrong.append("%s: %s %s (expected %s)" % (event_id, got.get("status"),
                                                      (got.get("error") or {}).get("code"),
                                                      status))
    if wrong:
        v.add("expected-outcome", "%d ids ended otherwise than valid=succeeded, "
              "invalid=rejected" % len(wrong), wrong)


def posts_evidence(posts):
    """The POST /chats graph-sim saw for one client-request-id: status or fault, and ms
    after the first."""
    first = posts[0]["at"] if posts else 0
    return ", ".join("%s+%dms" % (p.get("fault") or p["status"], p["at"] - first) for p in posts)


def check_no_group_chat_twice(v, ledger, kinds):
    by_crid = group_chats_by_crid(ledger)
    id_of = {client_request_id(i): i for i in kinds}
    posts = {}
    for post in ledger["chat_posts"]:
        posts.setdefault(post["clientRequestId"], []).append(post)
    twice = ["%s (%d bytes): %d chats; POSTs %s" % (id_of.get(crid, "crid " + crid),
                                                   len(id_of.get(crid, "").encode()),
                                                   len(chats), posts_evidence(posts.get(crid, [])))
             for crid, chats in sorted(by_crid.items()) if len(chats) > 1]
    if twice:
        v.add("no-group-chat-twice", "%d ids have more than one group chat in graph-sim's "
              "ledger" % len(twice), twice)
    if ledger["duplicate_group_chats"] and not twice:
        v.add("no-group-chat-twice", "graph-sim counted %d duplicate group chats"
              % ledger["duplicate_group_chats"])
    foreign = sorted(crid for crid in by_crid if crid not in id_of)
    if foreign:
        v.add("no-group-chat-twice", "%d group chats with a client-request-id of no input id"
              % len(foreign), foreign)


def check_results_name_real_chats(v, ledger, results, kinds):
    """A succeeded result names a chat graph-sim has; a group id's result names the one group
    chat of its client-request-id; every operation graph-sim ran ends in a reported chat."""
    ledger_ids = {chat["id"] for chat in ledger["chats"]}
    by_crid = group_chats_by_crid(ledger)
    ghost, other = [], []
    for event_id, copies in sorted(results.items(), key=lambda kv: str(kv[0])):
        for c in copies:
            if c.get("status") != "succeeded":
                continue
            cid = chat_id(c)
            if cid not in ledger_ids:
                ghost.append("%s: %s" % (event_id, cid))
            elif kinds.get(event_id) == "group" and \
                    cid not in by_crid.get(client_request_id(event_id), []):
                other.append("%s: %s" % (event_id, cid))
    if ghost:
        v.add("results-name-real-chats", "%d results name chats graph-sim does not have"
              % len(ghost), ghost)
    if other:
        v.add("results-name-real-chats", "%d group results name a chat made for another "
              "request" % len(other), other)
    reported = {chat_id(c) for copies in results.values() for c in copies
                if c.get("status") == "succeeded"}
    crid_of_chat = {chat["id"]: chat["clientRequestId"] for chat in ledger["chats"]}
    id_of = {client_request_id(i): i for i in kinds}
    orphans = ["%s: operation %s, chat %s" % (id_of.get(crid_of_chat.get(op["chatId"]), "?"),
                                              op["id"], op["chatId"])
               for op in ledger["operations"] if op["chatId"] not in reported]
    if orphans:
        v.add("results-name-real-chats", "%d of %d 202 operations' chats are in no result"
              % (len(orphans), len(ledger["operations"])), orphans)


def check_offsets_committed(v, offsets, ids_between):
    """offsets: {partition: (committed, high)} read after every instance has stopped."""
    for p, (committed, high) in sorted(offsets.items()):
        if committed < high:
            v.add("every-offset-committed", "input partition %d: committed %d, high watermark "
                  "%d" % (p, committed, high), ids_between(p, committed, high))


def check_no_stall(v, stalls, limit, ids_between):
    for p, seconds, (committed, high) in stalls:
        v.add("no-partition-stalled", "input partition %d: committed offset stayed at %d for "
              "%.0f s (> %.0f s) with work up to %d waiting"
              % (p, committed, seconds, limit, high), ids_between(p, committed, min(high,
                                                                                 committed + 3)))


def report(violations, out):
    for name, detail, ids in violations.items:
        out("VIOLATION %s: %s" % (name, detail))
        for i in ids[:EXAMPLES]:
            out("    %s" % (i,))
        if len(ids) > EXAMPLES:
            out("    (+%d more)" % (len(ids) - EXAMPLES))
