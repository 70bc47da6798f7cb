"""chatprovd and systemd's notify protocol: this test plays systemd's part.

It binds the NOTIFY_SOCKET datagram socket, sets WATCHDOG_USEC (and no WATCHDOG_PID, which
sd_watchdog_enabled would compare with the daemon's pid), runs chatprovd on the local stack and
checks what a service manager would see: READY=1 only once Kafka and Graph are reachable and
a token is held, WATCHDOG=1 at the expected cadence, STATUS= updates, RELOADING=1 then READY=1
on SIGHUP, STOPPING=1 on SIGTERM and exit 0; and never READY=1 with credentials refused.
"""

import json
import os
import re
import signal
import socket
import threading
import time

import pytest
from confluent_kafka import Producer

from stack import SECRET, STATE, Stack, group_event

WATCHDOG_USEC = 2000000
FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3}


class NotifySocket:
    """The service manager's end: every datagram, timestamped, read by a thread at once
    (sd_notify blocks when the socket's queue is full)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic seconds, {name: value}, raw text)
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            with self.lock:
                self.messages.append((time.monotonic(), fields, text))

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def with_field(self, name, value=None, since=0.0):
        return [(t, f) for t, f, _ in self.snapshot()
                if t >= since and name in f and (value is None or f[name] == value)]

    def wait_for(self, name, value=None, since=0.0, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.with_field(name, value, since)
            if found:
                return found[0][0]
            time.sleep(0.05)
        raise AssertionError("no %s=%s within %.0f s; got: %r"
                             % (name, value or "*", timeout,
                                [raw for _, _, raw in self.snapshot()][-20:]))

    def statuses(self, since=0.0):
        return [f["STATUS"] for t, f in self.with_field("STATUS", since=since)]


@pytest.fixture
def notify(tmp_path, monkeypatch):
    # systemd sets WATCHDOG_PID to the main pid; leaving it out keeps the watchdog enabled for
    # the child we start (sd_watchdog_enabled ignores a WATCHDOG_PID that is not its own).
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sock = NotifySocket(os.path.join(str(tmp_path), "notify.sock"))
    yield sock
    sock.close()


def daemon_env(notify):
    return {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def wait_log(daemon, text, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in daemon.log_text():
            return
        assert daemon.alive(), daemon.log_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError("%r not logged within %.0f s:\n%s"
                         % (text, timeout, daemon.log_text()[-3000:]))


def assert_watchdog_cadence(notify, start, end):
    pings = [t for t, _ in notify.with_field("WATCHDOG", "1", since=start) if t <= end]
    assert len(pings) >= 2, "no watchdog pings between %.1f and %.1f" % (start, end)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    timeout = WATCHDOG_USEC / 1e6
    # systemd acts after WATCHDOG_USEC without a ping; chatprovd aims at a quarter of it.
    assert max(gaps) < timeout / 2, gaps
    mean = sum(gaps) / len(gaps)
    assert timeout / 4 * 0.9 <= mean <= timeout / 2, (mean, gaps)
    # Every second of the window is covered (no long silence at either end).
    assert pings[0] - start < timeout / 2 and end - pings[-1] < timeout / 2
    return mean


def test_lifecycle(tmp_path, notify):
    """READY only after the token endpoint recovers; watchdog, STATUS, reload, stop."""
    sim = dict(FAST_OPERATIONS, token_fault_503_rate=1.0)
    with Stack(tmp_path, sim_config=sim) as stack:
        daemon = stack.start_daemon(env=daemon_env(notify))
        wait_log(daemon, "token request failed")
        notify.wait_for("STATUS", timeout=10)
        # A reload while starting must not announce readiness.
        reload_start = time.monotonic()
        daemon.send(signal.SIGHUP)
        notify.wait_for("RELOADING", "1", since=reload_start, timeout=10)
        time.sleep(4)
        assert not notify.with_field("READY"), notify.snapshot()
        assert all(s.startswith("starting") for s in notify.statuses()), notify.statuses()
        starting_watchdog = notify.with_field("WATCHDOG", "1")
        assert starting_watchdog, "the main loop pings while starting too"

        stack.graph.config(token_fault_503_rate=0)
        recovered = time.monotonic()
        ready = notify.wait_for("READY", "1", timeout=45)
        assert ready >= recovered
        assert len(notify.with_field("READY")) == 1

        events = [group_event(i) for i in range(30)]
        stack.produce(events)
        stack.wait_results([e["id"] for e in events], timeout=60)
        # STATUS= follows the counters: the 30 successes show within a couple of seconds.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any("succeeded 30," in s for s in notify.statuses(since=ready)):
                break
            time.sleep(0.1)
        running = notify.statuses(since=ready)
        assert any(s.startswith("running;") and "succeeded 30, failed 0, rejected 0, "
                   "consumed 30" in s for s in running), running
        assert all("in flight" in s and "queued" in s and "throttled" in s and "lag" in s
                   for s in running)

        # SIGHUP once ready: RELOADING=1 (with MONOTONIC_USEC), then READY=1; the log level
        # is reloaded (error only: the stop below logs no notices).
        stack.write_config(log={"level": "error"})
        hup = time.monotonic()
        daemon.send(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", since=hup, timeout=10)
        mono = [f for _, f in notify.with_field("RELOADING", "1", since=hup)][0]
        assert int(mono["MONOTONIC_USEC"]) > 0
        ready_again = notify.wait_for("READY", "1", since=reloading, timeout=10)
        assert ready_again >= reloading
        wait_log(daemon, "reloaded")
        cadence = assert_watchdog_cadence(notify, ready, time.monotonic())

        log_before_stop = len(daemon.log_text())
        term = time.monotonic()
        code = daemon.stop(signal.SIGTERM, timeout=60)
        assert code == 0, daemon.log_text()[-3000:]
        stopping = notify.wait_for("STOPPING", "1", since=term, timeout=5)
        extend = notify.with_field("EXTEND_TIMEOUT_USEC", since=stopping)
        assert extend and int(extend[0][1]["EXTEND_TIMEOUT_USEC"]) >= 10 * 1000000
        assert not notify.with_field("READY", since=stopping)
        stop_log = daemon.log_text()[log_before_stop:]
        assert "[notice]" not in stop_log and "stopping: draining" not in stop_log, stop_log
    print("watchdog: mean gap %.3f s with WATCHDOG_USEC=%d" % (cadence, WATCHDOG_USEC))


def test_credentials_refused_never_ready(tmp_path, notify):
    """The token endpoint refuses the secret: no READY=1 until a reload brings the right one."""
    with Stack(tmp_path) as stack:
        with open(stack.secret_path, "w") as f:
            f.write("wrong-secret\n")
        daemon = stack.start_daemon(env=daemon_env(notify))
        wait_log(daemon, "credentials rejected")
        wait_log(daemon, "assigned chat.requests")  # Kafka is fine: only the token is missing
        time.sleep(4)
        ledger = stack.graph.ledger()
        assert not notify.with_field("READY"), notify.snapshot()
        statuses = notify.statuses()
        assert statuses and all(s.startswith("starting") for s in statuses), statuses
        assert notify.with_field("WATCHDOG", "1")

        # The operator fixes the secret file and reloads: the token comes, then READY=1.
        with open(stack.secret_path, "w") as f:
            f.write(SECRET + "\n")
        hup = time.monotonic()
        daemon.send(signal.SIGHUP)
        notify.wait_for("RELOADING", "1", since=hup, timeout=10)
        notify.wait_for("READY", "1", since=hup, timeout=30)
        assert len(notify.with_field("READY")) == 1

        term = time.monotonic()
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0, daemon.log_text()[-3000:]
        notify.wait_for("STOPPING", "1", since=term, timeout=5)
    assert ledger["token_failures"].get("AADSTS7000215", 0) >= 1, ledger
    assert ledger["token_grants"]["client_secret"] == 0, ledger



# ---- the Kafka thread's long waits (issue 13, item 14) ---------------------------------------

RESTORE_RECORDS = 60
# librdkafka's mock delays every answer of the broker by this much: a slow state leader.
SLOW_RTT_MS = 250


def fill_state_partition(stack, n):
    """n done records in state partition 0, one produce request each (the mock answers a
    fetch with whole batches, so one record per batch keeps every fetch small)."""
    producer = Producer({"bootstrap.servers": stack.kafka.bootstrap, "linger.ms": 0,
                         "batch.num.messages": 1})
    padding = "x" * 600
    for i in range(n):
        rid = "restored-%04d" % i
        value = json.dumps({"schema": "chatprov.result.v1", "id": rid, "status": "succeeded",
                            "chatId": "19:%s@thread.v2" % rid, "note": padding})
        producer.produce(STATE, key=rid.encode(), value=value.encode(), partition=0,
                         headers=[("chatprov-state", b"done"), ("chatprov-status", b"succeeded")])
        producer.flush(10)


def pings_between(notify, start, end):
    return [t for t, _ in notify.with_field("WATCHDOG", "1", since=start) if t <= end]


def test_watchdog_fed_while_restore_advances_withheld_while_stuck(tmp_path, notify):
    """A restore on a slow state leader lasts many watchdog periods: WATCHDOG=1 keeps coming
    while records arrive; with the broker gone the restore is stuck and the pings stop (so
    systemd would restart a truly stuck daemon); when it is back they resume."""
    timeout = WATCHDOG_USEC / 1e6
    with Stack(tmp_path, partitions=1) as stack:
        fill_state_partition(stack, RESTORE_RECORDS)
        assert stack.kafka.command("rtt 1 %d" % SLOW_RTT_MS).startswith("OK")
        daemon = stack.start_daemon(env=daemon_env(notify),
                                    librdkafka={"fetch.message.max.bytes": "1024"})
        wait_log(daemon, "restoring offsets 0..%d" % (RESTORE_RECORDS - 1), timeout=60)
        started = time.monotonic()
        # Slow but advancing: pings at the usual cadence, for several watchdog periods.
        time.sleep(3 * timeout)
        advancing_end = time.monotonic()
        assert "restored state of partition 0" not in daemon.log_text(), \
            "the restore was too quick to show anything"
        pings = pings_between(notify, started, advancing_end)
        gaps = [b - a for a, b in zip([started] + pings, pings + [advancing_end])]
        assert max(gaps) < timeout, (gaps, daemon.log_text()[-3000:])

        # Stuck: no record can come. The pings stop within about half the watchdog timeout.
        assert stack.kafka.command("broker down 1").startswith("OK")
        down = time.monotonic()
        time.sleep(2 * timeout)
        up = time.monotonic()
        assert stack.kafka.command("broker up 1").startswith("OK")
        silent = pings_between(notify, down + timeout * 0.75, up)
        assert not silent, "pings while nothing advanced: %r" % silent
        assert "withholding watchdog pings" in daemon.log_text()

        # Moving again: the restore completes and the pings resume.
        wait_log(daemon, "restored state of partition 0: %d records" % RESTORE_RECORDS,
                 timeout=90)
        m = re.search(r"restored state of partition 0: \d+ records in (\d+) ms",
                      daemon.log_text())
        assert int(m.group(1)) > 3 * WATCHDOG_USEC / 1000, m.group(0)
        assert pings_between(notify, up, time.monotonic()), "pings did not resume"
        assert "progress resumed" in daemon.log_text()
        assert stack.kafka.command("rtt 1 0").startswith("OK")
        assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.log_text()[-3000:]
