"""Tests of tools/kafka-mock: its command language and process behaviour, and the properties
of librdkafka 2.0.2's mock cluster that chatprov relies on (see docs/kafka-mock.md)."""

import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import queue
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from kafkamock import KafkaMock, binary_path, fixture

# librdkafka 2.0.2's mock needs session.timeout.ms > 2000 to form a group at all and then
# takes about session.timeout.ms - 1 s per rebalance round.
GROUP_CONF = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 300}

kafka = fixture(topics=["events:4", "state:4:compact"])


def produce(bootstrap, topic, values, partition=None, extra=None):
    """Produces values (bytes) and returns the delivery errors (empty when all arrived)."""
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"}
    conf.update(extra or {})
    producer = Producer(conf)
    errors = []

    def report(err, _msg):
        if err:
            errors.append(err)

    for i, value in enumerate(values):
        part = partition if partition is not None else i % 4
        producer.produce(topic, value=value, partition=part, on_delivery=report)
    remaining = producer.flush(20)
    assert remaining == 0, "%d messages not delivered" % remaining
    return errors


def read_all(bootstrap, topic, partitions, timeout=10.0):
    """Reads every partition from the beginning to its high watermark with assign()."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                         "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                for p in range(partitions)}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        values = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout
        while len(done) < partitions and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            values.append(msg.value())
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
        assert len(done) == partitions, "did not reach the high watermark: %r" % ends
        return values
    finally:
        consumer.close()


def test_round_trip(kafka):
    values = [b"message-%d" % i for i in range(40)]
    assert produce(kafka.bootstrap, "events", values) == []
    assert sorted(read_all(kafka.bootstrap, "events", 4)) == sorted(values)


def test_commands(kafka):
    assert kafka.command("rtt 1 50") == "OK broker 1 rtt 50 ms"
    assert kafka.command("rtt 1 0") == "OK broker 1 rtt 0 ms"
    assert kafka.command("push-errors 0 6,NOT_ENOUGH_REPLICAS").startswith("OK pushed 2 ")
    assert kafka.command("broker-errors 1 0 MSG_SIZE_TOO_LARGE,10") == \
        "OK pushed 2 error(s) for api key 0 on broker 1"
    assert kafka.command("clear-errors 0").startswith("OK")
    assert kafka.command("create-topic extra 3") == "OK topic extra partitions 3"
    assert kafka.command("coordinator group g1 1").startswith("OK")
    assert kafka.command("leader events 2 1").startswith("OK")
    assert kafka.command("bootstrap") == "OK " + kafka.bootstrap
    md = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "md"})
    try:
        assert len(md.list_topics("extra", timeout=5).topics["extra"].partitions) == 3
    finally:
        md.close()


@pytest.mark.parametrize("line", [
    "frobnicate", "", "broker", "broker sideways 1", "broker down 2", "broker down x",
    "broker down 1 2", "rtt 1 -5", "rtt 1 10ms", "push-errors 0 99999", "push-errors x 6",
    "push-errors 0 ,", "broker-errors 2 0 6", "broker-errors 1 0 99999", "broker-errors 1 0",
    "create-topic extra 0", "create-topic bad/name 2",
    "create-topic events 4", "coordinator cluster g 1", "leader events 99 1",
    "x" * 5000,
])
def test_bad_command_is_refused(kafka, line):
    reply = kafka.command(line)
    assert reply.startswith("ERR "), reply
    # The mock is still answering after the refusal.
    assert kafka.command("rtt 1 0").startswith("OK")


def test_broker_down_and_up(kafka):
    assert produce(kafka.bootstrap, "events", [b"before"], partition=0) == []
    assert kafka.command("broker down 1") == "OK broker 1 down"
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    delivered = []
    producer.produce("events", value=b"during", partition=0,
                     on_delivery=lambda err, _m: delivered.append(err))
    producer.flush(1.5)
    assert delivered == [], "delivered while the only broker was down"
    assert kafka.command("broker up 1") == "OK broker 1 up"
    assert producer.flush(20) == 0
    assert delivered == [None]
    assert sorted(read_all(kafka.bootstrap, "events", 4)) == [b"before", b"during"]


def test_idempotent_producer_survives_retriable_errors(kafka):
    # Produce (api key 0) fails three times; the idempotent producer retries without
    # writing any record twice.
    assert kafka.command("push-errors 0 NOT_LEADER_FOR_PARTITION,REQUEST_TIMED_OUT,"
                         "NOT_ENOUGH_REPLICAS").startswith("OK")
    values = [b"%d" % i for i in range(100)]
    assert produce(kafka.bootstrap, "events", values) == []
    assert sorted(read_all(kafka.bootstrap, "events", 4)) == sorted(values)


def test_committed_offsets_survive_consumer_restart(kafka):
    assert produce(kafka.bootstrap, "state", [b"a", b"b", b"c"], partition=1) == []
    conf = {"bootstrap.servers": kafka.bootstrap, "group.id": "restart",
            "enable.auto.commit": False}
    first = Consumer(conf)
    first.commit(offsets=[TopicPartition("state", 1, 2)], asynchronous=False)
    first.close()
    second = Consumer(conf)
    try:
        committed = second.committed([TopicPartition("state", 1)], timeout=5)
        assert committed[0].offset == 2
        second.assign(committed)
        msg = None
        deadline = time.monotonic() + 10
        while msg is None and time.monotonic() < deadline:
            msg = second.poll(0.2)
        assert msg is not None and msg.value() == b"c"
    finally:
        second.close()


def test_topics_auto_create(kafka):
    # The mock creates unknown topics on first use: a misspelt topic name is not an error
    # here, unlike on a broker with auto.create.topics.enable=false.
    assert produce(kafka.bootstrap, "never-declared", [b"x"], partition=0) == []
    md = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "md"})
    try:
        assert len(md.list_topics(timeout=5).topics["never-declared"].partitions) == 4
    finally:
        md.close()


def test_bootstrap_file(tmp_path):
    path = tmp_path / "bootstrap"
    mock = KafkaMock().start(extra_args=["--bootstrap-file", str(path)])
    try:
        assert path.read_text() == mock.bootstrap + "\n"
        assert os.listdir(tmp_path) == ["bootstrap"]  # no temporary file left behind
    finally:
        assert mock.stop() == 0
    assert not path.exists()


def test_several_brokers():
    with KafkaMock().start(topics=[("t", 2)], brokers=3) as mock:
        assert len(mock.bootstrap.split(",")) == 3
        assert mock.command("broker down 4").startswith("ERR")
        # The mock does not fail over by itself: with the leader down, a produce waits until
        # leadership is moved to a live broker.
        producer = Producer({"bootstrap.servers": mock.bootstrap, "enable.idempotence": True,
                             "acks": "all"})
        leader = producer.list_topics("t", timeout=5).topics["t"].partitions[0].leader
        assert mock.command("broker down %d" % leader) == "OK broker %d down" % leader
        producer.produce("t", value=b"x", partition=0)
        assert producer.flush(1.5) == 1
        other = leader % 3 + 1
        assert mock.command("leader t 0 %d" % other) == "OK t [0] leader %d" % other
        assert producer.flush(15) == 0
        assert mock.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero(sig):
    mock = KafkaMock().start(topics=["t:1"])
    assert mock.stop(sig) == 0


def test_end_of_stdin_exits_zero():
    proc = subprocess.run([binary_path(), "--topic", "t:1"], input="rtt 1 5\nbroker up 1",
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("BOOTSTRAP 127.0.0.1:")
    # The last command has no newline and is still answered.
    assert lines[1:] == ["OK broker 1 rtt 5 ms", "OK broker 1 up"]


def test_quit_exits_zero():
    proc = subprocess.run([binary_path()], input="quit\nrtt 1 5\n", capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[1:] == ["OK bye"]


@pytest.mark.parametrize("args", [["--brokers", "0"], ["--brokers", "x"], ["--topic", "t"],
                                  ["--topic", "t:0"], ["--topic", "t:2:weird"], ["extra"]])
def test_bad_options_exit_one(args):
    proc = subprocess.run([binary_path()] + args, input="", capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr != ""


def test_help():
    proc = subprocess.run([binary_path(), "--help"], capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 0 and "--bootstrap-file" in proc.stdout


# A group member in its own process: prints its assignment whenever it changes and every
# message it receives; leaves the group cleanly when its stdin closes.
MEMBER = r"""
import select, sys
from confluent_kafka import Consumer
bootstrap, group, topic, session, heartbeat = sys.argv[1:6]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
              "partition.assignment.strategy": "cooperative-sticky",
              "session.timeout.ms": int(session), "heartbeat.interval.ms": int(heartbeat),
              "auto.offset.reset": "earliest", "auto.commit.interval.ms": 500})
