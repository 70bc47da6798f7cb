"""chaos - helpers of the crash-safety and scale-out tests (tests/integration/test_crash_safety.py,
test_scale_out.py): events, a background producer, a SIGKILL loop, broker failover on
kafka-mock, the state topic, and the invariants every such test checks.

    kills = kill_loop(stack, config, random.Random(5), split(events, 6))
    check_outcomes(stack, stack.graph.ledger(), expected)

See docs/crash-safety.md for what each test proves.
"""

import json
import random
import threading
import time
import uuid

from confluent_kafka import Producer

from stack import INPUT, OUTPUT, DLQ, STATE, group_event, one_on_one_event

CLIENT_REQUEST_ID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chatprov:client-request-id")
STATE_HEADER = "chatprov-state"
STATE_KINDS = ("intent", "operation", "done", "released")
# graph-sim: a little latency (so kills land with requests in flight) and fast operations.
CHAOS_SIM = {"latency_ms": 20, "operation_in_progress_after_s": 0.1,
             "operation_done_after_s": 0.4}
# The shortest group timing kafka-mock supports (docs/kafka-mock.md, finding 1): a SIGKILLed
# member's partitions move after about session.timeout.ms.
FAST_GROUP = {"librdkafka": {"session.timeout.ms": "3000", "heartbeat.interval.ms": "300"}}


def client_request_id(event_id):
    return str(uuid.uuid5(CLIENT_REQUEST_ID_NS, event_id))


def with_overrides(*dicts):
    """Merges {"section": {"key": value}} override dicts (later ones win per key)."""
    out = {}
    for d in dicts:
        for section, values in d.items():
            out.setdefault(section, {}).update(values)
    return out


# ---- events ----

def mixed_events(n, seed=11, invalid_share=0.02):
    """n events: ~45 % group (every 5th with an app: 202), ~53 % one-on-one (every 7th with an
    app; some pairs repeat), ~2 % invalid. Returns (events, {id: expected status})."""
    rng = random.Random(seed)
    pairs = [(1000 + rng.randrange(50), 2000 + rng.randrange(50)) for _ in range(40)]
    events, expected = [], {}
    for i in range(n):
        roll = rng.random()
        if roll < invalid_share:
            ev = one_on_one_event(i)
            ev["id"] = "bad-%06d" % i
            ev["topic"] = "a topic on a one-on-one chat"
            expected[ev["id"]] = "rejected"
        elif roll < 0.47:
            ev = group_event(i, members=3 + i % 4, app=(i % 5 == 0))
            expected[ev["id"]] = "succeeded"
        else:
            pair = rng.choice(pairs) if i % 4 == 0 else (10000 + 2 * i, 10001 + 2 * i)
            ev = one_on_one_event(i, pair=pair, app=(i % 7 == 0))
            expected[ev["id"]] = "succeeded"
        events.append(ev)
    return events, expected


# ---- producing in the background ----

