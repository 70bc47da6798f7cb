"""kafkamock - start and drive tools/kafka-mock from integration tests.

    from kafkamock import KafkaMock, fixture

    mock = KafkaMock().start(topics=["chat.requests:4", ("chat.results", 4)], brokers=1)
    conf = {"bootstrap.servers": mock.bootstrap}
    assert mock.command("broker down 1") == "OK broker 1 down"
    mock.stop()                      # SIGTERM, returns the exit code (0)

or as a pytest fixture (started before the test, stopped after it, even on failure):

    kafka = fixture(topics=["chat.requests:4"])      # at module level

    def test_something(kafka):
        ... kafka.bootstrap ...

The binary is $CHATPROV_BUILD_DIR/tools/kafka-mock/kafka-mock (ctest sets the variable).
Replies to command() are single lines, "OK ..." or "ERR <reason>"; see docs/kafka-mock.md.
Note for consumer groups: librdkafka 2.0.2's mock delays a rebalance by about
session.timeout.ms, so use a short one (e.g. session.timeout.ms=3000,
heartbeat.interval.ms=500).
"""

import os
import queue
import signal
import subprocess
import threading

import pytest

START_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0


def binary_path():
    """Path of the kafka-mock executable in the build tree."""
    build = os.environ.get("CHATPROV_BUILD_DIR")
    if not build:
        raise RuntimeError("CHATPROV_BUILD_DIR is not set (run the tests through ctest)")
    return os.path.join(build, "tools", "kafka-mock", "kafka-mock")


def _topic_arg(topic):
    """'name:partitions[:compact]' strings pass through; (name, partitions) tuples are joined."""
    if isinstance(topic, str):
        return topic
    name, partitions = topic
    return "%s:%d" % (name, partitions)


class KafkaMock:
    """One kafka-mock process: a mock Kafka cluster on 127.0.0.1."""

    def __init__(self, binary=None):
        self.binary = binary or binary_path()
        self.proc = None
        self.bootstrap = None  # "127.0.0.1:port[,...]" once started
        self._lines = queue.Queue()
        self._reader = None

    def start(self, topics=(), brokers=1, extra_args=(), timeout=START_TIMEOUT):
        """Starts the cluster and waits for its BOOTSTRAP line. Returns self."""
        args = [self.binary, "--brokers", str(brokers)]
        for topic in topics:
            args += ["--topic", _topic_arg(topic)]
        args += list(extra_args)
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        first = self._next_line(timeout)
        if first is None or not first.startswith("BOOTSTRAP "):
            self.kill()
            raise RuntimeError("kafka-mock did not start (first line: %r, exit code %r)"
                               % (first, self.proc.poll()))
        self.bootstrap = first.split(" ", 1)[1]
        return self

    def _read_stdout(self):
        # A thread, so that waiting for a line can time out; None marks the end of output.
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, timeout):
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def command(self, line, timeout=REPLY_TIMEOUT):
        """Sends one command line and returns its reply line ("OK ..." or "ERR ...")."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self._next_line(timeout)
        if reply is None:
            raise RuntimeError("kafka-mock gave no reply to %r" % line)
        return reply

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Asks the mock to exit with sig and returns its exit code (kills it if it hangs)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._close_pipes()

    def kill(self):
        """Kills the process at once; safe to call more than once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self):
        # Called once the process is gone: the reader thread is at end of file.
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def fixture(topics=(), brokers=1, scope="function"):
    """Returns a pytest fixture that yields a started KafkaMock and kills it afterwards.

    Assign it to a module-level name; the name becomes the fixture's name:
        kafka = fixture(topics=["in:4", "out:4"], brokers=3, scope="module")
    """

    @pytest.fixture(scope=scope)
    def _kafka_mock():
        mock = KafkaMock().start(topics=topics, brokers=brokers)
        try:
            yield mock
        finally:
            mock.kill()

    return _kafka_mock
