"""/metrics, /healthz and /readyz of a running chatprovd, checked against graph-sim's ledger.

The endpoint is scraped during and after a run with throttling, 503s, an unknown user, an
invalid event, 202 operations and short-lived tokens, parsed with prometheus_client's
text-format parser, and every counter is compared with what graph-sim received.
"""

import re
import signal
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from stack import Stack, group_event

UNKNOWN_USER = "7e0e2d8e-0000-4000-8000-00000000dead"
SIM = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3,
       # Graph's throttling, tightened: the daemon's own limits are lifted by the stack.
       "limit_per_tenant": 15, "limit_global": 1000, "limit_window_s": 1,
       "fault_503_rate": 0.1, "fault_503_retry_after_s": 0.2,
       "token_lifetime_s": 4, "unknown_users": [UNKNOWN_USER],
       "token_fault_503_rate": 1.0}


def metrics_port(daemon, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"metrics on port (\d+)", daemon.log_text())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("no metrics port logged:\n" + daemon.log_text()[-2000:])


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Scrape:
    def __init__(self, port):
        status, text = get(port, "/metrics")
        assert status == 200, text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for fam in self.families.values():
            for s in fam.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name, **labels):
        return self.samples.get((name, tuple(sorted(labels.items()))), 0)

    def by_label(self, name, label, **fixed):
        out = {}
        for (n, labels), v in self.samples.items():
            d = dict(labels)
            if n == name and all(d.get(k) == v2 for k, v2 in fixed.items()):
                out[d[label]] = v
        return out


def wait_ready(port, timeout=45.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get(port, "/readyz")[0] == 200:
            return
        time.sleep(0.1)
    raise AssertionError("/readyz never 200: %r" % (get(port, "/readyz"),))


def graph_ledger_codes(ledger):
    """Graph answers by status, every route but the token endpoints (0 = no answer)."""
    codes = {}
    for route, by_status in ledger["requests"].items():
        if "oauth2" in route or "metadata/identity" in route:
            continue
        for status, n in by_status.items():
            code = "0" if status in ("reset", "hang") else status
            codes[code] = codes.get(code, 0) + n
    return codes


def test_metrics_match_ledger(tmp_path):
    events = [group_event(i, app=(i % 10 == 0)) for i in range(120)]
    events.append({"id": "unknown-user", "chatType": "group", "topic": "t",
                   "members": [{"userId": UNKNOWN_USER}, {"userId": events[0]["members"][0]
                                                         ["userId"]}]})
    invalid = {"id": "invalid-1", "chatType": "oneOnOne", "topic": "no topic on 1:1",
               "members": []}
    with Stack(tmp_path, sim_config=SIM) as stack:
        daemon = stack.start_daemon(retry={"max_attempts": "20", "base_delay_s": "0.05",
                                           "max_delay_s": "0.5", "not_found_s": "0"})
        port = metrics_port(daemon)
        # Before a token is held: alive, not ready.
        assert get(port, "/healthz") == (200, "ok\n")
        time.sleep(1.5)
        status, body = get(port, "/readyz")
        assert status == 503 and "not ready" in body, (status, body)
        early = Scrape(port)
        assert early.value("chatprov_token_failures_total", tenant="default") >= 1
        stack.graph.config(token_fault_503_rate=0)
        wait_ready(port)
        assert get(port, "/readyz")[1].startswith("ready")

        stack.produce(events + [invalid])
        # Scrapes during the run parse, and counters only grow.
        previous, during = early, 0
        ids = [e["id"] for e in events] + ["invalid-1"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            stack.read_results(timeout=0.3)
            scrape = Scrape(port)
            during += 1
            for key, v in previous.samples.items():
                if key[0].endswith(("_total", "_count", "_bucket")):
                    assert scrape.samples.get(key, 0) >= v, key
            previous = scrape
            if set(ids) <= set(stack.results):
                break
        results = stack.wait_results(ids, timeout=5)
        time.sleep(0.5)  # the last results' counters are updated before they are published
        ledger = stack.graph.ledger()
        after = Scrape(port)
        # Tokens refresh in the background: one may be granted between the two reads.
        grants_by_then = stack.graph.ledger()["token_grants"]["client_secret"]

        # /readyz turns 503 "stopping" as soon as the drain starts: hold a request in flight.
        stack.graph.config(latency_ms=3000)
        stack.produce([group_event(1000)])
        deadline = time.monotonic() + 10
        while Scrape(port).value("chatprov_in_flight_requests") < 1:
            assert time.monotonic() < deadline, "the slow request never got in flight"
            time.sleep(0.05)
        daemon.send(signal.SIGTERM)
        deadline = time.monotonic() + 2.5
        stopping = None
        while time.monotonic() < deadline and stopping is None:
            status, body = get(port, "/readyz")
            if status == 503:
                stopping = body
            time.sleep(0.05)
        assert stopping is not None and "stopping" in stopping, stopping
        assert get(port, "/healthz")[0] == 200
        assert daemon.proc.wait(timeout=60) == 0, daemon.log_text()[-3000:]

    assert during >= 2
    statuses = {}
    for r in results.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    assert statuses.get("rejected") == 1 and statuses.get("failed", 0) >= 1, statuses
    for status in ("succeeded", "failed", "rejected"):
        assert after.value("chatprov_requests_total", status=status) == \
            statuses.get(status, 0), (status, statuses)
    assert after.value("chatprov_request_duration_seconds_count") == len(ids)

    # Graph answers by code, as graph-sim counted them (POSTs and operation polls).
    codes = after.by_label("chatprov_graph_responses_total", "code", tenant="default")
    assert {c: int(n) for c, n in codes.items() if n} == graph_ledger_codes(ledger), ledger
    assert codes.get("429", 0) >= 1 and codes.get("503", 0) >= 1 and codes.get("202", 0) >= 1
    assert codes.get("404", 0) == 1
    assert after.value("chatprov_throttled_total", tenant="default") == ledger["throttled"]
    assert after.value("chatprov_throttled_total", tenant="default") == codes["429"]
    assert after.value("chatprov_graph_request_duration_seconds_count") == sum(codes.values())
    # Retries count transient failures of POST /chats (503 here); a 429 waits for its
    # Retry-After and counts as throttled; a 503 on an operation poll just polls again.
    post_503 = ledger["requests"]["POST /{version}/chats"].get("503", 0)
    assert post_503 >= 1
    assert after.value("chatprov_retries_total", tenant="default") == post_503

    # Tokens: 4 s lifetimes during a run of several seconds mean several refreshes.
    grants = ledger["token_grants"]["client_secret"]
    assert grants >= 2, ledger["token_grants"]
    assert grants <= after.value("chatprov_token_refreshes_total", tenant="default") \
        <= grants_by_then
    assert after.value("chatprov_token_failures_total", tenant="default") == \
        sum(ledger["token_failures"].values())
    assert 0 < after.value("chatprov_token_expiry_seconds", tenant="default") <= 4

    assert after.value("chatprov_in_memory_requests") == 0
    assert after.value("chatprov_in_flight_requests") == 0
    lag = after.by_label("chatprov_consumer_lag", "partition")
    assert set(lag) == {"0", "1", "2", "3"} and all(v == 0 for v in lag.values()), lag
    assert after.value("chatprov_metrics_series_dropped_total") == 0
    print("metrics: %d scrapes during the run; graph codes %s; %d token grants; "
          "retry-after violations %d" % (during, codes, grants, ledger["retry_after_violations"]))
