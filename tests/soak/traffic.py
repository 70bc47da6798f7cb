"""traffic - the soak's input: mixed requests and upstream duplicates, produced at a steady
rate from a thread of its own.

Every event goes to the input partition derived from its id (not its key), so a duplicate
sent under a second key lands where the original did: state lives in the state partition
of the input's number (docs/state.md), and that is the promise the soak attacks.
"""

import json
import threading
import time
import zlib

from confluent_kafka import Producer

from stack import INPUT, group_event, one_on_one_event

# A tenant profile besides the default one (the soak configures it in graph-sim and chatprovd).
SECOND_TENANT = "fabrikam"
STORM_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)
# Ids of 200 code points are valid (lib/event.c) whatever their size in bytes: some of 394
# bytes (two-byte characters) and some of 800, the largest valid id (four-byte characters,
# the index written with four-byte digits too).
TWO_BYTE_CHAR = "\u00e9"
FOUR_BYTE_CHAR = "\U0001F4AC"
FOUR_BYTE_DIGIT_0 = 0x1D7CE  # MATHEMATICAL BOLD DIGIT ZERO


def long_id(i):
    if i % 2:
        return ("%06d" % i) + TWO_BYTE_CHAR * 194
    digits = "".join(chr(FOUR_BYTE_DIGIT_0 + int(d)) for d in "%06d" % i)
    return digits + FOUR_BYTE_CHAR * 194


def is_long(event_id):
    return len(event_id.encode()) > 200


def partition_of(event_id, partitions):
    return zlib.crc32(event_id.encode()) % partitions


class Mix:
    """Draws events: ~45 % group (every 4th with an app: a 202 operation), ~50 % one-on-one
    (some pairs repeat, every 6th with an app), ~2 % invalid, ~2 % group chats whose id is
    200 characters of 394 or 800 bytes; a third of the valid ones for the second tenant
    when asked."""

    def __init__(self, rng, tenants):
        self.rng = rng
        self.tenants = tenants
        self.pairs = [(1000 + rng.randrange(60), 2000 + rng.randrange(60)) for _ in range(50)]
        self.expected = {}   # id -> "succeeded" | "rejected"
        self.kinds = {}      # id -> "group" | "oneOnOne" | "invalid"
        self.by_tenant = {}  # tenant name ("default") -> ids

    def event(self, i):
        rng = self.rng
        roll = rng.random()
        tenant = SECOND_TENANT if self.tenants > 1 and rng.random() < 1 / 3 else None
        if roll < 0.02:
            ev = one_on_one_event(i)
            ev["id"] = "bad-%06d" % i
            ev["topic"] = "a topic on a one-on-one chat"
            kind, status, tenant = "invalid", "rejected", None
        elif roll < 0.04:
            ev = group_event(i, members=3, tenant=tenant)
            ev["id"] = long_id(i)
            kind, status = "group", "succeeded"
        elif roll < 0.49:
            ev = group_event(i, members=2 + i % 5, app=(i % 4 == 0), tenant=tenant)
            kind, status = "group", "succeeded"
        else:
            pair = rng.choice(self.pairs) if i % 3 == 0 else (100000 + 2 * i, 100001 + 2 * i)
            ev = one_on_one_event(i, pair=pair, app=(i % 6 == 0))
            if tenant:
                ev["tenant"] = tenant
            kind, status = "oneOnOne", "succeeded"
        self.expected[ev["id"]] = status
        self.kinds[ev["id"]] = kind
        self.by_tenant.setdefault(tenant or "default", []).append(ev["id"])
        return ev


