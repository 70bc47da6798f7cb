"""stack - the local stack (kafka-mock, graph-sim) plus chatprovd as a process.

    with Stack(tmp_path, partitions=4) as stack:
        stack.start_daemon()
        stack.produce([event, ...])
        results = stack.wait_results(ids)           # {id: result dict}
        assert stack.daemon.stop() == 0
        ledger = stack.graph.ledger()

Events are dicts (sent as JSON) or raw bytes; results are read from the output topic by a
consumer of its own. chatprovd's log goes to <tmp>/chatprovd-N.log.
"""

import json
import os
import shlex
import signal
import subprocess
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from graphsim import GraphSim
from kafkamock import KafkaMock

INPUT = "chat.requests"
OUTPUT = "chat.results"
DLQ = "chat.dlq"
STATE = "chat.requests.state"
TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "00000000-0000-0000-0000-000000000001"
SECRET = "sim-secret"


def build_path(*parts):
    return os.path.join(os.environ["CHATPROV_BUILD_DIR"], *parts)


def source_path(*parts):
    return os.path.join(os.environ["CHATPROV_SOURCE_DIR"], *parts)


class Daemon:
    """One chatprovd process."""

    def __init__(self, config_path, log_path, env=None):
        self.config_path = config_path
        self.log_path = log_path
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        # CHATPROV_DAEMON_WRAPPER prefixes the command (e.g. "valgrind --error-exitcode=1 ...").
        wrapper = shlex.split(self.env.get("CHATPROV_DAEMON_WRAPPER", ""))
        self.proc = subprocess.Popen(wrapper + [build_path("daemon", "chatprovd"), "--config",
                                                self.config_path], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Sends sig and returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def sigkill(self):
        """SIGKILL now (no drain, no commit); returns the exit code (-9)."""
        self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and not self.log.closed:
            self.log.close()

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Stack:
    def __init__(self, tmp_path, partitions=4, sim_config=None, brokers=1):
        self.tmp = str(tmp_path)
        self.partitions = partitions
        self.kafka = KafkaMock().start(topics=["%s:%d" % (INPUT, partitions),
                                               "%s:%d" % (OUTPUT, partitions),
                                               "%s:%d" % (DLQ, partitions),
                                               "%s:%d" % (STATE, partitions)],
                                       brokers=brokers)
        # Graph's real limits are the subject of their own tests: elsewhere they are lifted.
        config = {"limit_per_tenant": 1000000, "limit_global": 1000000}
        config.update(sim_config or {})
        self.graph = GraphSim().start(config=config)
        self.daemons = []
        self.secret_path = os.path.join(self.tmp, "graph-client-secret")
        with open(self.secret_path, "w") as f:
            f.write(SECRET + "\n")
        self._producer = Producer({"bootstrap.servers": self.kafka.bootstrap,
                                   "enable.idempotence": True})
        self._consumer = None
        self.results = {}
        self.result_messages = []

    # ---- configuration ----

    def write_config(self, name="chatprovd.conf", **overrides):
        """Writes a config; overrides are {"section": {"key": "value"}}."""
        sections = {
            "kafka": {"brokers": self.kafka.bootstrap, "group_id": "chatprovd-test",
                      "input_topic": INPUT, "output_topic": OUTPUT, "dlq_topic": DLQ},
            "librdkafka": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"},
            "graph": {"base_url": self.graph.url, "api_version": "beta",
                      "request_timeout_s": "10", "connect_timeout_s": "5"},
            "auth": {"tenant_id": TENANT, "client_id": CLIENT_ID,
                     "client_secret_file": self.secret_path,
                     "authority_url": self.graph.url},
            "limits": {"chat_creates_per_10s_per_tenant": "10000",
                       "chat_creates_per_10s_global": "100000"},
            "operations": {"poll_interval_s": "0.2", "timeout_s": "60"},
            "retry": {"base_delay_s": "0.05", "max_delay_s": "1"},
            "metrics": {"listen": "127.0.0.1:0"},
            "log": {"level": "info"},
        }
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            for section, values in sections.items():
                f.write("[%s]\n" % section)
                for key, value in values.items():
                    f.write("%s = %s\n" % (key, value))
                f.write("\n")
        return path

    def start_daemon(self, config_path=None, env=None, **overrides):
        config_path = config_path or self.write_config(**overrides)
        log_path = os.path.join(self.tmp, "chatprovd-%d.log" % len(self.daemons))
        daemon = Daemon(config_path, log_path, env).start()
        self.daemons.append(daemon)
        return daemon

    def start_daemons(self, n, env=None, **overrides):
        """Starts n instances of one config (one group); each logs to its own file."""
        config_path = self.write_config(**overrides)
        return [self.start_daemon(config_path, env) for _ in range(n)]

    @property
    def daemon(self):
        return self.daemons[-1]

    # ---- Kafka ----

    def produce(self, events, topic=INPUT, headers=None, key=None, partition=None, flush=True):
        """Produces events (dicts as JSON, bytes as they are), keyed by their id, or all by
        `key` (bytes: one partition for all of them). partition: that partition number for
        every event; flush=False leaves delivery to a later produce() or flush_producer()."""
        extra = {} if partition is None else {"partition": partition}
        for event in events:
            if isinstance(event, (bytes, bytearray)):
                value, k = bytes(event), None
            else:
                value, k = json.dumps(event).encode(), str(event.get("id", "")).encode()
            self._producer.produce(topic, value=value, key=key if key is not None else k,
                                   headers=headers, **extra)
            self._producer.poll(0)
        if flush:
            self.flush_producer()

    def flush_producer(self, timeout=30):
        assert self._producer.flush(timeout) == 0

    def _ensure_consumer(self):
        if self._consumer is None:
            self._consumer = Consumer({"bootstrap.servers": self.kafka.bootstrap,
                                       "group.id": "results-reader-" + uuid.uuid4().hex,
                                       "auto.offset.reset": "earliest",
                                       "enable.auto.commit": False})
            self._consumer.subscribe([OUTPUT])

    def read_results(self, timeout=1.0):
        """Reads what is on the output topic now; returns the new result messages."""
        self._ensure_consumer()
        new = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            result = json.loads(msg.value())
            entry = {"result": result, "key": msg.key(), "headers": msg.headers() or []}
            self.result_messages.append(entry)
            self.results.setdefault(result.get("id"), []).append(result)
            new.append(entry)
        return new

    def wait_results(self, ids, timeout=120):
        """Waits until every id has at least one result; returns {id: first result}."""
        ids = set(ids)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ids <= set(self.results):
                return {i: self.results[i][0] for i in ids}
            for d in self.daemons:
                if d.proc.poll() not in (None, 0) and d is self.daemon:
                    raise AssertionError("chatprovd exited %s:\n%s"
                                         % (d.proc.poll(), d.log_text()[-4000:]))
            self.read_results(timeout=0.5)
        missing = sorted(ids - set(self.results))
        raise AssertionError("no result for %d ids, e.g. %s\n--- log tail ---\n%s"
                             % (len(missing), missing[:5],
                                self.daemon.log_text()[-4000:] if self.daemons else ""))

    def read_topic(self, topic, timeout=3.0):
        """Every message of a topic, read from the beginning of each partition (no group)."""
        consumer = Consumer({"bootstrap.servers": self.kafka.bootstrap,
                             "group.id": "reader-" + uuid.uuid4().hex,
                             "enable.auto.commit": False})
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
        consumer.close()
        return out

    def close(self):
        for d in self.daemons:
            d.kill()
        if self._consumer is not None:
            self._consumer.close()
        self.graph.stop()
        self.kafka.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def group_event(i, members=3, topic=None, app=False, tenant=None):
    ev = {"id": "grp-%06d" % i, "chatType": "group",
          "topic": topic or ("Welcome %d" % i),
          "members": [{"userId": str(uuid.UUID(int=(i * 16 + m) + (1 << 120)))}
                      for m in range(members)]}
    if app:
        ev["installedApps"] = ["05F59CEC-A742-4A50-A62E-202A57E478A4"]
    if tenant:
        ev["tenant"] = tenant
    return ev


def one_on_one_event(i, pair=None, app=False):
    a, b = pair if pair else (i, i + 1)
    ev = {"id": "one-%06d" % i, "chatType": "oneOnOne",
          "members": [{"userId": str(uuid.UUID(int=a + (2 << 120)))},
                      {"userId": str(uuid.UUID(int=b + (2 << 120)))}]}
    if app:
        ev["installedApps"] = ["05F59CEC-A742-4A50-A62E-202A57E478A4"]
    return ev
