"""chatprovd's logs: one line per record with a level on stderr; native journal entries with
structured fields under journald.

systemd-journald does not run here, so the journal test plays its part: in a private mount
namespace (unshare -m, root only) /run is a test directory whose systemd/journal/socket is a
datagram socket this test reads, and JOURNAL_STREAM names chatprovd's stderr, exactly the
two things sd_journal_sendv and log_init look at.
"""

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest

from stack import Stack, build_path, group_event

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z chatprovd "
                  r"\[(error|warning|notice|info|debug)\] \S")
CLIENT_REQUEST_ID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chatprov:client-request-id")
FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3}


def own_lines(text):
    """chatprovd's records (librdkafka prints its own "%N|..." lines)."""
    return [l for l in text.splitlines() if l and not l.startswith("%")]


def test_stderr_format(tmp_path):
    events = [group_event(i) for i in range(5)]
    bad = {"id": "bad-1", "chatType": "oneOnOne", "members": []}
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        daemon = stack.start_daemon()
        stack.produce(events + [bad])
        results = stack.wait_results([e["id"] for e in events] + ["bad-1"], timeout=60)
        assert daemon.stop() == 0
    lines = own_lines(daemon.log_text())
    assert lines
    for line in lines:
        assert LINE.match(line), line
    for e in events:
        r = results[e["id"]]
        done = [l for l in lines if "[info] request succeeded" in l
                and " request_id=%s " % e["id"] in l + " "]
        assert len(done) == 1, lines
        assert " chat_id=%s" % r["chat"]["id"] in done[0]
        assert " graph_request_id=%s" % r["graph"]["requestId"] in done[0]
        assert " client_request_id=%s" % uuid.uuid5(CLIENT_REQUEST_ID_NS, e["id"]) in done[0]
    assert any("[notice] rejected" in l and "request_id=bad-1" in l for l in lines), lines


def parse_native(data):
    """The journal's native protocol: NAME=value lines, or NAME\\n<le64 size><bytes>\\n."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = nl + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            i = nl + 9 + size + 1
        fields[name.decode()] = value.decode("utf-8", "replace")
    return fields


class FakeJournal:
    def __init__(self, run_dir):
        os.makedirs(os.path.join(run_dir, "systemd", "journal"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.path.join(run_dir, "systemd", "journal", "socket"))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.settimeout(0.2)
        self.entries = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            self.entries.append(parse_native(data))

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_unshare(), reason="needs root and mount namespaces (unshare -m)")
def test_journal_native_fields(tmp_path):
    run_dir = os.path.join(str(tmp_path), "run")
    journal = FakeJournal(run_dir)
    events = [group_event(i) for i in range(5)]
    try:
        with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
            config = stack.write_config()
            stderr_path = os.path.join(str(tmp_path), "stderr")
            with open(stderr_path, "wb") as err:
                st = os.fstat(err.fileno())
                env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
                proc = subprocess.Popen(
                    ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /run && exec "$@"',
                     run_dir, build_path("daemon", "chatprovd"), "--config", config],
                    stdout=err, stderr=err, env=env)
                try:
                    stack.produce(events)
                    results = stack.wait_results([e["id"] for e in events], timeout=60)
                    proc.terminate()
                    assert proc.wait(60) == 0
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            time.sleep(0.3)
    finally:
        journal.close()
    with open(stderr_path, "rb") as f:
        stderr = f.read().decode("utf-8", "replace")
    # Everything of chatprovd's own went to the journal, nothing to the stream.
    assert not own_lines(stderr), stderr
    entries = journal.entries
    assert any(e.get("MESSAGE", "").startswith("chatprovd ") and "started" in e["MESSAGE"]
               and e.get("PRIORITY") == "5" for e in entries), entries[:5]
    for e in entries:
        assert e["SYSLOG_IDENTIFIER"] == "chatprovd"
        assert all(v != "" for v in e.values()), e  # empty fields are left out
    for ev in events:
        r = results[ev["id"]]
        done = [e for e in entries if e.get("CHATPROV_REQUEST_ID") == ev["id"]
                and e["MESSAGE"].startswith("request succeeded")]
        assert len(done) == 1, [e for e in entries if "CHATPROV_REQUEST_ID" in e]
        d = done[0]
        assert d["PRIORITY"] == "6"
        assert d["CHATPROV_CHAT_ID"] == r["chat"]["id"]
        assert d["GRAPH_REQUEST_ID"] == r["graph"]["requestId"]
        assert d["GRAPH_CLIENT_REQUEST_ID"] == str(uuid.uuid5(CLIENT_REQUEST_ID_NS, ev["id"]))
        assert "request_id=" not in d["MESSAGE"]
    plain = [e for e in entries if "exiting with status 0" in e.get("MESSAGE", "")]
    assert plain and "CHATPROV_REQUEST_ID" not in plain[0] and "CHATPROV_CHAT_ID" not in plain[0]
