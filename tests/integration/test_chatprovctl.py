"""chatprovctl against the local stack: plan prints what Graph then receives, plan's ETA is the
drain time of a throttled backlog, status shows a backlog draining, --watch redraws in a
terminal, redrive copies DLQ records back (filters, --dry-run, twice is harmless)."""

import json
import os
import pty
import random
import re
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

import pytest

from stack import (CLIENT_ID, DLQ, INPUT, SECRET, TENANT, Stack, build_path, group_event,
                   one_on_one_event, source_path)

CTL = build_path("daemon", "chatprovctl")


def ctl(config, *args, stdin=None, timeout=120):
    return subprocess.run([CTL, "--config", config] + list(args), input=stdin,
                          capture_output=True, timeout=timeout)


def plan_lines(proc):
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    return lines[:-1], lines[-1]["summary"]


def examples():
    with open(source_path("etc", "examples", "create-chat.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def generated_mix(n, seed=11):
    """Group chats (apps, guests, federated members, UPNs, quotes), distinct one-on-one
    pairs and invalid events."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.1:
            ev = one_on_one_event(10000 + i)
            ev["id"] = "plan-bad-%d" % i
            ev["members"].append({"userId": str(uuid.UUID(int=rng.getrandbits(128)))})
        elif roll < 0.6:
            ev = group_event(10000 + i, members=2 + i % 6, app=(i % 5 == 0),
                             topic="Welcome O'Brien \u00e9 \"%d\" / #%d" % (i, i))
            ev["members"][0]["roles"] = ["owner"]
            if i % 3 == 0:
                ev["members"][1]["roles"] = ["guest"]
            if i % 4 == 0:
                ev["members"][-1]["tenantId"] = str(uuid.UUID(int=i + (7 << 120)))
            if i % 7 == 0:
                ev["members"].append({"userId": "o'neil.%d@contoso.com" % i})
        else:
            ev = one_on_one_event(20000 + 2 * i, pair=(20000 + 2 * i, 20001 + 2 * i),
                                  app=(i % 4 == 0))
            ev["id"] = "plan-one-%d" % i
        events.append(ev)
    return events


def write_events(tmp_path, events, name="events.jsonl"):
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")
    return path


def test_plan_requests_are_what_graph_receives(tmp_path):
    """The six documented examples and a generated mix: every body, URL and client-request-id
    plan prints is what graph-sim receives from chatprovd; rejections match."""
    events = examples() + generated_mix(120)
    with Stack(tmp_path, sim_config={"operation_in_progress_after_s": 0.1,
                                     "operation_done_after_s": 0.3}) as stack:
        config = stack.write_config()
        proc = ctl(config, "plan", write_events(tmp_path, events))
        lines, summary = plan_lines(proc)
        stack.start_daemon(config)
        stack.produce(events)
        results = stack.wait_results([e["id"] for e in events], timeout=120)
        ledger = stack.graph.ledger()
        assert stack.daemon.stop() == 0

    assert len(lines) == len(events)
    rejected = [line for line in lines if line["status"] == "rejected"]
    assert proc.returncode == (1 if rejected else 0), proc.stderr
    assert summary["events"] == len(events)
    assert summary["valid"] + summary["rejected"] == len(events)
    bodies = {c["clientRequestId"]: c["body"] for c in ledger["chats"]}
    posted = {p["clientRequestId"] for p in ledger["chat_posts"]}
    compared = 0
    for n, (event, line) in enumerate(zip(events, lines), start=1):
        assert line["line"] == n and line["id"] == event["id"]
        result = results[event["id"]]
        if line["status"] == "rejected":
            assert result["status"] == "rejected", (line, result)
            assert line["reason"] == result["error"]["message"]
            continue
        assert result["status"] == "succeeded", result
        request = line["request"]
        assert request["method"] == "POST"
        assert request["url"] == stack.graph.url + "/beta/chats"
        crid = request["headers"]["client-request-id"]
        assert crid == result["graph"]["clientRequestId"] and crid in posted
        if crid in bodies:  # one-on-one dedup: a repeated pair creates no second chat
            assert bodies[crid] == request["body"], event["id"]
            compared += 1
    assert rejected and compared >= len(events) - len(rejected) - 2


FAB_TENANT = "fabrikam.onmicrosoft.com"
FAB_CLIENT = "00000000-0000-0000-0000-0000000000fa"

# (events of default, events of fabrikam, [limits], fabrikam's limit, plan's ETA)
DRAINS = {
    # 4 at once (slow start), 196 at 20/s.
    "one tenant": (200, 0, {"chat_creates_per_10s_per_tenant": "20",
                            "chat_creates_per_10s_global": "200"}, None, 9.8),
    # The global 24/s binds: fabrikam keeps its 10/s (4 at once, 76 at 10/s: 7.6 s), default
    # gets the rest and saves tokens (up to 20) until fabrikam is done, then spends them at
    # 24/s.
    "global binds": (160, 80, {"chat_creates_per_10s_per_tenant": "20",
                               "chat_creates_per_10s_global": "24"}, "10", 9.0),
}


@pytest.mark.parametrize("case", sorted(DRAINS))
def test_plan_eta_is_the_drain_time(tmp_path, case):
    """A throttled backlog (window 1 s, graph-sim a little above the limits): plan's ETA is
    within 10 % of the time from the first POST to the last."""
    n_default, n_fab, limits, fab_limit, expected = DRAINS[case]
    events = [group_event(i, topic="Drain %d" % i) for i in range(n_default)]
    events += [dict(group_event(1000 + i, topic="Drain fab %d" % i), tenant="fabrikam")
               for i in range(n_fab)]
    random.Random(3).shuffle(events)
    sim = {"limit_per_tenant": 25, "limit_window_s": 1,
           "clients": [{"tenant": TENANT, "client_id": CLIENT_ID, "secret": SECRET},
                       {"tenant": FAB_TENANT, "client_id": FAB_CLIENT, "secret": "fab"}]}
    secret = os.path.join(str(tmp_path), "fab-secret")
    with open(secret, "w") as f:
        f.write("fab\n")
    overrides = {"limits": dict(limits, window_s="1")}
    if fab_limit:
        overrides["tenant.fabrikam"] = {"tenant_id": FAB_TENANT, "client_id": FAB_CLIENT,
                                        "client_secret_file": secret,
                                        "chat_creates_per_10s_per_tenant": fab_limit}
    with Stack(tmp_path, sim_config=sim) as stack:
        port = free_port()
        config = stack.write_config(metrics={"listen": "127.0.0.1:%d" % port}, **overrides)
        proc = ctl(config, "plan", write_events(tmp_path, events))
        _, summary = plan_lines(proc)
        stack.start_daemon(config)
        wait_ready(port)
        time.sleep(1.5)  # the buckets fill while idle, as plan assumes
        stack.produce(events)
        stack.wait_results([e["id"] for e in events], timeout=120)
        ledger = stack.graph.ledger()
        assert stack.daemon.stop() == 0

    assert proc.returncode == 0, proc.stderr
    eta = summary["etaSeconds"]
    assert abs(eta - expected) < 0.05, summary
    assert summary["tenants"]["default"]["chats"] == n_default
    if n_fab:
        assert summary["tenants"]["fabrikam"] == {"chats": n_fab, "etaSeconds": 7.6}
    at = sorted(p["at"] for p in ledger["chat_posts"] if p["status"] in (201, 202))
    assert len(at) == len(events) and all(p["status"] != 429 for p in ledger["chat_posts"])
    drain = (at[-1] - at[0]) / 1000.0
    print("%s: plan ETA %.1f s, measured drain %.2f s" % (case, eta, drain))
    assert abs(drain - eta) <= 0.1 * eta, (drain, eta)


def wait_ready(port, timeout=45.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("chatprovd never ready on port %d" % port)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STATUS_LINE = re.compile(r"backlog (\d+) events \(group lag (\w+)\), ([\d.]+)/s, ETA (.+)")


def seconds(text):
    total = 0
    for value, unit in re.findall(r"(\d+)([hms])", text):
        total += int(value) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def throttled_backlog(stack, n=150, rate="10"):
    port = free_port()
    limits = {"chat_creates_per_10s_per_tenant": rate, "window_s": "1"}
    config = stack.write_config(limits=limits, metrics={"listen": "127.0.0.1:%d" % port})
    stack.start_daemon(config)
    wait_ready(port)
    stack.produce([group_event(i, topic="Status %d" % i) for i in range(n)])
    return config, ["grp-%06d" % i for i in range(n)]


def test_status_shows_a_draining_backlog(tmp_path):
    """A backlog at 10/s: status shows the tenant's rate and an ETA that falls."""
    with Stack(tmp_path) as stack:
        config, ids = throttled_backlog(stack)
        time.sleep(2)
        first = ctl(config, "status")
        time.sleep(3)
        second = ctl(config, "status")
        stack.wait_results(ids, timeout=120)
        time.sleep(2)  # the last offsets are committed
        last = ctl(config, "status")
        assert stack.daemon.stop() == 0

    looks = []
    for proc in (first, second, last):
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout.decode()
        m = STATUS_LINE.search(text)
        assert m, text
        looks.append((int(m.group(1)), float(m.group(3)), seconds(m.group(4)), text))
    (b1, r1, e1, t1), (b2, r2, e2, _), (b3, _, e3, t3) = looks
    assert 0 < b2 < b1 and 0 < e2 < e1, (looks[0][3], looks[1][3])
    assert 7 <= r1 <= 13 and 7 <= r2 <= 13, t1
    # The tenant's row: done so far, queued, the allowed rate of 10/s, its own ETA.
    row = re.search(r"^default\s+(\d+)\s+0\s+0\s+(\d+)\s+0\s+([\d.]+)\s+([\d.]+)\s+(.+)$", t1,
                    re.M)
    assert row and float(row.group(4)) == 10.0, t1
    assert b3 == 0 and e3 == 0 and re.search(r"^default\s+150\s", t3, re.M), t3


def test_status_without_a_daemon_reports_failure(tmp_path):
    with Stack(tmp_path) as stack:
        config = stack.write_config(metrics={"listen": "127.0.0.1:%d" % free_port()})
        proc = ctl(config, "status")
        assert proc.returncode == 1 and b"/metrics" in proc.stderr
        zero = stack.write_config(name="zero.conf")  # port 0: no address to read
        proc = ctl(zero, "status")
        assert proc.returncode == 1 and b"port 0" in proc.stderr


def read_all(fd, proc, timeout):
    out = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_watch_redraws_in_a_terminal_and_prints_lines_in_a_pipe(tmp_path):
    with Stack(tmp_path) as stack:
        config, ids = throttled_backlog(stack, n=60, rate="15")
        master, slave = pty.openpty()
        tty = subprocess.Popen([CTL, "--config", config, "status", "--watch", "--interval",
                                "0.5"], stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        piped = subprocess.Popen([CTL, "--config", config, "status", "--watch", "--interval",
                                  "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        screen = read_all(master, tty, 90)
        assert tty.wait(timeout=30) == 0, tty.stderr.read()
        plain, err = piped.communicate(timeout=90)
        assert piped.returncode == 0, err
        stack.wait_results(ids, timeout=60)
        os.close(master)

    text = screen.decode()
    assert text.count("\x1b[H\x1b[2J") >= 3, text[-2000:]
    frames = text.split("\x1b[H\x1b[2J")[1:]
    assert "PROGRESS" in frames[0] and re.search(r"\[#*\.+\]", frames[0]), frames[0]
    assert re.search(r"\[#{30}\] 60 of 60", frames[-1]) and "backlog drained" in frames[-1]
    lines = plain.decode().splitlines()
    assert "\x1b" not in plain.decode() and lines[-1] == "backlog drained"
    backlogs = [int(re.search(r"backlog (\d+)", line).group(1)) for line in lines[:-1]]
    assert len(backlogs) >= 3 and backlogs[-1] == 0 and max(backlogs) > 0


# ---- redrive ----

def dlq_record(ev, status, code=None, extra=(), http=None):
    headers = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    headers += list(extra)
    if status == "rejected-legacy":  # what today's daemon writes for a rejected event
        headers.append(("chatprov-reject-reason", b"members: missing"))
    else:
        headers.append(("chatprov-status", status.encode()))
        headers.append(("chatprov-error-code", code.encode()))
        headers.append(("chatprov-error-message", b"Graph said no"))
        if http:
            headers.append(("chatprov-http-status", str(http).encode()))
    headers += [("chatprov-source-topic", INPUT.encode()), ("chatprov-source-partition", b"0"),
                ("chatprov-source-offset", b"42")]
    return ev, headers


def produce_dlq(stack, records, timestamp=None):
    producer = Producer({"bootstrap.servers": stack.kafka.bootstrap})
    for ev, headers in records:
        kwargs = {"timestamp": timestamp} if timestamp else {}
        producer.produce(DLQ, key=ev["id"].encode(), value=json.dumps(ev).encode(),
                         headers=headers, **kwargs)
    assert producer.flush(30) == 0


def input_messages(stack):
    return stack.read_topic(INPUT, timeout=3.0)


def moved_ids(proc):
    return sorted(re.findall(r"^moved \S+ \[\d+\] @\d+ key (\S+)$", proc.stdout.decode(), re.M))


def test_redrive_filters_and_dry_run(tmp_path):
    failed = [dlq_record(dict(group_event(i), tenant="fabrikam" if i % 2 else None), "failed",
                         "Forbidden" if i < 6 else "NotFound", http=403 if i < 6 else 404)
              for i in range(10)]
    for ev, _ in failed:
        if ev["tenant"] is None:
            del ev["tenant"]
    rejected = [dlq_record({"id": "rej-%d" % i, "chatType": "group"}, "rejected-legacy")
                for i in range(3)]
    old = [dlq_record(group_event(100 + i), "failed", "Forbidden") for i in range(2)]
    with Stack(tmp_path) as stack:
        config = stack.write_config()
        produce_dlq(stack, old, timestamp=int(time.time() * 1000) - 3600 * 1000)
        produce_dlq(stack, failed + rejected)
        dry = ctl(config, "redrive", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert input_messages(stack) == []
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
        by_code = ctl(config, "redrive", "--code", "Forbidden", "--since", since)
        after_code = input_messages(stack)
        by_tenant = ctl(config, "redrive", "--tenant", "fabrikam", "--code", "NotFound",
                        "--dry-run")
        by_status = ctl(config, "redrive", "--status", "rejected", "--limit", "2")
        dlq_after = stack.read_topic(DLQ, timeout=2.0)

    assert re.search(r"would move 12 records from chat.dlq to chat.requests", dry.stdout.decode())
    assert by_code.returncode == 0, by_code.stderr
    forbidden_recent = sorted(ev["id"] for ev, _ in failed[:6])
    assert moved_ids(by_code) == forbidden_recent
    assert "moved 6 records" in by_code.stdout.decode()
    originals = {ev["id"]: (ev, h) for ev, h in failed}
    assert sorted(m.key().decode() for m in after_code) == forbidden_recent
    for m in after_code:
        ev, headers = originals[m.key().decode()]
        assert m.value() == json.dumps(ev).encode()  # byte for byte
        assert m.headers() == [h for h in headers if not h[0].startswith("chatprov-")]
    assert "would move 2 records" in by_tenant.stdout.decode()  # fabrikam: i = 7, 9
    assert len(moved_ids(by_status)) == 2 and all(i.startswith("rej-")
                                                  for i in moved_ids(by_status))
    assert len(dlq_after) == 15  # the DLQ is read, never consumed away


def test_redrive_twice_is_harmless(tmp_path):
    """Failed requests re-driven twice with a daemon running: every id succeeds, each group
    chat is created once."""
    records = [dlq_record(group_event(i, topic="Redrive %d" % i), "failed", "Forbidden",
                          http=403) for i in range(30)]
    with Stack(tmp_path) as stack:
        config = stack.write_config()
        stack.start_daemon(config)
        produce_dlq(stack, records)
        first = ctl(config, "redrive", "--code", "Forbidden")
        results = stack.wait_results([ev["id"] for ev, _ in records], timeout=60)
        second = ctl(config, "redrive", "--code", "Forbidden")
        deadline = time.time() + 30
        while time.time() < deadline and sum(len(v) for v in stack.results.values()) < 60:
            stack.read_results(timeout=0.5)
        ledger = stack.graph.ledger()
        assert stack.daemon.stop() == 0

    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert len(moved_ids(first)) == 30 and len(moved_ids(second)) == 30
    assert all(r["status"] == "succeeded" for r in results.values())
    for ev, _ in records:
        copies = stack.results[ev["id"]]
        assert len(copies) == 2 and len({c["chat"]["id"] for c in copies}) == 1
    assert len(ledger["chats"]) == 30 and ledger["duplicate_group_chats"] == 0


def test_plan_from_topic_reads_what_waits_without_committing(tmp_path):
    first = [group_event(i) for i in range(10)]
    waiting = [group_event(100 + i) for i in range(5)] + [{"id": "waiting-bad"}]
    with Stack(tmp_path) as stack:
        config = stack.write_config()
        stack.start_daemon(config)
        stack.produce(first)
        stack.wait_results([e["id"] for e in first])
        assert stack.daemon.stop() == 0
        stack.produce(waiting)
        before = committed(stack)
        proc = ctl(config, "plan", "--from-topic")
        again = ctl(config, "plan", "--from-topic", "--format", "text")
        after = committed(stack)

    lines, summary = plan_lines(proc)
    assert proc.returncode == 1  # one of them is invalid
    assert sorted(line["id"] for line in lines) == sorted(e["id"] for e in waiting)
    assert all("partition" in line and "offset" in line for line in lines)
    assert summary["valid"] == 5 and summary["rejected"] == 1
    assert before == after and sum(before) == 10
    assert "waiting-bad" in again.stdout.decode() and "all " in again.stdout.decode()


def committed(stack):
    c = Consumer({"bootstrap.servers": stack.kafka.bootstrap, "group.id": "chatprovd-test"})
    parts = [TopicPartition(INPUT, p) for p in range(stack.partitions)]
    offsets = [tp.offset if tp.offset >= 0 else 0 for tp in c.committed(parts, timeout=10)]
    c.close()
    return offsets


def test_usage_and_failures_exit_codes(tmp_path):
    config = os.path.join(str(tmp_path), "missing.conf")
    assert subprocess.run([CTL], capture_output=True).returncode == 2
    assert subprocess.run([CTL, "frobnicate"], capture_output=True).returncode == 2
    assert ctl(config, "plan", "--format", "xml").returncode == 2
    assert ctl(config, "redrive", "--status", "succeeded").returncode == 2
    assert ctl(config, "redrive", "--since", "yesterday").returncode == 2
    assert ctl(config, "redrive", "--limit", "0").returncode == 2
    assert ctl(config, "status", "extra").returncode == 2
    assert ctl(config, "plan", "-").returncode == 1  # the configuration cannot be read
    assert subprocess.run([CTL, "--version"], capture_output=True).returncode == 0


STATUS_ETA = re.compile(r"backlog (\d+), ETA ([^,]+)")


def test_daemon_status_line_and_metrics_show_the_backlog_eta(tmp_path, monkeypatch):
    """STATUS= and chatprov_backlog_* under a throttled backlog: an ETA that falls to 0."""
    from test_systemd_notify import NotifySocket
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify = NotifySocket(os.path.join(str(tmp_path), "notify.sock"))
    try:
        with Stack(tmp_path) as stack:
            port = free_port()
            limits = {"chat_creates_per_10s_per_tenant": "10", "window_s": "1"}
            config = stack.write_config(limits=limits,
                                        metrics={"listen": "127.0.0.1:%d" % port})
            stack.start_daemon(config, env={"NOTIFY_SOCKET": notify.path})
            wait_ready(port)
            ids = ["grp-%06d" % i for i in range(80)]
            stack.produce([group_event(i) for i in range(80)])
            time.sleep(2)
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port) as r:
                metrics = r.read().decode()
            stack.wait_results(ids, timeout=60)
            time.sleep(1.5)
            assert stack.daemon.stop() == 0
    finally:
        notify.close()

    looks = [(int(m.group(1)), seconds(m.group(2)), s) for s in notify.statuses()
             for m in [STATUS_ETA.search(s)] if m]
    busy = [(b, e) for b, e, _ in looks if b > 0]
    assert len(busy) >= 3, [s for _, _, s in looks]
    # The first lines may come while the 80 events are still being read (backlog 40, then
    # 67): the ETA peaks once they all are (80 at 10/s: about 8 s), then falls.
    peak = max(e for _, e in busy)
    assert peak >= 5 and busy[-1][1] < peak, busy
    assert looks[-1][0] == 0 and looks[-1][1] == 0
    total = re.search(r'^chatprov_backlog_eta_seconds\{tenant=""\} (\S+)$', metrics, re.M)
    tenant = re.search(r'^chatprov_backlog_events\{tenant="default"\} (\S+)$', metrics, re.M)
    assert total and 2 <= float(total.group(1)) <= 9, metrics
    assert tenant and float(tenant.group(1)) > 0
