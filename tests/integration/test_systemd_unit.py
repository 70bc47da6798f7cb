"""The shipped unit: `systemd-analyze verify` is clean and the security exposure is <= 1.1.

`verify` checks that ExecStart= names an executable and that Documentation= man pages exist.
Neither is installed on a build machine, so it runs on a copy of the unit in a temporary
directory whose ExecStart= points at the freshly built chatprovd (or /bin/true when the daemon
is not built), with MANPATH pointing at a man tree made from docs/man. Everything else in the
copy is byte-for-byte the shipped unit.
"""
import os
import re
import shutil
import subprocess

import pytest

SOURCE = os.environ.get(
    "CHATPROV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("CHATPROV_BUILD_DIR", "")
UNIT = os.path.join(SOURCE, "systemd", "chatprovd.service")
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 1.1

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def test_security_exposure():
    p = run([ANALYZE, "security", "--offline=yes", "--no-pager", UNIT])
    out = p.stdout + p.stderr
    m = re.search(r"Overall exposure level for chatprovd\.service: ([0-9]+\.[0-9])", out)
    assert m, out
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, out
    # An unknown or misplaced key is only a warning to `security`: make it a failure here.
    assert "Unknown key" not in out and "Unknown section" not in out, out


def test_security_threshold_gate():
    """--threshold makes systemd-analyze itself fail above the limit (what CI could call)."""
    p = run([ANALYZE, "security", "--offline=yes", "--no-pager",
             "--threshold=%d" % int(MAX_EXPOSURE * 10), UNIT])
    assert p.returncode == 0, p.stdout + p.stderr


def daemon_binary():
    if BUILD:
        path = os.path.join(BUILD, "daemon", "chatprovd")
        if os.access(path, os.X_OK):
            return path
    return "/bin/true"


def make_man_tree(root):
    for page, section in (("chatprovd.8", "8"), ("chatprovd.conf.5", "5")):
        src = os.path.join(SOURCE, "docs", "man", page)
        assert os.path.exists(src), src
        os.makedirs(os.path.join(root, "man" + section), exist_ok=True)
        shutil.copy(src, os.path.join(root, "man" + section, page))


def verify(tmp_path, text):
    """Runs verify on text as chatprovd.service; returns (exit code, output, problem lines)."""
    copy = tmp_path / "chatprovd.service"
    copy.write_text(text)
    man = tmp_path / "man"
    make_man_tree(str(man))
    env = dict(os.environ, MANPATH=str(man))
    p = run([ANALYZE, "verify", str(copy)], env=env)
    out = p.stdout + p.stderr
    # verify reports some problems (unknown keys, bad values) as warnings with exit code 0.
    return p.returncode, out, [line for line in out.splitlines() if "chatprovd.service" in line]


def shipped_unit(exe):
    with open(UNIT) as f:
        text = f.read()
    assert "ExecStart=/usr/sbin/chatprovd " in text
    return text.replace("ExecStart=/usr/sbin/chatprovd ", "ExecStart=%s " % exe)


def test_verify(tmp_path):
    rc, out, problems = verify(tmp_path, shipped_unit(daemon_binary()))
    assert rc == 0, out
    assert not problems, out


def test_verify_catches_a_bad_value(tmp_path):
    """The checks above can fail: a bad value is a problem line, a missing binary an error."""
    text = shipped_unit("/bin/true").replace("ProtectHome=yes", "ProtectHome=maybe")
    rc, out, problems = verify(tmp_path, text)
    assert any("ProtectHome" in line or "protect home" in line for line in problems), out
    rc, out, problems = verify(tmp_path, shipped_unit("/nonexistent/chatprovd"))
    assert rc != 0, out
