"""Hostile input end to end: malformed events interleaved with valid ones.

Every invalid message must come back "rejected" with a reason that names the offending field,
land in the DLQ byte for byte with its reason headers, and never reach Graph; every valid one
must succeed; the daemon must keep running throughout. Messages are keyed "h-NN" and matched
by key, because a broken message may have no readable id.
"""

import json
import time
import uuid

from confluent_kafka import Producer

from stack import DLQ, INPUT, Stack

CLIENT_REQUEST_ID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chatprov:client-request-id")
FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3}
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # room for a 1 MiB string inside a message
APP = "05F59CEC-A742-4A50-A62E-202A57E478A4"


def crid(event_id):
    return str(uuid.uuid5(CLIENT_REQUEST_ID_NS, event_id))


def guid(n):
    return str(uuid.UUID(int=n + (7 << 120)))


def members(n, base=0):
    return [{"userId": guid(base + k)} for k in range(n)]


def group(i, **extra):
    ev = {"id": "hostile-ok-%02d" % i, "chatType": "group", "topic": "Hostile %d" % i,
          "members": members(3, base=i * 1000)}
    ev.update(extra)
    return ev


def one_on_one(i, **extra):
    ev = {"id": "hostile-ok-%02d" % i, "chatType": "oneOnOne",
          "members": members(2, base=i * 1000)}
    ev.update(extra)
    return ev


def bad(i, **fields):
    """A group event with id hostile-bad-NN and fields replaced (None removes a field)."""
    ev = {"id": "hostile-bad-%02d" % i, "chatType": "group", "topic": "Bad %d" % i,
          "members": members(3, base=50000 + i * 1000)}
    for k, v in fields.items():
        if v is None:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


def enc(ev):
    return json.dumps(ev, ensure_ascii=False).encode()


def with_user(i, user_id):
    return enc(bad(i, members=[{"userId": user_id}, {"userId": guid(90000 + i)}]))


def valid_events():
    """The valid ones, each meant to exercise an edge that must still pass."""
    return [
        group(1),
        one_on_one(2),
        group(3, topic="Welcome \U0001F389 \u00e9quipe \u6b22\u8fce"),  # emoji topic
        group(4, members=[{"userId": "o'brien@contoso.com"},
                          {"userId": guid(4001)}]),  # apostrophe: legal in a UPN
        group(5, members=[{"userId": "jane_fabrikam.com#EXT#@contoso.onmicrosoft.com",
                           "roles": ["guest"]}, {"userId": guid(5001), "roles": ["owner"]}]),
        group(6, installedApps=[APP]),  # 202 and an operation
        group(7, members=members(250, base=7000)),  # exactly max_members
        group(8, somethingNew={"nested": [1, 2, 3]}, tenant=None),  # unknown and null fields
        group(9, members=[{"userId": guid(9000), "tenantId": guid(9999)},
                          {"userId": guid(9001)}]),  # a federated member
        dict(group(10), id="x" * 200),  # the longest id
        group(11, topic="t" * 250),  # the longest topic
        one_on_one(12, installedApps=[]),  # empty app list = none
    ]


