"""SIGHUP reloads: the reloadable keys reach every thread that reads them, and a reload costs
no memory that stays (issue 13, item 15).

- `[operations] timeout_s` is read by the Kafka thread when it resumes a 202 operation
  recorded in the state topic: a reload that lengthens it must apply to the next resume.
- `[recovery] state_retention_s` is read by the Kafka thread at each restore, `[limits]
  window_s` by the metrics thread at each scrape: both must follow a reload.
- Every reload loads a new configuration (about 800 KB): the replaced one must be freed, not
  kept until exit, so a daemon reloaded by a config-management loop does not grow.
"""

import json
import os
import re
import signal
import time
import urllib.request

from confluent_kafka import Producer

from graphsim import chat_body
from stack import CLIENT_ID, SECRET, STATE, TENANT, Stack, group_event

APP = "05F59CEC-A742-4A50-A62E-202A57E478A4"


def wait_log_count(daemon, text, count, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.log_text().count(text) >= count:
            return
        assert daemon.alive(), daemon.log_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError("%r not logged %d times:\n%s" % (text, count, daemon.log_text()[-3000:]))


def vm_data_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^VmData:\s+(\d+) kB", f.read(), re.M).group(1))


def reload_with(stack, daemon, count, **overrides):
    stack.write_config(**overrides)
    daemon.send(signal.SIGHUP)
    wait_log_count(daemon, "[notice] reloaded", count)


def test_reload_reaches_the_operation_timeout_of_resumed_operations(tmp_path):
    sim = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 15}
    with Stack(tmp_path, partitions=1, sim_config=sim) as stack:
        # A 202 operation started two minutes ago by an instance that then died: Graph has it,
        # the state topic records it.
        event = group_event(1, app=True)
        users = [m["userId"] for m in event["members"]]
        token = stack.graph.token(tenant=TENANT, client_id=CLIENT_ID, secret=SECRET)
        answer = stack.graph.post_chat(chat_body("group", users, event["topic"], apps=[APP],
                                                 version="beta"), token, version="beta")
        assert answer.status == 202, answer
        location = stack.graph.url + "/beta" + answer.headers["location"]
        started = int(time.time() * 1000) - 120 * 1000
        producer = Producer({"bootstrap.servers": stack.kafka.bootstrap})
        producer.produce(STATE, key=event["id"].encode(), partition=0,
                         value=json.dumps({"location": location, "startedAt": started}).encode(),
                         headers=[("chatprov-state", b"operation")])
        producer.flush(10)

        # Started with a 60 s operation timeout (past for that operation), reloaded with 600 s.
        daemon = stack.start_daemon()
        wait_log_count(daemon, "ready: group joined", 1)
        reload_with(stack, daemon, 1, operations={"poll_interval_s": "0.2", "timeout_s": "600"})

        stack.produce([event], partition=0)
        result = stack.wait_results([event["id"]], timeout=60)[event["id"]]
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        ledger = stack.graph.ledger()
    assert result["status"] == "succeeded", result
    assert result["chat"]["id"].startswith("19:"), result
    assert len(ledger["chat_posts"]) == 1, "the operation was not resumed: POSTed again"


def test_reload_frees_the_configuration_it_replaces(tmp_path):
    reloads = 20
    # Under ASan (CI's sanitizer pass) freed memory sits in a quarantine: turn it off, so
    # what is freed is given back as it is without the sanitizer.
    asan = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=0"]))
    with Stack(tmp_path) as stack:
        daemon = stack.start_daemon(env={"ASAN_OPTIONS": asan})
        wait_log_count(daemon, "ready: group joined", 1)
        reload_with(stack, daemon, 1, log={"level": "info"})
        before = vm_data_kb(daemon.proc.pid)
        for i in range(2, reloads + 2):
            reload_with(stack, daemon, i, retry={"max_attempts": str(i)})
        grown = vm_data_kb(daemon.proc.pid) - before
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
    # A configuration is ~800 KB: keeping 20 would add ~16 MB. Allow for allocator noise.
    assert grown < 4096, "VmData grew by %d kB over %d reloads" % (grown, reloads)


def send_rate(port):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read()
    m = re.search(rb'^chatprov_send_rate_per_second\{tenant="default"\} (\S+)$', body, re.M)
    assert m, body[-2000:]
    return float(m.group(1))


def test_reload_reaches_the_rate_window_of_the_metrics(tmp_path):
    """[limits] window_s turns the scheduler's rate per window into the exported rate per
    second: after a reload that doubles the window, the same limit is half the rate."""
    with Stack(tmp_path) as stack:
        daemon = stack.start_daemon()
        wait_log_count(daemon, "ready: group joined", 1)
        port = int(re.search(r"metrics on port (\d+)", daemon.log_text()).group(1))
        before = send_rate(port)
        reload_with(stack, daemon, 1, limits={"window_s": "20",
                                              "chat_creates_per_10s_per_tenant": "10000",
                                              "chat_creates_per_10s_global": "100000"})
        after = send_rate(port)
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
    assert before > 0
    assert abs(after - before / 2) < before * 0.01, (before, after)


def test_reload_reaches_the_state_retention_of_restores(tmp_path):
    """[recovery] state_retention_s decides, at each restore, which requests are past
    retention (and tombstoned). Reloaded to an hour, the next restore of a partition drops
    records two hours old that the start-up restore, with a week, kept."""
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    with Stack(tmp_path) as stack:
        producer = Producer({"bootstrap.servers": stack.kafka.bootstrap})
        ids = []
        for partition in range(stack.partitions):
            rid = "old-%d" % partition
            ids.append(rid)
            producer.produce(STATE, key=rid.encode(), partition=partition, timestamp=two_hours_ago,
                             value=json.dumps({"id": rid, "status": "succeeded"}).encode(),
                             headers=[("chatprov-state", b"done"),
                                      ("chatprov-status", b"succeeded")])
        producer.flush(10)
        first = stack.start_daemon()
        wait_log_count(first, "ready: group joined", 1)
        reload_with(stack, first, 1, recovery={"state_retention_s": "3600"})
        assert not [m for m in stack.read_topic(STATE) if m.value() is None]

        # A second instance (a week of retention) takes some partitions and leaves: they come
        # back to the first one, which restores them again, now with an hour.
        second = stack.start_daemon(config_path=stack.write_config(name="second.conf"))
        wait_log_count(second, "assigned chat.requests", 1, timeout=60)
        assert second.stop() == 0, second.log_text()[-3000:]
        deadline = time.monotonic() + 30
        tombstoned = []
        while not tombstoned and time.monotonic() < deadline:
            tombstoned = [m.key().decode() for m in stack.read_topic(STATE, timeout=1)
                          if m.value() is None]
        assert first.stop() == 0, first.log_text()[-3000:]
    assert tombstoned and set(tombstoned) <= set(ids), tombstoned
