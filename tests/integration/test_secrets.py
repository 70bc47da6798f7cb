"""Secrets: the client secret and the access tokens never show up where they must not.

A run with a distinctive secret and debug logging; afterwards every daemon log line, the
results, the DLQ, /metrics, /healthz, /readyz, graph-sim's config output, --check-config's
output and chatprovd's /proc/<pid>/cmdline and /proc/<pid>/environ are searched for the
secret and for every access token graph-sim issued (its ledger's "issued_tokens").
"""

import re
import secrets
import subprocess
import time
import urllib.request

from stack import CLIENT_ID, DLQ, TENANT, Stack, build_path, group_event

FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3}


def distinctive_secret():
    # Long and unlike anything else in a log, so a partial leak of 24 bytes is still found.
    return "Sx~" + secrets.token_urlsafe(40) + "-leak-canary"


def sim_config(secret, **extra):
    config = dict(FAST_OPERATIONS, clients=[{"tenant": TENANT, "client_id": CLIENT_ID,
                                             "secret": secret}])
    config.update(extra)
    return config


def metrics_port(daemon, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(r"metrics on port (\d+)", daemon.log_text())
        if m:
            return int(m.group(1))
        time.sleep(0.1)
    raise AssertionError("no 'metrics on port N' line:\n" + daemon.log_text()[-2000:])


def http_get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:  # /readyz may be 503: its body still counts
        return e.read().decode("utf-8", "replace")


def proc_texts(pid):
    out = {}
    for name in ("cmdline", "environ"):
        with open("/proc/%d/%s" % (pid, name), "rb") as f:
            out["/proc/pid/" + name] = f.read().decode("utf-8", "replace")
    return out


def assert_absent(needles, haystacks):
    for label, text in haystacks.items():
        for what, needle in needles.items():
            # Any 16-byte window of the needle counts: a truncated leak is a leak.
            for i in range(0, max(1, len(needle) - 15), 8):
                assert needle[i:i + 16] not in text, "%s found in %s" % (what, label)


def write_secret(stack, secret):
    with open(stack.secret_path, "w") as f:
        f.write(secret + "\n")


def test_secret_and_tokens_never_leak(tmp_path):
    secret = distinctive_secret()
    # Short-lived tokens: several are issued and refreshed during the run.
    with Stack(tmp_path, sim_config=sim_config(secret, token_lifetime_s=4)) as stack:
        write_secret(stack, secret)
        daemon = stack.start_daemon(log={"level": "debug"})
        port = metrics_port(daemon)
        ids = []
        for second in range(6):
            batch = [group_event(second * 3 + k, app=(k == 0)) for k in range(3)]
            stack.produce(batch)
            ids += [e["id"] for e in batch]
            time.sleep(1)
        stack.produce([b'{"id":"not-json"'])  # a rejection goes to the DLQ
        results = stack.wait_results(ids + ["not-json"], timeout=60)
        assert all(results[i]["status"] == "succeeded" for i in ids)
        exposed = {"metrics": http_get(port, "/metrics"), "healthz": http_get(port, "/healthz"),
                   "readyz": http_get(port, "/readyz")}
        exposed.update(proc_texts(daemon.proc.pid))
        exposed["graph-sim config"] = stack.graph.request("GET", "/_sim/config").body
        ledger = stack.graph.ledger()
        dlq = stack.read_topic(DLQ)
        assert daemon.stop() == 0
        check = subprocess.run([build_path("daemon", "chatprovd"), "--check-config", "--config",
                                daemon.config_path], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr
        exposed["--check-config"] = (check.stdout + check.stderr).decode("utf-8", "replace")
        exposed["daemon log"] = daemon.log_text()
        exposed["results"] = "\n".join(repr(m) for m in stack.result_messages)
        exposed["dlq"] = "\n".join(repr((m.key(), m.value(), m.headers())) for m in dlq)
        with open(daemon.config_path) as f:
            exposed["config file"] = f.read()

    tokens = ledger["issued_tokens"]
    assert len(tokens) >= 2, "expected refreshed tokens, got %d" % len(tokens)
    assert ledger["token_grants"]["client_secret"] == len(tokens)
    assert "debug" in exposed["daemon log"]  # the most talkative level was really on
    needles = {"the client secret": secret}
    needles.update({"access token %d" % i: t for i, t in enumerate(tokens)})
    assert_absent(needles, exposed)


def test_wrong_secret_error_does_not_echo_it(tmp_path):
    """Entra refuses the secret: the error is clear and carries Entra's text, not the secret."""
    wrong = distinctive_secret()
    with Stack(tmp_path, sim_config=sim_config("the-right-one")) as stack:
        write_secret(stack, wrong)
        daemon = stack.start_daemon(log={"level": "debug"})
        port = metrics_port(daemon)
        deadline = time.time() + 20
        while "AADSTS7000215" not in daemon.log_text() and time.time() < deadline:
            time.sleep(0.2)
        log = daemon.log_text()
        exposed = {"metrics": http_get(port, "/metrics"), "readyz": http_get(port, "/readyz")}
        exposed.update(proc_texts(daemon.proc.pid))
        daemon.stop()
        exposed["daemon log"] = daemon.log_text()
    assert "AADSTS7000215" in log, log[-2000:]
    assert_absent({"the wrong secret": wrong}, exposed)