def invalid_messages():
    """(value bytes, substring the reason must contain) for each malformed message."""
    nested = b'{"id":"hostile-bad-07","chatType":"group","x":' + b"[" * 100000 + \
        b"]" * 100000 + b"}"
    over = b'{"id":"hostile-bad-06","pad":"' + b"p" * MAX_MESSAGE_BYTES + b'"}'
    return [
        (b'{"id":"hostile-bad-01","chatType":"group","members":[', "invalid JSON"),
        (b"hello, world", "invalid JSON"),
        (b"", "message: empty"),
        (enc(bad(4, topic="T" * (1 << 20))), "topic: 1048576 characters exceeds"),
        (enc(bad(5, id="I" * (1 << 20))), "id: 1048576 characters exceeds 200"),
        (over, "exceeds max_message_bytes %d" % MAX_MESSAGE_BYTES),
        (nested, "invalid JSON"),
        (b'{"id":"hostile-bad-08",\x00"chatType":"group"}', "message: NUL byte at offset 23"),
        (enc(bad(9, id="hostile-bad-09\u0000x")), "id: contains a NUL"),
        (enc(bad(10, id=10)), "id: must be a string"),
        (enc(bad(11, chatType=1)), "chatType: must be a string"),
        (enc(bad(12, members={"userId": guid(1)})), "members: must be an array"),
        (enc(bad(13, members=["alex@contoso.com", "b@contoso.com"])),
         "members[0]: must be an object"),
        (enc(bad(14, members=[{"userId": guid(1), "roles": "owner"}, {"userId": guid(2)}])),
         "members[0].roles: must be an array"),
        (enc(bad(15, topic=15)), "topic: must be a string"),
        (enc(bad(16, installedApps=APP)), "installedApps: must be an array"),
        (enc(bad(17, id=None)), "id: missing"),
        (enc(bad(18, chatType=None)), "chatType: missing"),
        (enc(bad(19, members=None)), "members: missing"),
        (enc(bad(20, members=[{"roles": ["owner"]}, {"userId": guid(2)}])),
         "members[0].userId: missing"),
        (enc(bad(21, chatType="oneOnOne", topic=None)),
         "members: a oneOnOne chat needs exactly 2 members, got 3"),
        (enc(bad(22, chatType="oneOnOne", members=members(2, base=22000))),
         "topic: only allowed on group chats"),
        (enc(bad(23, installedApps=[APP, str(uuid.uuid4())])),
         "installedApps: at most one app, got 2"),
        (with_user(24, "8ba98gf6-7fc2-4eb2-c7f2-aef9f21fd98g"),
         "members[0].userId: not a GUID or user principal name"),
        (enc(bad(25, members=[{"userId": guid(1), "tenantId": "not-a-guid"},
                              {"userId": guid(2)}])), "members[0].tenantId: not a GUID"),
        (enc(bad(26, installedApps=["{%s}" % APP])), "installedApps[0]: not a GUID"),
        (with_user(27, 'al"ex@contoso.com'), "members[0].userId: not a GUID"),
        (with_user(28, "x')/../../me('@contoso.com"), "members[0].userId: not a GUID"),
        (with_user(29, "jane(admin)@contoso.com"), "members[0].userId: not a GUID"),
        (with_user(30, "jane/admin@contoso.com"), "members[0].userId: not a GUID"),
        (with_user(31, "jane%27@contoso.com"), "members[0].userId: not a GUID"),
        (with_user(32, "jane\r\nX-Evil: 1@contoso.com"), "members[0].userId: not a GUID"),
        (with_user(33, "../../users/admin@contoso.com"), "members[0].userId: not a GUID"),
        (enc(bad(34, members=members(300, base=34000))),
         "members: 300 members exceeds max_members 250"),
        (b"[]", "message: not a JSON object"),
        (b'"hostile-bad-36"', "message: not a JSON object"),
        (enc(bad(37, chatType="GROUP")), 'chatType: must be "oneOnOne" or "group"'),
        (enc(bad(38, members=[{"userId": guid(1)}, {"userId": guid(1).upper()}])),
         "members[1].userId: duplicate of members[0]"),
        (enc(bad(39, members=[{"userId": guid(1), "roles": ["owner", "guest"]},
                              {"userId": guid(2)}])), "members[0].roles: must be"),
        (enc(bad(40, members=members(1, base=40000))),
         "members: a group chat needs at least 2 members, got 1"),
        (enc(bad(41, tenant="../etc")), "tenant: must be 1..63 characters"),
        (enc(bad(42, tenant="nosuchtenant")), "tenant: no profile named 'nosuchtenant'"),
        (enc(bad(43, topic="x")).replace(b'"topic": "x"', b'"topic": "\xff\xfe"'),
         "invalid JSON"),
        (enc(bad(44)) + b" trailing", "invalid JSON"),
        (enc(bad(45, id="i" * 201)), "id: 201 characters exceeds 200"),
        (with_user(46, "jane\\admin@contoso.com"), "members[0].userId: not a GUID"),
        (with_user(47, "jane doe@contoso.com"), "members[0].userId: not a GUID"),
        (with_user(48, "j\u00e4ne@contoso.com"), "members[0].userId: not a GUID"),
        (enc(bad(49, topic="x")).replace(b'"topic": "x"', b'"topic": "\xc0\xaf"'),
         "topic: contains a control character or invalid UTF-8"),  # overlong '/'

        (enc(bad(50, members=[])), "members: empty"),
        (enc(bad(51, id="")), "id: empty"),
        (enc(bad(52, id="line\nbreak")), "id: contains a control character"),
    ]


def interleave(valid, invalid):
    """[(key, value, expected reason or None)], invalid ones spread between valid ones."""
    out, vi = [], 0
    for n, (value, reason) in enumerate(invalid):
        out.append(("h-bad-%02d" % n, value, reason))
        if n % 4 == 3 and vi < len(valid):
            out.append(("h-ok-%02d" % vi, enc(valid[vi]), None))
            vi += 1
    out += [("h-ok-%02d" % k, enc(valid[k]), None) for k in range(vi, len(valid))]
    return out


def wait_keys(stack, keys, timeout):
    """{key: first result} once every key has a result on the output topic."""
    keys = set(keys)
    deadline = time.time() + timeout
    while time.time() < deadline:
        by_key = {}
        for m in stack.result_messages:
            by_key.setdefault(m["key"].decode(), m)
        if keys <= set(by_key):
            return by_key
        assert stack.daemon.alive(), stack.daemon.log_text()[-3000:]
        stack.read_results(timeout=0.5)
    missing = sorted(keys - set(by_key))
    raise AssertionError("no result for %s\n%s" % (missing[:5], stack.daemon.log_text()[-3000:]))


def big_producer(stack):
    return Producer({"bootstrap.servers": stack.kafka.bootstrap, "enable.idempotence": True,
                     "message.max.bytes": 8 * 1024 * 1024})


