"""HTTP/2 over TLS, what Graph speaks (issue 13, items 1 and 2).

graph-sim --http2 serves h2 only (ALPN), 1,000 streams per connection, and can cut the
busiest connection with a TCP reset and no GOAWAY. Against it:
- a connection dying with streams in flight never makes chatprovd POST a group chat twice
  (libcurl must not resend a POST on its own: that bypasses the unknown-outcome path), and
  every event still ends succeeded, exactly once;
- hundreds of concurrent requests share a handful of connections (multiplexing).
"""

import collections
import ssl
import time

from graphsim import GraphSim, wait_for
from stack import CLIENT_ID, SECRET, TENANT, Stack, group_event
from test_tls import make_ca, make_server_cert

LIFTED = {"limit_per_tenant": 1000000000, "limit_global": 1000000000,
          "clients": [{"tenant": TENANT, "client_id": CLIENT_ID, "secret": SECRET}]}


class H2Graph:
    """graph-sim --http2 with a server certificate issued by a private CA."""

    def __init__(self, tmp, **knobs):
        d = str(tmp)
        ca_key, self.ca = make_ca(d, "ca")
        key, cert = make_server_cert(d, ca_key, self.ca)
        config = dict(LIFTED)
        config.update(knobs)
        self.sim = GraphSim(ssl_context=ssl.create_default_context(cafile=self.ca)).start(
            config=config, args=["--http2", "--tls-cert", cert, "--tls-key", key])
        assert self.sim.url.startswith("https://127.0.0.1:")

    def daemon_config(self, max_in_flight, max_attempts=8):
        return {"graph": {"base_url": self.sim.url, "ca_file": self.ca,
                          "max_in_flight": str(max_in_flight), "request_timeout_s": "20"},
                "auth": {"authority_url": self.sim.url},
                "retry": {"base_delay_s": "0.05", "max_delay_s": "1",
                          "max_attempts": str(max_attempts)},
                "log": {"level": "notice"}}


def run_events(tmp_path, graph, events, max_in_flight, max_attempts=8, per_second=None,
               timeout=80):
    """Runs events through one daemon against graph, all at once or per_second of them
    each second; returns (results by id, ledger)."""
    with Stack(tmp_path, partitions=8) as stack:
        daemon = stack.start_daemon(**graph.daemon_config(max_in_flight, max_attempts))
        deadline = time.time() + 30
        while "ready:" not in daemon.log_text() and time.time() < deadline:
            time.sleep(0.1)
        step = per_second or len(events)
        for start in range(0, len(events), step):
            stack.produce(events[start:start + step])
            if per_second:
                time.sleep(1)
        stack.wait_results([e["id"] for e in events], timeout=timeout)
        stack.read_results(timeout=1.0)  # a second result for an id would show up here
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        return dict(stack.results), graph.sim.ledger()


def test_cut_connections_never_create_a_group_chat_twice(tmp_path):
    graph = H2Graph(tmp_path, latency_ms=200, fault_cut_busiest_h2_every_s=2)
    try:
        # 6,000 events over 12 s, so that the cuts fall on a full pipe however fast the
        # machine is. Multiplexed, nearly everything in flight shares the busiest connection:
        # each cut fails every request in flight (POSTs and lookups alike). The retry budget
        # is raised so that the test is about duplicates, not about running out of retries.
        events = [group_event(i) for i in range(6000)]
        results, ledger = run_events(tmp_path, graph, events, max_in_flight=1000,
                                     max_attempts=40, per_second=500)
    finally:
        graph.sim.stop()
    # The fault fired under load: connections died with streams in flight.
    assert ledger["connections_cut"] >= 2, ledger["connections_cut"]
    # Every id: exactly one result, and it succeeded.
    assert sorted(results) == sorted(e["id"] for e in events)
    twice = {i: r for i, r in results.items() if len(r) != 1}
    assert not twice, list(twice.items())[:3]
    failed = [r[0] for r in results.values() if r[0]["status"] != "succeeded"]
    assert not failed, failed[:3]
    # No group chat twice: one chat per client-request-id, and no second POST that Graph
    # processed for the same id (a resend that bypassed the lookup would be one).
    assert ledger["duplicate_group_chats"] == 0
    created = collections.Counter(p["clientRequestId"] for p in ledger["chat_posts"]
                                  if p["status"] in (201, 202))
    assert not [c for c, n in created.items() if n > 1], created.most_common(3)
    assert len(ledger["chats"]) == len(events)
    # The cuts left outcomes unknown, and those went through the lookup.
    assert sum(ledger["requests"].get("GET /{version}/users/{id}/chats", {}).values()) > 0
    # Reconnecting after a cut multiplexes too: no storm of new connections (without the
    # connection cap, the retries after one cut opened ~700).
    assert ledger["connections_accepted"] <= 12 * (ledger["connections_cut"] + 1), (
        ledger["connections_accepted"], ledger["connections_cut"])