class Feeder(threading.Thread):
    """Produces `rate` new events per second until stop(), with upstream duplicates (see
    duplicate()); a second key keeps the partition. Copies still due when stop() is called
    are sent then. Its own producer: the Stack's is not shared across threads."""

    def __init__(self, bootstrap, mix, partitions, rate, rng, dup_share=0.05,
                 cross_share=0.0):
        super().__init__(daemon=True)
        self.mix = mix
        self.partitions = partitions
        self.rate = rate
        self.rng = rng
        self.dup_share = dup_share
        self.cross_share = cross_share
        self.cross_keys = set()  # second keys sent to their own partition
        self.storm = threading.Event()  # set by the faults: a duplicate storm
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "message.timeout.ms": 300000})
        self.stopping = threading.Event()
        self.later = []  # (due monotonic, event, key)
        self.lock = threading.Lock()
        self.counts = {"messages": 0, "dup_at_once": 0, "dup_soon": 0, "dup_later": 0,
                       "dup_second_key": 0, "dup_other_partition": 0, "dup_storm": 0}
        self.error = None
        self.delivery_errors = []
        self.extra_events = []

    def send(self, ev, key):
        value = json.dumps(ev, ensure_ascii=False).encode()
        # A second key keeps the id's partition, except for the cross-partition share.
        by = key if key in self.cross_keys else ev["id"]
        self.producer.produce(INPUT, value=value, key=key.encode(),
                              partition=partition_of(by, self.partitions),
                              on_delivery=self._delivered)
        self.producer.poll(0)
        self.counts["messages"] += 1

    def _delivered(self, err, msg):
        if err is not None:
            self.delivery_errors.append(str(err))

    def duplicate(self, ev):
        """Sends ev again, for dup_share of the events each: at once, soon (0.1-3 s: while
        the first copy's records and result are being acknowledged), or later (5-60 s:
        across kills and rebalances); 40 % of them under a second key. During a storm,
        every group event is also sent again under a second key after 50, 100, 200, 400
        and 800 ms, so that some copy arrives between the acknowledgements of its first
        copy's done record and of its result (issue 13 item 5)."""
        if self.storm.is_set() and ev.get("chatType") == "group":
            for delay in STORM_DELAYS:
                self.later.append((time.monotonic() + delay, ev, ev["id"] + "#storm"))
                self.counts["dup_storm"] += 1
        roll = self.rng.random() / self.dup_share
        if roll >= 3:
            return
        when = ("at_once", "soon", "later")[int(roll)]
        key = ev["id"]
        if self.rng.random() < 0.4:
            key += "#second-key"
            self.counts["dup_second_key"] += 1
            if self.rng.random() < self.cross_share:
                self.cross_keys.add(key)
                self.counts["dup_other_partition"] += 1
        self.counts["dup_" + when] += 1
        if when == "at_once":
            self.send(ev, key)
            return
        delay = self.rng.uniform(0.1, 3) if when == "soon" else self.rng.uniform(5, 60)
        self.later.append((time.monotonic() + delay, ev, key))

    def send_due(self, now):
        due = [x for x in self.later if x[0] <= now]
        self.later = [x for x in self.later if x[0] > now]
        for _, ev, key in due:
            self.send(ev, key)

    def run(self):
        try:
            start = time.monotonic()
            i = 0
            while not self.stopping.is_set():
                now = time.monotonic()
                while i < (now - start) * self.rate:
                    with self.lock:
                        ev = self.mix.event(i)
                    self.send(ev, ev["id"])
                    self.duplicate(ev)
                    i += 1
                self.send_due(now)
                time.sleep(0.05)
            self.send_due(float("inf"))
            left = self.producer.flush(120)
            if left:
                self.error = "%d input messages not delivered" % left
        except Exception as e:  # reported by finish()
            self.error = repr(e)

    def produce_now(self, events):
        """Events added after the traffic (the self-test's injections), produced and flushed
        from the caller's thread once the feeder has finished."""
        for ev in events:
            self.mix.expected[ev["id"]] = "succeeded"
            self.mix.kinds[ev["id"]] = ev["chatType"]
            self.send(ev, ev["id"])
        assert self.producer.flush(60) == 0

    def stop(self):
        self.stopping.set()

    def finish(self, timeout=180):
        self.stop()
        self.join(timeout)
        if self.is_alive():
            return "the producer thread did not finish"
        if self.delivery_errors:
            return "input delivery errors: %s" % self.delivery_errors[:3]
        return self.error