def test_hostile_events_end_to_end(tmp_path):
    valid = valid_events()
    invalid = invalid_messages()
    assert len(invalid) >= 40
    messages = interleave(valid, invalid)
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        stack.start_daemon(kafka={"max_message_bytes": str(MAX_MESSAGE_BYTES)})
        producer = big_producer(stack)
        written = {}  # key: (partition, offset) where the broker stored it

        def note(err, msg):
            assert err is None, err
            written[msg.key().decode()] = (msg.partition(), msg.offset())

        for key, value, _ in messages:
            producer.produce(INPUT, value=value, key=key.encode(),
                             headers=[("traceparent", key.encode())], on_delivery=note)
            producer.poll(0)
        assert producer.flush(30) == 0
        assert set(written) == {m[0] for m in messages}
        by_key = wait_keys(stack, [m[0] for m in messages], timeout=90)
        assert stack.daemon.alive(), "chatprovd stopped on hostile input"
        time.sleep(0.5)
        stack.read_results(timeout=1)
        ledger = stack.graph.ledger()
        dlq = stack.read_topic(DLQ)
        log = stack.daemon.log_text()
        assert stack.daemon.stop() == 0, log[-3000:]

    expected = {key: (value, reason) for key, value, reason in messages}
    for key, (value, reason) in expected.items():
        result = by_key[key]["result"]
        copies = [m for m in stack.result_messages if m["key"].decode() == key]
        assert len(copies) == 1, key
        assert ("traceparent", key.encode()) in [tuple(h) for h in by_key[key]["headers"]]
        if reason is None:
            assert result["status"] == "succeeded", (key, result)
            assert result["chat"]["id"], result
        else:
            assert result["status"] == "rejected", (key, result)
            assert result["graph"] is None and result["chat"] is None
            assert result["error"]["code"] == "InvalidRequest"
            assert reason in result["error"]["message"], (key, result["error"]["message"])

    # The DLQ holds exactly the rejected messages, byte for byte, with why and where from.
    rejected = {k for k, (_, reason) in expected.items() if reason is not None}
    dlq_by_key = {m.key().decode(): m for m in dlq}
    assert len(dlq) == len(rejected) and set(dlq_by_key) == rejected
    for key in rejected:
        msg = dlq_by_key[key]
        headers = dict(msg.headers())
        original = expected[key][0]
        if len(original) > MAX_MESSAGE_BYTES:
            # Too large to copy: key and headers kept, the size said, the value empty.
            assert not msg.value(), key
            assert headers["chatprov-dlq-truncated"] == str(len(original)).encode()
        else:
            assert msg.value() == original, key
            assert "chatprov-dlq-truncated" not in headers
        assert headers["chatprov-reject-reason"].decode() == \
            by_key[key]["result"]["error"]["message"]
        assert headers["chatprov-source-topic"] == INPUT.encode()
        partition, offset = written[key]
        assert headers["chatprov-source-partition"] == str(partition).encode(), key
        assert headers["chatprov-source-offset"] == str(offset).encode(), key
        assert headers["traceparent"] == key.encode()

    # Graph saw only well-formed requests, and only for the valid events.
    posts = ledger["requests"]["POST /{version}/chats"]
    assert set(posts) <= {"201", "202"}, posts
    sent = {p["clientRequestId"] for p in ledger["chat_posts"]}
    assert sent == {crid(ev["id"]) for ev in valid}
    by_crid = {c["clientRequestId"]: c for c in ledger["chats"]}
    for ev in valid:
        chat = by_crid[crid(ev["id"])]
        assert len(chat["members"]) == len(ev["members"]), ev["id"]
        got = {m["userId"].lower() for m in chat["members"]}
        for m in ev["members"]:
            if "@" not in m["userId"]:  # graph-sim maps UPNs to GUIDs of its own
                assert m["userId"].lower() in got, (ev["id"], m)
        assert chat.get("topic") == ev.get("topic"), ev["id"]
    # The apostrophe survived the OData literal and percent escaping exactly.
    bind = by_crid[crid(valid[3]["id"])]["body"]["members"][0]["user@odata.bind"]
    assert bind.endswith("/beta/users('o''brien@contoso.com')"), bind
    assert "chatprovd" in log and "exiting with status 1" not in log


def test_message_far_over_the_limit(tmp_path):
    with Stack(tmp_path, partitions=1) as stack:
        stack.start_daemon(kafka={"max_message_bytes": "65536"})
        producer = big_producer(stack)
        producer.produce(INPUT, key=b"huge", value=b'{"id":"huge","x":"' + b"a" * (1 << 20) + b'"}')
        producer.produce(INPUT, key=b"after", value=enc(group(1)))
        assert producer.flush(30) == 0
        by_key = wait_keys(stack, ["huge", "after"], timeout=30)
        assert by_key["huge"]["result"]["status"] == "rejected"
        assert by_key["after"]["result"]["status"] == "succeeded"
        assert stack.daemon.stop() == 0
