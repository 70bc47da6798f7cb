"""offsets - the group's committed input offsets against the input's high watermarks, sampled
from a thread of its own while the soak runs, so that a partition whose offset stops while
work waits on it is seen even if a later restart unblocks it."""

import json
import threading
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from stack import INPUT

GROUP = "chatprovd-test"


def committed_and_high(consumer, partitions, timeout=5.0):
    """{partition: (committed offset or 0, high watermark)}; raises on a broker error."""
    tps = [TopicPartition(INPUT, p) for p in range(partitions)]
    out = {}
    for tp in consumer.committed(tps, timeout=timeout):
        _, high = consumer.get_watermark_offsets(TopicPartition(INPUT, tp.partition),
                                                 timeout=timeout, cached=False)
        out[tp.partition] = (max(tp.offset, 0), high)
    return out


def offsets_consumer(bootstrap):
    """A consumer that only reads the group's commits: it never subscribes, so it never
    joins the group (docs/kafka-mock.md finding 5)."""
    return Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP,
                     "enable.auto.commit": False, "socket.timeout.ms": 5000})


def ids_between(bootstrap, partition, low, high, timeout=20.0):
    """The ids of the input messages of one partition at offsets [low, high)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "soak-" + uuid.uuid4().hex,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(INPUT, partition, low)])
    ids = []
    deadline = time.monotonic() + timeout
    at = low
    while at < high and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        at = msg.offset() + 1
        try:
            ids.append("%s@%d" % (json.loads(msg.value())["id"], msg.offset()))
        except (ValueError, KeyError, TypeError):
            ids.append("<undecodable>@%d" % msg.offset())
    consumer.close()
    return ids


class Monitor(threading.Thread):
    """Samples every `period` s; a partition is stalled while its committed offset stays
    below the high watermark it had when the offset last moved (or since the first sample
    that showed work waiting). Keeps, per partition, the longest such stall."""

    def __init__(self, bootstrap, partitions, period=1.0):
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.period = period
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.last = {}           # partition -> (committed, high)
        self.waiting_since = {}  # partition -> monotonic time work first waited unmoved
        self.longest = {p: (0.0, None) for p in range(partitions)}  # (seconds, (committed, high))
        self.samples = 0
        self.errors = 0
        self.last_error = None

    def run(self):
        consumer = offsets_consumer(self.bootstrap)
        try:
            while not self.stopping.wait(self.period):
                try:
                    sample = committed_and_high(consumer, self.partitions)
                except Exception as e:  # a broker outage: no sample this time
                    self.errors += 1
                    self.last_error = repr(e)
                    # After a failover the old consumer keeps asking the old leader.
                    consumer.close()
                    consumer = offsets_consumer(self.bootstrap)
                    continue
                self.record(sample, time.monotonic())
        finally:
            consumer.close()

    def record(self, sample, now):
        with self.lock:
            self.samples += 1
            for p, (committed, high) in sample.items():
                before = self.last.get(p)
                moved = before is None or committed != before[0]
                if committed >= high or moved:
                    self.waiting_since.pop(p, None)
                if committed < high:
                    since = self.waiting_since.setdefault(p, now)
                    if now - since > self.longest[p][0]:
                        self.longest[p] = (now - since, (committed, high))
                self.last[p] = (committed, high)

    def stalls(self, limit):
        """[(partition, seconds, (committed, high))] for stalls longer than limit."""
        with self.lock:
            return [(p, s, at) for p, (s, at) in sorted(self.longest.items()) if s > limit]

    def longest_stall(self):
        with self.lock:
            return max((s for s, _ in self.longest.values()), default=0.0)

    def stop(self):
        self.stopping.set()
        self.join(30)