def test_concurrent_requests_share_a_handful_of_connections(tmp_path):
    graph = H2Graph(tmp_path, latency_ms=1000)
    try:
        events = [group_event(i) for i in range(800)]
        results, ledger = run_events(tmp_path, graph, events, max_in_flight=1000)
    finally:
        graph.sim.stop()
    assert all(r[0]["status"] == "succeeded" for r in results.values())
    assert len(results) == len(events)
    # 800 requests in flight at once (each held 1 s) over HTTP/2 that allows 1,000 streams
    # per connection: a few connections, not hundreds. Usually 3 (Graph's, the token
    # endpoint's); when the burst races the server's SETTINGS, up to the worker's cap of
    # max(4, 1000 / 100) = 10 for Graph, plus the token endpoint's.
    assert ledger["connections_accepted"] <= 12, ledger["connections_accepted"]



def lookups(ledger):
    return sum(ledger["requests"].get("GET /{version}/users/{id}/chats", {}).values())


def test_lookup_after_a_restart_survives_cut_connections(tmp_path):
    """After a SIGKILL, every intent without an outcome is looked up before anything is POSTed
    again. A lookup is a GET: connections cut under it (every stream on the connection fails
    at once, again at the next cut) mean "try again", never failed/OutcomeUnknown. The soak
    saw 22 ids end "failed after 0 attempt(s): OutcomeUnknown" this way: the retry budget's
    time ran from a first POST the restarted instance never made."""
    graph = H2Graph(tmp_path, fault_hang_rate=1, hang_s=120)
    events = [group_event(i) for i in range(40)]
    ids = [e["id"] for e in events]
    try:
        with Stack(tmp_path, partitions=4) as stack:
            config = graph.daemon_config(max_in_flight=100)
            daemon = stack.start_daemon(**config)
            stack.produce(events)
            # Every POST reached graph-sim (its intent is durable) and hangs: SIGKILL.
            assert wait_for(lambda: len(graph.sim.ledger()["chat_posts"]) >= len(events), 30)
            daemon.sigkill()
            graph.sim.config(fault_hang_rate=0, latency_ms=300, fault_cut_busiest_h2_every_s=0.2)
            daemon = stack.start_daemon(**config)
            assert wait_for(lambda: lookups(graph.sim.ledger()) > 0, 60)
            cut = graph.sim.ledger()["connections_cut"]
            assert wait_for(lambda: graph.sim.ledger()["connections_cut"] >= cut + 3, 30)
            graph.sim.config(fault_cut_busiest_h2_every_s=0, latency_ms=0)
            results = stack.wait_results(ids, timeout=90)
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
            ledger = graph.sim.ledger()
    finally:
        graph.sim.stop()
    failed = [r for r in results.values() if r["status"] != "succeeded"]
    assert not failed, (len(failed), failed[:2])
    assert ledger["duplicate_group_chats"] == 0


def test_a_cut_202_is_not_posted_again_before_its_operation_could_end(tmp_path):
    """A group chat with an app is made by a 202 operation, and its chat is listed only when
    the operation ends (1 s here). A 202 lost in a cut connection leaves a lookup that finds
    nothing yet: a second POST then made a second chat ~300 ms after the first (the soak: 25
    chats twice). The lookup must look again until the operation could have ended."""
    graph = H2Graph(tmp_path, latency_ms=300, operation_in_progress_after_s=0.2,
                    operation_done_after_s=1.0)
    events = [group_event(i, app=True) for i in range(300)]
    ids = [e["id"] for e in events]
    config = graph.daemon_config(max_in_flight=1000, max_attempts=40)
    config["operations"] = {"poll_interval_s": "0.2", "timeout_s": "60"}
    try:
        with Stack(tmp_path, partitions=4) as stack:
            daemon = stack.start_daemon(**config)
            assert wait_for(lambda: "ready:" in daemon.log_text(), 30)
            # POSTs keep leaving while connections are cut, so that cuts fall on 202s.
            graph.sim.config(fault_cut_busiest_h2_every_s=0.5)
            for start in range(0, len(events), 25):
                stack.produce(events[start:start + 25])
                time.sleep(0.25)
            graph.sim.config(fault_cut_busiest_h2_every_s=0)
            results = stack.wait_results(ids, timeout=120)
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
            ledger = graph.sim.ledger()
    finally:
        graph.sim.stop()
    # The cuts lost 202s: some lookups ran.
    assert lookups(ledger) > 0
    assert ledger["duplicate_group_chats"] == 0, ledger["duplicate_group_chats"]
    failed = [r for r in results.values() if r["status"] != "succeeded"]
    assert not failed, (len(failed), failed[:2])
