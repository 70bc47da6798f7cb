"""Hostile servers: graph-sim's hostile modes end to end (docs/graph-sim.md, "Hostile modes").

Each answer must be bounded in time and memory and turn into a sensible result; a 202 whose
Location names another host must never be followed (a listener of our own plays that host
and must receive nothing).
"""

import http.server
import threading
import time
import zlib

import pytest

from stack import Stack, group_event, one_on_one_event

FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3}
REQUEST_TIMEOUT_S = 4


class OtherHost:
    """A tiny HTTP listener on 127.0.0.1 that records every request it gets."""

    def __init__(self):
        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                seen.append((self.command, self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status":"succeeded"}')

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def events(tag, n_group=2, n_one=1, app=False):
    out = []
    for i in range(n_group):
        ev = group_event(i, app=app)
        ev["id"] = "%s-grp-%d" % (tag, i)
        out.append(ev)
    for i in range(n_one):
        base = (zlib.crc32(tag.encode()) % 100000) * 10
        ev = one_on_one_event(i, pair=(base + 2 * i, base + 2 * i + 1), app=app)
        ev["id"] = "%s-one-%d" % (tag, i)
        out.append(ev)
    return out


def run_mode(stack, mode, evs, timeout):
    stack.graph.config(hostile_mode=mode, hostile_rate=1)
    t0 = time.time()
    stack.produce(evs)
    results = stack.wait_results([e["id"] for e in evs], timeout=timeout)
    return results, time.time() - t0


def assert_failed_once(stack, results, code, status):
    posts = {}
    for p in stack.graph.ledger()["chat_posts"]:
        posts[p["clientRequestId"]] = posts.get(p["clientRequestId"], 0) + 1
    for r in results.values():
        assert r["status"] == "failed", r
        assert r["error"]["code"] == code, r
        assert r["error"]["retryable"] is False, r
        assert r["graph"]["httpStatus"] == status, r
        assert r["chat"] is None, r
        # The chat may exist: asking Graph again would risk a second one.
        assert posts[r["graph"]["clientRequestId"]] == 1, r


def test_hostile_graph_answers(tmp_path):
    other = OtherHost()
    try:
        with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
            stack.start_daemon(graph={"request_timeout_s": str(REQUEST_TIMEOUT_S)})
            pid = stack.daemon.proc.pid
            warm = events("warm")
            stack.produce(warm)
            stack.wait_results([e["id"] for e in warm], timeout=60)

            results, _ = run_mode(stack, "invalid_json_201", events("badjson"), 30)
            assert_failed_once(stack, results, "InvalidResponse", 201)

            results, _ = run_mode(stack, "201_without_id", events("noid"), 30)
            assert_failed_once(stack, results, "InvalidResponse", 201)
            for r in results.values():
                assert "id" in r["error"]["message"], r

            before = peak_rss_kib(pid)
            results, took = run_mode(stack, "oversized_body", events("big"), 30)
            grew_mib = (peak_rss_kib(pid) - before) / 1024
            assert_failed_once(stack, results, "InvalidResponse", 201)
            # 20 MiB bodies, three at once: only max_response_bytes (1 MiB) of each is kept.
            assert grew_mib < 16, "peak RSS grew by %.1f MiB" % grew_mib

            results, took = run_mode(stack, "endless_body", events("endless"), 30)
            assert_failed_once(stack, results, "InvalidResponse", 201)
            assert took < REQUEST_TIMEOUT_S + 10

            stack.graph.config(foreign_location_root="http://127.0.0.1:%d/beta" % other.port)
            results, _ = run_mode(stack, "foreign_location", events("foreign", app=True), 30)
            assert_failed_once(stack, results, "InvalidLocation", 202)
            ledger = stack.graph.ledger()

            stack.graph.config(hostile_mode="none")
            after = events("after")
            stack.produce(after)
            done = stack.wait_results([e["id"] for e in after], timeout=60)
            assert all(r["status"] == "succeeded" for r in done.values())
            assert stack.daemon.alive()
            assert stack.daemon.stop() == 0, stack.daemon.log_text()[-3000:]
    finally:
        other.close()
    assert other.requests == [], "a request followed a Location to another host"
    assert ledger["duplicate_group_chats"] == 0
    # The operations behind the foreign Locations were never polled anywhere.
    foreign_ops = [o for o in ledger["operations"] if o["polls"] == []]
    assert len(foreign_ops) >= 3


def test_retry_after_of_a_year_is_bounded(tmp_path):
    with Stack(tmp_path, sim_config=dict(FAST_OPERATIONS, hostile_mode="retry_after_year",
                                         hostile_rate=1)) as stack:
        stack.start_daemon(retry={"max_elapsed_s": "5", "max_delay_s": "1"})
        evs = events("year", n_group=1, n_one=0)
        stack.produce(evs)
        results = stack.wait_results([e["id"] for e in evs], timeout=25)
        r = results[evs[0]["id"]]
        assert r["status"] == "failed" and r["error"]["code"] == "TooManyRequests", r
        assert r["error"]["retryable"] is True
        assert stack.daemon.stop() == 0