c.subscribe([topic])
last = None
while not select.select([sys.stdin], [], [], 0)[0]:
    msg = c.poll(0.1)
    now = sorted(tp.partition for tp in c.assignment())
    if now != last:
        print("ASSIGNED " + ",".join(map(str, now)), flush=True)
        last = now
    if msg is not None and not msg.error():
        print("MSG %d %s" % (msg.partition(), msg.value().decode()), flush=True)
c.close()
print("CLOSED", flush=True)
"""


class Member:
    """One consumer-group member process and the lines it printed."""

    def __init__(self, name, bootstrap, events):
        self.name = name
        self.assigned = None
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MEMBER, bootstrap, "grp", "events",
             str(GROUP_CONF["session.timeout.ms"]), str(GROUP_CONF["heartbeat.interval.ms"])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events):
        for line in self.proc.stdout:
            events.put((self, line.rstrip("\n")))

    def stop(self):
        self.proc.stdin.close()
        return self.proc.wait(timeout=15)


def test_group_of_two_processes_shares_partitions(kafka):
    events = queue.Queue()
    members = [Member("a", kafka.bootstrap, events), Member("b", kafka.bootstrap, events)]
    received = {m.name: [] for m in members}
    try:
        # Wait until the two members own disjoint halves of the four partitions.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                member, line = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("ASSIGNED"):
                parts = line.split(" ", 1)[1] if " " in line else ""
                member.assigned = {int(p) for p in parts.split(",") if p}
            sets = [m.assigned or set() for m in members]
            if all(sets) and sets[0].isdisjoint(sets[1]) and sets[0] | sets[1] == {0, 1, 2, 3}:
                break
        else:
            pytest.fail("group did not settle: %r" % [m.assigned for m in members])

        values = ["v%d" % i for i in range(200)]
        assert produce(kafka.bootstrap, "events", [v.encode() for v in values]) == []
        deadline = time.monotonic() + 20
        while sum(map(len, received.values())) < len(values) and time.monotonic() < deadline:
            try:
                member, line = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("MSG "):
                _, part, value = line.split(" ")
                assert int(part) in member.assigned
                received[member.name].append(value)
        # Every message exactly once, and both members did part of the work.
        assert sorted(received["a"] + received["b"]) == sorted(values)
        assert received["a"] and received["b"]

        # b leaves (committing on close); a takes over b's partitions incrementally and
        # continues from b's committed offsets: nothing old comes again.
        assert members[1].stop() == 0
        later = ["w%d" % i for i in range(20)]
        deadline = time.monotonic() + 15
        while members[0].assigned != {0, 1, 2, 3} and time.monotonic() < deadline:
            try:
                member, line = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if member is members[0] and line.startswith("ASSIGNED "):
                member.assigned = {int(p) for p in line.split(" ")[1].split(",")}
        assert members[0].assigned == {0, 1, 2, 3}
        assert produce(kafka.bootstrap, "events", [v.encode() for v in later]) == []
        taken_over = []
        deadline = time.monotonic() + 10
        while len(taken_over) < len(later) and time.monotonic() < deadline:
            try:
                member, line = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if member is members[0] and line.startswith("MSG "):
                taken_over.append(line.split(" ")[2])
        assert sorted(taken_over) == sorted(later)
    finally:
        for m in members:
            if m.proc.poll() is None:
                try:
                    m.stop()
                except subprocess.TimeoutExpired:
                    m.proc.kill()
    assert [m.proc.returncode for m in members] == [0, 0]


def test_broker_errors_refuse_that_brokers_produce_requests(kafka):
    """broker-errors: the pushed error answers the next Produce request the broker gets;
    MSG_SIZE_TOO_LARGE is not retried by librdkafka, so the delivery report carries it."""
    assert kafka.command("broker-errors 1 0 MSG_SIZE_TOO_LARGE").startswith("OK pushed 1 ")
    errors = produce(kafka.bootstrap, "events", [b"refused"], partition=0)
    assert [e.code() for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE], errors
    assert produce(kafka.bootstrap, "events", [b"taken"], partition=0) == []
