"""The unit's system call filter does not break chatprovd.

systemd is not running here, so tests/integration/seccomp_exec.c installs the seccomp
filters the unit asks for (SystemCallFilter=, SystemCallErrorNumber=,
SystemCallArchitectures=native, RestrictAddressFamilies=, MemoryDenyWriteExecute=) and execs
chatprovd. The allowed set is computed here from the unit file with systemd's own rules and
systemd-analyze's expansion of the groups, so a change to the unit changes the filter tested.
The demo workload then runs through the filtered daemon: documented examples, 202
operations, retries, an invalid event, a metrics scrape, SIGHUP and SIGTERM.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from stack import Daemon, Stack, build_path, group_event, source_path
from test_systemd_notify import NotifySocket

LAUNCHER = build_path("tests", "seccomp_exec")
UNIT = source_path("systemd", "chatprovd.service")
SIM = {"operation_in_progress_after_s": 0.2, "operation_done_after_s": 0.6,
       "fault_503_rate": 0.2, "fault_503_retry_after_s": 0.2}

pytestmark = [
    pytest.mark.skipif(not os.path.exists(LAUNCHER),
                       reason="seccomp_exec not built (libseccomp-dev missing: tools/install-deps)"),
    pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze missing"),
]


def unit_settings():
    """[Service] assignments of the unit, in order, as (key, value)."""
    out = []
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")) and "=" in line:
                key, value = line.split("=", 1)
                out.append((key.strip(), value.strip()))
    return out


_groups = {}


def expand(item):
    """A system call name, or every call of a @group (recursively), as systemd-analyze lists."""
    if not item.startswith("@"):
        return {item}
    if item not in _groups:
        text = subprocess.run(["systemd-analyze", "syscall-filter", item], check=True,
                              capture_output=True, text=True).stdout
        calls = set()
        for line in text.splitlines()[1:]:
            line = line.strip()
            if line and not line.startswith("#"):
                calls |= expand(line)
        assert calls, "empty group %s" % item
        _groups[item] = calls
    return _groups[item]


def allowed_syscalls():
    """SystemCallFilter= as systemd applies it: an allow list if the first assignment is one
    (then @default is always in it), later assignments add to it, "~" ones remove from it."""
    allowed = None
    for key, value in unit_settings():
        if key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        items = value.lstrip("~").split()
        assert allowed is not None or not deny, "the test models an allow-list unit"
        if allowed is None:
            allowed = set(expand("@default"))
        for item in items:
            allowed = allowed - expand(item) if deny else allowed | expand(item)
    assert allowed, "no SystemCallFilter= in the unit"
    return allowed


def test_filter_matches_unit(tmp_path):
    """The launcher models exactly what the unit sets; a denied call really fails."""
    settings = dict(unit_settings())
    assert settings["SystemCallErrorNumber"] == "EPERM"
    assert settings["SystemCallArchitectures"] == "native"
    assert sorted(settings["RestrictAddressFamilies"].split()) == ["AF_INET", "AF_INET6",
                                                                   "AF_UNIX"]
    assert settings["MemoryDenyWriteExecute"] == "yes"
    allowed = allowed_syscalls()
    for call in ("setpriority", "sched_setaffinity", "setrlimit", "setuid", "mount", "chown"):
        assert call not in allowed
    for call in ("clone3", "epoll_wait", "signalfd4", "prctl", "getrandom", "prlimit64",
                 "sendmsg", "accept4", "futex"):
        assert call in allowed
    listed = os.path.join(str(tmp_path), "allowed")
    with open(listed, "w") as f:
        f.write("\n".join(sorted(allowed)) + "\n")
    # Negative control: under the filter nice(1) cannot renice (@resources: EPERM) but runs on.
    r = subprocess.run([LAUNCHER, listed, "--", shutil.which("nice"), "-n", "1", "echo", "ran"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "ran\n", r
    assert "Operation not permitted" in r.stderr, r.stderr
    assert subprocess.run([shutil.which("nice"), "-n", "1", "true"],
                          capture_output=True, text=True).stderr == ""


class FilteredDaemon(Daemon):
    def __init__(self, config_path, log_path, allowed_path, env):
        super().__init__(config_path, log_path, env)
        self.allowed_path = allowed_path

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([LAUNCHER, self.allowed_path, "--",
                                      build_path("daemon", "chatprovd"), "--config",
                                      self.config_path],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        return self


def examples():
    with open(source_path("etc", "examples", "create-chat.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_demo_workload_under_filter(tmp_path, monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    allowed = os.path.join(str(tmp_path), "allowed")
    with open(allowed, "w") as f:
        f.write("\n".join(sorted(allowed_syscalls())) + "\n")
    env = {"NOTIFY_SOCKET": os.path.join(str(tmp_path), "notify.sock"),
           "WATCHDOG_USEC": "2000000"}
    # In the ASan build, LeakSanitizer's exit-time check stops the world with ptrace, which
    # the filter denies like the unit does: leaks are checked by every other test instead.
    if os.environ.get("ASAN_OPTIONS"):
        env["ASAN_OPTIONS"] = os.environ["ASAN_OPTIONS"] + ":detect_leaks=0"
    notify = NotifySocket(env["NOTIFY_SOCKET"])
    try:
        with Stack(tmp_path, sim_config=SIM) as stack:
            daemon = FilteredDaemon(stack.write_config(), os.path.join(str(tmp_path), "d.log"),
                                    allowed, env)
            stack.daemons.append(daemon.start())
            notify.wait_for("READY", "1", timeout=30)
            events = examples() + [group_event(i, app=(i % 5 == 0)) for i in range(40)]
            invalid = {"id": "invalid-under-filter", "chatType": "group", "members": []}
            stack.produce(events + [invalid])
            ids = [e["id"] for e in events] + [invalid["id"]]
            results = stack.wait_results(ids, timeout=90)
            port = int(daemon.log_text().split("metrics on port ")[1].split()[0])
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port) as r:
                assert b"chatprov_requests_total" in r.read()
            hup = time.monotonic()
            daemon.send(signal.SIGHUP)
            notify.wait_for("READY", "1", since=hup, timeout=10)
            assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.log_text()[-3000:]
            ledger = stack.graph.ledger()
    finally:
        notify.close()
    log = daemon.log_text()
    assert "seccomp_exec: " in log and "others EPERM" in log
    assert "Operation not permitted" not in log, log[-3000:]
    assert notify.with_field("WATCHDOG", "1")
    assert results[invalid["id"]]["status"] == "rejected"
    for e in events:
        assert results[e["id"]]["status"] == "succeeded", results[e["id"]]
    assert ledger["requests"]["POST /{version}/chats"].get("202", 0) >= 1
    assert ledger["requests"]["POST /{version}/chats"].get("503", 0) >= 1
    assert ledger["duplicate_group_chats"] == 0
