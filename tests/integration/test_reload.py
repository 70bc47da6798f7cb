"""SIGHUP reloads: the reloadable keys reach every thread that reads them, and a reload costs
no memory that stays (issue 13, item 15).

- `[operations] timeout_s` is read by the Kafka thread when it resumes a 202 operation
  recorded in the state topic: a reload that lengthens it must apply to the next resume.
- Every reload loads a new configuration (about 800 KB): the replaced one must be freed, not
  kept until exit, so a daemon reloaded by a config-management loop does not grow.
"""

import json
import os
import re
import signal
import time

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