class Trickle(threading.Thread):
    """Produces events to the input topic at a steady rate over `seconds`, from its own
    producer (the Stack's producer is not shared across threads). The last `hold_back`
    events wait for release(), so that a test can be sure work remains after its faults."""

    def __init__(self, stack, events, seconds, hold_back=0):
        super().__init__(daemon=True)
        self.events = events[:len(events) - hold_back]
        self.held = events[len(events) - hold_back:]
        self.seconds = seconds
        self.released = threading.Event()
        if not self.held:
            self.released.set()
        self.producer = Producer({"bootstrap.servers": stack.kafka.bootstrap,
                                  "enable.idempotence": True})
        self.error = None
        self.produced = 0

    def produce(self, events):
        for ev in events:
            self.producer.produce(INPUT, value=json.dumps(ev).encode(), key=ev["id"].encode())
            self.producer.poll(0)
            self.produced += 1

    def run(self):
        try:
            start = time.monotonic()
            batches = max(1, int(self.seconds * 10))
            per = -(-len(self.events) // batches)
            for b in range(batches):
                self.produce(self.events[b * per:(b + 1) * per])
                delay = start + (b + 1) * self.seconds / batches - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.released.wait()
            self.produce(self.held)
            left = self.producer.flush(60)
            if left:
                self.error = "%d events not delivered to the input topic" % left
        except Exception as e:  # reported by finish()
            self.error = repr(e)

    def release(self):
        self.released.set()

    def finish(self, timeout=90):
        self.release()
        self.join(timeout)
        assert not self.is_alive(), "the producer thread did not finish"
        assert self.error is None, self.error
        assert self.produced == len(self.events) + len(self.held)


# ---- killing ----

# chatprovd logs this once it holds partitions and a token (daemon/main.c).
READY_LOG = "ready: group joined"


class Incarnation:
    """Timeline of one chatprovd process in a kill loop (monotonic seconds)."""

    def __init__(self, results_at_start):
        self.started = time.monotonic()
        self.ready = None        # READY_LOG seen
        self.busy = None         # since ready, results for min_new more ids are in
        self.killed = None
        self.results_at_start = results_at_start
        self.results_at_ready = None
        self.results_at_kill = None

    def summary(self):
        def rel(t):
            return None if t is None else round(t - self.started, 1)
        return {"ready": rel(self.ready), "busy": rel(self.busy), "killed": rel(self.killed),
                "results": self.results_at_kill}


def kill_loop(stack, config_path, rng, chunks, min_alive=4, min_new=30, grace=(0, 0.5),
              timeout=30):
    """Runs len(chunks) incarnations of chatprovd; incarnation i is sent chunks[i] (a list
    of events) as it starts. Each but the last is SIGKILLed once it has lived min_alive s and,
    since it became ready, published results for min_new more ids, plus a random grace, so
    that the kill lands while fresh requests are in flight (not while the group forms or
    replays are answered); then it is restarted at once. A restarted instance that publishes
    no fresh results within `timeout` s of its start fails the test: a restart costs about
    session.timeout.ms plus a rebalance round (~7 s with FAST_GROUP), and answering the
    replays of what the dead instance did not commit must not take much longer.
    Returns one Incarnation per kill."""
    assert all(len(c) > 2 * min_new for c in chunks[:-1])
    out = []
    stack.start_daemon(config_path)
    for chunk in chunks[:-1]:
        inc = Incarnation(len(stack.results))
        stack.produce(chunk)
        extra = rng.uniform(*grace)
        while inc.busy is None or \
                time.monotonic() < max(inc.started + min_alive, inc.busy + extra):
            stack.read_results(timeout=0.1)
            assert stack.daemon.alive(), "chatprovd died on its own:\n" + \
                stack.daemon.log_text()[-3000:]
            # Counted from readiness: the reader may still be catching up with results the
            # killed instance published just before it died.
            if inc.ready is None and READY_LOG in stack.daemon.log_text():
                inc.ready = time.monotonic()
                inc.results_at_ready = len(stack.results)
            if inc.busy is None and inc.ready is not None and \
                    len(stack.results) >= inc.results_at_ready + min_new:
                inc.busy = time.monotonic()
            assert inc.busy is not None or time.monotonic() - inc.started < timeout, \
                "restart %d: chatprovd published %d new results in %d s:\n%s" \
                % (len(out), len(stack.results) - inc.results_at_start, timeout,
                   stack.daemon.log_text()[-3000:])
        code = stack.daemon.sigkill()
        assert code == -9, code
        inc.killed = time.monotonic()
        inc.results_at_kill = len(stack.results)
        out.append(inc)
        stack.start_daemon(config_path)
    stack.produce(chunks[-1])
    return out


def split(items, n):
    """n consecutive slices of nearly equal size."""
    k, r = divmod(len(items), n)
    out, at = [], 0
    for i in range(n):
        size = k + (1 if i < r else 0)
        out.append(items[at:at + size])
        at += size
    return out


def wait_for_log(daemon, needle, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in daemon.log_text():
            return True
        time.sleep(0.2)
    return False


# ---- kafka-mock failover ----

def leaders(stack, broker):
    """[(topic, partition)] whose leader is `broker`, for the stack's four topics."""
    md = stack._producer.list_topics(timeout=10)
    out = []
    for topic in (INPUT, OUTPUT, DLQ, STATE):
        for p, meta in md.topics[topic].partitions.items():
            if meta.leader == broker:
                out.append((topic, p))
    return out


def move_leaders(stack, parts, to):
    for topic, p in parts:
        reply = stack.kafka.command("leader %s %d %d" % (topic, p, to))
        assert reply == "OK %s [%d] leader %d" % (topic, p, to), reply


# ---- the state topic ----

def state_records(stack, timeout=3.0):
    """The state topic as [(key str, kind or None for a tombstone, partition, value bytes)]."""
    out = []
    for msg in stack.read_topic(STATE, timeout=timeout):
        headers = dict(msg.headers() or [])
        kind = headers.get(STATE_HEADER)
        out.append((msg.key().decode() if msg.key() is not None else None,
                    kind.decode() if kind is not None else None, msg.partition(), msg.value()))
    return out


# ---- invariants ----

def group_chats_by_crid(ledger):
    by = {}
    for chat in ledger["chats"]:
        if chat["chatType"] == "group":
            by.setdefault(chat["clientRequestId"], []).append(chat["id"])
    return by


def assert_no_duplicate_group_chats(ledger):
    assert ledger["duplicate_group_chats"] == 0, \
        "graph-sim counted %d duplicate group chats" % ledger["duplicate_group_chats"]
    twice = {crid: ids for crid, ids in group_chats_by_crid(ledger).items() if len(ids) > 1}
    assert not twice, "%d client-request-ids have several group chats, e.g. %s" \
        % (len(twice), sorted(twice.items())[:3])


def assert_nothing_lost(stack, expected):
    missing = sorted(set(expected) - set(stack.results))
    assert not missing, "%d ids without a result, e.g. %s" % (len(missing), missing[:5])
    wrong = {i: stack.results[i][0]["status"] for i in expected
             if i in stack.results and stack.results[i][0]["status"] != expected[i]}
    assert not wrong, "%d ids with an unexpected status, e.g. %s" \
        % (len(wrong), sorted(wrong.items())[:5])


def chat_id(result):
    return (result.get("chat") or {}).get("id")


def assert_copies_agree(stack):
    """Every copy of one id's result: same status, same chat id, same error code."""
    bad = []
    for event_id, copies in stack.results.items():
        seen = {(c["status"], chat_id(c), (c.get("error") or {}).get("code")) for c in copies}
        if len(seen) > 1:
            bad.append((event_id, sorted(seen, key=str)))
    assert not bad, "%d ids with disagreeing copies, e.g. %s" % (len(bad), bad[:3])


def assert_operations_finished(stack, ledger):
    """Every operation Graph accepted (202) ends in a reported chat, and every 202 result
    carries the operation's final status."""
    reported = {chat_id(c) for copies in stack.results.values() for c in copies
                if c["status"] == "succeeded"}
    orphans = [op for op in ledger["operations"] if op["chatId"] not in reported]
    assert not orphans, "%d of %d operations never reported, e.g. %s" \
        % (len(orphans), len(ledger["operations"]), orphans[:2])
    unfinished = [c for copies in stack.results.values() for c in copies
                  if (c.get("graph") or {}).get("httpStatus") == 202
                  and (c.get("operation") or {}).get("status") != "succeeded"]
    assert not unfinished, unfinished[:2]


def assert_results_name_real_chats(stack, ledger, expected):
    ledger_ids = {chat["id"] for chat in ledger["chats"]}
    ghost = [i for i, s in expected.items() if s == "succeeded" and i in stack.results
             and chat_id(stack.results[i][0]) not in ledger_ids]
    assert not ghost, "%d results name chats Graph does not have, e.g. %s" \
        % (len(ghost), ghost[:3])


def check_outcomes(stack, ledger, expected):
    """The guarantees of issue 5 as seen from outside; reports every one that is broken."""
    checks = [lambda: assert_nothing_lost(stack, expected),
              lambda: assert_copies_agree(stack),
              lambda: assert_no_duplicate_group_chats(ledger),
              lambda: assert_operations_finished(stack, ledger),
              lambda: assert_results_name_real_chats(stack, ledger, expected)]
    broken = []
    for check in checks:
        try:
            check()
        except AssertionError as e:
            broken.append(str(e).split("\nassert")[0])
    assert not broken, "\n".join(broken)


def wait_copies(stack, ids, copies, timeout):
    """Waits until each id has at least `copies` results on the output topic."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(stack.results.get(i, [])) >= copies for i in ids):
            return
        stack.read_results(timeout=0.5)
    have = {i: len(stack.results.get(i, [])) for i in ids}
    raise AssertionError("expected %d copies each, have %s\n--- log tail ---\n%s"
                         % (copies, have, stack.daemon.log_text()[-3000:]))


def drain_results(stack, quiet=2.0):
    """Reads the output topic until nothing new arrived for `quiet` seconds."""
    while stack.read_results(timeout=quiet):
        pass


def posts_by_crid(ledger):
    by = {}
    for post in ledger["chat_posts"]:
        by.setdefault(post["clientRequestId"], []).append(post)
    return by
