#!/usr/bin/python3
"""soak - minutes of mixed traffic against the local stack (kafka-mock with 3 brokers,
graph-sim, chatprovd) under every fault at once, then a check of chatprov's guarantees.

    tests/soak/soak.py --duration 120 --seed 7            # build/ next to tests/
    CHATPROV_BUILD_DIR=... tests/soak/soak.py --duration 3600

While traffic flows: random SIGKILLs and restarts of chatprovd, a second instance joining
and leaving the group, broker outages (with and without failover), graph-sim faults (5xx,
resets, hangs, created-then-504, 503 with Retry-After, token endpoint outages), 202
operations in flight, and cut HTTP/2 connections when graph-sim has a knob for it. Then every
fault ends, the stack drains with no more kills, and the soak checks, from the output topic,
graph-sim's ledger and the group's committed offsets:

  one-outcome-per-id       every input id has a result; all copies of it agree
  expected-outcome         valid requests succeeded, invalid ones were rejected
  no-group-chat-twice      at most one group chat per client-request-id (per input id)
  results-name-real-chats  results name chats graph-sim has; every 202's chat is reported
  every-offset-committed   the group's committed offset is the high watermark everywhere
  no-partition-stalled     no input partition kept its offset with work waiting for longer
                           than --stall-limit, and the drain caught every partition up
  clean-exits              no instance exited unasked; SIGTERM always exits 0

It prints its figures and exits 0, or 1 naming each violated invariant and its ids (2: the
soak itself failed). --inject breaks the stack on purpose to show a check can fail; with
--expect-violations the exit is 0 only if every injected breach was reported.
See docs/crash-safety.md.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
os.environ.setdefault("CHATPROV_SOURCE_DIR", SOURCE)
os.environ.setdefault("CHATPROV_BUILD_DIR", os.path.join(SOURCE, "build"))
sys.path.insert(0, os.path.join(SOURCE, "tests", "integration"))

from chaos import FAST_GROUP, client_request_id, group_chats_by_crid, with_overrides  # noqa: E402
from graphsim import USER_A, USER_B, GraphSim, chat_body  # noqa: E402
from graphsim import binary as graph_sim_binary  # noqa: E402
from stack import CLIENT_ID, OUTPUT, SECRET, TENANT, Stack, group_event  # noqa: E402
from test_tls import make_ca, make_server_cert  # noqa: E402

import faults  # noqa: E402
import invariants  # noqa: E402
import offsets  # noqa: E402
import traffic  # noqa: E402

SECOND_TENANT_ID = "fabrikam.onmicrosoft.com"
SECOND_CLIENT = "00000000-0000-0000-0000-0000000000fa"
SECOND_SECRET = "fab-secret"
# What each --inject breaks, as the invariants that must then be reported.
INJECTIONS = {"lost": {"one-outcome-per-id", "every-offset-committed"},
              "disagree": {"one-outcome-per-id", "results-name-real-chats"},
              "failed": {"expected-outcome"},
              "crash": {"clean-exits"},
              "twice": {"no-group-chat-twice"},
              "stall": {"no-partition-stalled"}}
ASSIGNMENT_LOG = re.compile(r"\] (assigned|revoked|lost) chat\.requests \[\d+\]")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120, help="seconds of traffic and faults")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=20, help="new request ids per second")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--tenants", type=int, choices=(1, 2), default=2)
    p.add_argument("--no-second-instance", action="store_true")
    p.add_argument("--cross-partition-dups", type=float, default=0.0, metavar="SHARE",
                   help="share of second-key duplicates sent to their key's own partition "
                   "(docs/state.md: beyond the promise when another instance owns it)")
    p.add_argument("--drain-timeout", type=float, default=180)
    p.add_argument("--stall-limit", type=float, default=60,
                   help="longest acceptable time an input offset stays with work waiting")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiplies fault intervals and time limits (sanitizer builds)")
    p.add_argument("--inject", default="",
                   help="comma-separated breaches to make on purpose: " + ",".join(INJECTIONS))
    p.add_argument("--expect-violations", action="store_true",
                   help="exit 0 only if every injected breach was reported")
    p.add_argument("--http1", action="store_true",
                   help="plain HTTP/1.1 to graph-sim even when it has an HTTP/2 front")
    p.add_argument("--json", help="also write the figures and violations to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)
    args.inject = [x for x in args.inject.split(",") if x]
    for x in args.inject:
        if x not in INJECTIONS:
            p.error("unknown --inject %r" % x)
    if args.expect_violations and not args.inject:
        p.error("--expect-violations needs --inject")
    return args


def sim_config():
    return dict(faults.BASE_FAULTS, limit_per_tenant=1000000, limit_global=1000000,
                latency_ms=faults.BASE_LATENCY_MS, hang_s=3, fault_503_retry_after_s=1,
                operation_in_progress_after_s=0.2, operation_done_after_s=1.0,
                token_lifetime_s=60, token_fault_503_rate=0.02,
                clients=[{"tenant": TENANT, "client_id": CLIENT_ID, "secret": SECRET},
                         {"tenant": SECOND_TENANT_ID, "client_id": SECOND_CLIENT,
                          "secret": SECOND_SECRET}])


def h2_front_available():
    """graph-sim's HTTP/2 + TLS front (--http2) and a test helper that speaks to its
    control port: both or nothing."""
    usage = subprocess.run([graph_sim_binary(), "--help"], capture_output=True, text=True)
    return "--http2" in usage.stdout + usage.stderr and hasattr(GraphSim(), "control_url")


def start_h2_graph(stack, tmp):
    """Replaces the stack's graph-sim with one that speaks HTTP/2 over TLS only (what Graph
    speaks), its certificate from a private CA; returns the CA file for [graph] ca_file."""
    ca_key, ca = make_ca(tmp, "ca")
    key, cert = make_server_cert(tmp, ca_key, ca)
    stack.graph.stop()
    stack.graph = GraphSim(ssl_context=ssl.create_default_context(cafile=ca)).start(
        config=sim_config(), args=["--tls-cert", cert, "--tls-key", key, "--http2"])
    return ca


def daemon_config(stack, tmp, ca_file=None):
    secret = os.path.join(tmp, "fab-secret")
    with open(secret, "w") as f:
        f.write(SECOND_SECRET + "\n")
    # A hang (graph-sim's fault_hang) holds its partition's committed offset for the whole
    # request timeout: offsets commit in order, so the slowest unfinished request sets the
    # stall. With the default 30 s, two faults in a row on one request (a hang, then an
    # outage or a SIGKILL before its retry) made stalls of 40-56 s against the 60 s limit
    # (issue 13). 10 s keeps hangs in the mix and the limit six timeouts long.
    graph = {"max_in_flight": "32", "request_timeout_s": "10"}
    if ca_file:
        graph["ca_file"] = ca_file
    return stack.write_config(**with_overrides(FAST_GROUP, {
        "graph": graph,
        "auth": {"refresh_ahead_s": "10"},
        "retry": {"max_attempts": "30", "base_delay_s": "0.05", "max_delay_s": "1"},
        "operations": {"poll_interval_s": "0.2", "timeout_s": "60"},
        "tenant." + traffic.SECOND_TENANT: {"tenant_id": SECOND_TENANT_ID,
                                            "client_id": SECOND_CLIENT,
                                            "client_secret_file": secret}}))


class Soak:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.violations = faults.Violations()
        self.figures = {}
        self.stack = None
        self.offsets_reader = None

    def setup(self):
        args, tmp = self.args, self.tmp
        self.stack = Stack(tmp, partitions=args.partitions, brokers=faults.BROKERS,
                           sim_config=sim_config())
        self.h2 = h2_front_available() and not args.http1
        ca_file = start_h2_graph(self.stack, tmp) if self.h2 else None
        self.config = daemon_config(self.stack, tmp, ca_file)
        self.mix = traffic.Mix(random.Random(args.seed + 1), args.tenants)
        self.feeder = traffic.Feeder(self.stack.kafka.bootstrap, self.mix, args.partitions,
                                     args.rate, random.Random(args.seed + 3),
                                     cross_share=args.cross_partition_dups)
        self.chaos = faults.Chaos(self.stack, self.config, random.Random(args.seed + 2),
                                  self.violations, self.feeder.storm, scale=args.time_scale,
                                  second_instance=not args.no_second_instance)
        self.monitor = offsets.Monitor(self.stack.kafka.bootstrap, args.partitions)
        self.offsets_reader = offsets.offsets_consumer(self.stack.kafka.bootstrap)

    def close(self):
        if self.offsets_reader is not None:
            self.offsets_reader.close()
        if self.stack is not None:
            self.stack.close()

    def ids_between(self, p, low, high):
        return offsets.ids_between(self.stack.kafka.bootstrap, p, low, high)

    def run(self):
        started = time.monotonic()
        self.chaos.start()
        self.monitor.start()
        self.feeder.start()
        while time.monotonic() - started < self.args.duration:
            self.stack.read_results(timeout=0.2)
            self.chaos.tick()
        self.figures["traffic_s"] = round(time.monotonic() - started, 1)
        # Faults end before the feeder's last flush: input led by a broker still down (an
        # outage without failover when the traffic ends) could not be delivered, and the
        # flush's timeout ended the soak itself (exit 2) with the broker never up again.
        self.feeder.stop()
        self.chaos.calm()
        error = self.feeder.finish()
        if error:
            raise RuntimeError(error)
        if "stall" in self.args.inject:
            self.inject_stall()
        if "failed" in self.args.inject:
            self.inject_failed()
        drained_s = self.drain()
        self.figures["drain_s"] = drained_s
        self.monitor.stop()
        limit = self.args.stall_limit * self.args.time_scale
        invariants.check_no_stall(self.violations, self.monitor.stalls(limit), limit,
                                  self.ids_between)
        if "crash" in self.args.inject:
            self.chaos.primary.daemon.send(signal.SIGABRT)
            self.chaos.primary.daemon.proc.wait(30)
        self.stop_all()
        self.read_quiet()
        self.inject_after()
        self.check()

    # ---- draining ----

    def caught_up(self):
        try:
            sample = offsets.committed_and_high(self.offsets_reader, self.args.partitions)
        except Exception:
            return False, {}
        behind = {p: v for p, v in sample.items() if v[0] < v[1]}
        return set(self.mix.expected) <= set(self.stack.results) and not behind, behind

    def drain(self):
        """Waits, with every fault ended and no kill, until every id has a result and the
        group committed every input offset. Returns the seconds it took, or None."""
        start = time.monotonic()
        deadline = start + self.args.drain_timeout * self.args.time_scale
        behind = {}
        while time.monotonic() < deadline:
            self.stack.read_results(timeout=0.5)
            self.chaos.watch_exits()
            done, behind = self.caught_up()
            if done:
                return round(time.monotonic() - start, 1)
        for p, (committed, high) in sorted(behind.items()):
            self.violations.add("no-partition-stalled", "input partition %d did not catch up "
                                "within the %.0f s drain (no fault, no kill): committed %d, "
                                "high watermark %d" % (p, self.args.drain_timeout, committed,
                                                       high),
                                self.ids_between(p, committed, min(high, committed + 3)))
        return None

    def stop_all(self):
        for inst in self.chaos.instances():
            d = inst.daemon
            if d is None:
                continue
            if not d.alive():
                self.violations.add("clean-exits", "%s instance exited on its own with %s "
                                    "before the end (log %s)" % (inst.name, d.proc.poll(),
                                                                d.log_path))
                d.kill()
            else:
                try:
                    code = d.stop(signal.SIGTERM, timeout=90 * self.args.time_scale)
                except subprocess.TimeoutExpired:
                    d.kill()
                    code = "nothing (killed after 90 s)"
                if code != 0:
                    self.violations.add("clean-exits", "%s instance exited %s after SIGTERM at "
                                        "the end (log %s)" % (inst.name, code, d.log_path))
            inst.daemon = None

    def read_quiet(self, quiet=3.0):
        while self.stack.read_results(timeout=quiet):
            pass

    # ---- injections (to show each check can fail) ----

    def inject_stall(self):
        """Freezes every instance while new work waits, for longer than the stall limit."""
        live = self.chaos.live_daemons()
        for d in live:
            d.send(signal.SIGSTOP)
        self.feeder.produce_now([group_event(900000 + i) for i in range(20)])
        end = time.monotonic() + self.args.stall_limit * self.args.time_scale + 5
        while time.monotonic() < end:
            self.stack.read_results(timeout=0.5)
        for d in live:
            d.send(signal.SIGCONT)

    def inject_failed(self):
        """One more request with an app whose operation graph-sim fails."""
        self.stack.graph.config(operation_fail_rate=1)
        ev = group_event(980000, app=True)
        self.feeder.produce_now([ev])
        deadline = time.monotonic() + 60 * self.args.time_scale
        while ev["id"] not in self.stack.results and time.monotonic() < deadline:
            self.stack.read_results(timeout=0.5)
        self.stack.graph.config(operation_fail_rate=0)

    def harness_token(self):
        """A token for the soak's own requests. graph-sim's token endpoint fails 2 % of its
        answers for the whole run (token_fault_503_rate): the harness retries them, as the
        daemon does (a CI run failed on one refused here)."""
        for _ in range(20):
            r = self.stack.graph.token_response()
            if r.status == 200:
                return r.json()["access_token"]
            time.sleep(0.1)
        raise RuntimeError("token refused 20 times: %s" % r.body)

    def inject_after(self):
        group_ids = sorted(i for i, k in self.mix.kinds.items() if i.startswith("grp-")
                           and i in self.stack.results
                           and self.stack.results[i][0].get("status") == "succeeded")
        if "twice" in self.args.inject:
            token = self.harness_token()
            r = self.stack.graph.post_chat(chat_body("group", [USER_A, USER_B], topic="again"),
                                           token, headers={"client-request-id":
                                                           client_request_id(group_ids[0])})
            assert r.status == 201, r
        if "disagree" in self.args.inject:
            forged = dict(self.stack.results[group_ids[1]][0])
            forged["chat"] = dict(forged["chat"], id="19:forged@thread.v2")
            self.stack.produce([json.dumps(forged).encode()], topic=OUTPUT,
                               key=group_ids[1].encode())
        if "lost" in self.args.inject:
            ev = group_event(990000)
            self.mix.expected[ev["id"]] = "succeeded"
            self.mix.kinds[ev["id"]] = "group"
            self.stack.produce([ev], partition=0)
        self.read_quiet()

    # ---- checks and figures ----

    def check(self):
        stack, v = self.stack, self.violations
        results, expected, kinds = stack.results, self.mix.expected, self.mix.kinds
        ledger = stack.graph.ledger()
        self.keep_evidence(ledger)
        invariants.check_every_id_answered(v, results, expected)
        invariants.check_copies_agree(v, results)
        invariants.check_expected_status(v, results, expected)
        invariants.check_no_group_chat_twice(v, ledger, kinds)
        invariants.check_results_name_real_chats(v, ledger, results, kinds)
        final = offsets.committed_and_high(self.offsets_reader, self.args.partitions, 15)
        invariants.check_offsets_committed(v, final, self.ids_between)
        self.collect_figures(ledger, final)

    def keep_evidence(self, ledger):
        """graph-sim's ledger and every result read, next to the chatprovd logs."""
        with open(os.path.join(self.tmp, "ledger.json"), "w") as f:
            json.dump(ledger, f)
        with open(os.path.join(self.tmp, "results.jsonl"), "w") as f:
            for entry in self.stack.result_messages:
                f.write(json.dumps(entry["result"], ensure_ascii=False) + "\n")

    def collect_figures(self, ledger, final):
        f, mix, results = self.figures, self.mix, self.stack.results
        kinds = list(mix.kinds.values())
        f["events"] = {"ids": len(mix.expected), "group": kinds.count("group"),
                       "oneOnOne": kinds.count("oneOnOne"), "invalid": kinds.count("invalid"),
                       "per_tenant": {t: len(ids) for t, ids in mix.by_tenant.items()},
                       "long_utf8_ids": sum(1 for i in mix.expected
                                            if traffic.is_long(i))}
        f["input_messages"] = dict(self.feeder.counts)
        f["chaos"] = dict(self.chaos.figures)
        f["graph_transport"] = "HTTP/2 over TLS" if self.h2 else "HTTP/1.1"
        f["rebalances"] = self.rebalances()
        posts = ledger["chat_posts"]
        fault_kinds = {}
        for post in posts:
            if post.get("fault"):
                fault_kinds[post["fault"]] = fault_kinds.get(post["fault"], 0) + 1
        f["graph"] = {"chat_posts": len(posts), "post_faults": fault_kinds,
                      "requests": ledger["requests"], "chats": len(ledger["chats"]),
                      "operations": len(ledger["operations"]),
                      "token_failures": ledger["token_failures"],
                      "retry_after_violations": ledger["retry_after_violations"],
                      "connections_accepted": ledger.get("connections_accepted"),
                      "connections_cut": ledger.get("connections_cut")}
        copies = [len(c) for c in results.values()]
        statuses = {}
        for c in results.values():
            statuses[c[0].get("status")] = statuses.get(c[0].get("status"), 0) + 1
        f["results"] = {"messages": sum(copies), "ids": len(results), "first_status": statuses,
                        "ids_with_several_copies": sum(1 for n in copies if n > 1),
                        "extra_copies": sum(n - 1 for n in copies)}
        f["duplicates_found"] = {
            "group_chats_twice": sum(1 for chats in group_chats_by_crid(ledger)
                                     .values() if len(chats) > 1),
            "graph_sim_duplicate_group_chats": ledger["duplicate_group_chats"]}
        f["offsets"] = {"final": {p: list(v) for p, v in final.items()},
                        "longest_stall_s": round(self.monitor.longest_stall(), 1),
                        "samples": self.monitor.samples,
                        "sample_errors": self.monitor.errors,
                        "last_sample_error": self.monitor.last_error}

    def rebalances(self):
        """Assignment changes the instances logged (one per callback: a run of lines)."""
        changes, partitions = 0, 0
        for d in self.stack.daemons:
            last = None
            for line in d.log_text().splitlines():
                m = ASSIGNMENT_LOG.search(line)
                kind = m.group(1) if m else None
                if kind and kind != last:
                    changes += 1
                if kind:
                    partitions += 1
                last = kind
        return {"callbacks": changes, "partition_moves": partitions,
                "instances_started": len(self.stack.daemons)}


def print_figures(f):
    """One line per group of figures (the whole set goes to --json)."""
    e, m, c, r, g = f["events"], f["input_messages"], f["chaos"], f["results"], f["graph"]
    lines = [
        ("events", "%d ids: %d group, %d oneOnOne, %d invalid; per tenant %s; %d ids of 200 "
         "characters but 394 or 800 bytes"
         % (e["ids"], e["group"], e["oneOnOne"], e["invalid"], e["per_tenant"],
            e["long_utf8_ids"])),
        ("input", "%d messages; duplicates: %d at once, %d within 3 s, %d 5-60 s later, "
         "%d of them under a second key (%d to that key's partition); %d storms: %d copies"
         % (m["messages"], m["dup_at_once"], m["dup_soon"], m["dup_later"],
            m["dup_second_key"], m["dup_other_partition"], c["dup_storms"], m["dup_storm"])),
        ("kills", "%d SIGKILL, %d restarts" % (c["kills"], c["restarts"])),
        ("group", "second instance: %d joins, %d SIGTERM leaves, %d killed and gone; %d "
         "assignment callbacks (%d partition moves) over %d instances started"
         % (c["joins"], c["leaves_sigterm"], c["second_killed"], f["rebalances"]["callbacks"],
            f["rebalances"]["partition_moves"], f["rebalances"]["instances_started"])),
        ("brokers", "%d outages, %d with failover; %d slow-broker periods"
         % (c["outages"], c["failovers"], c["slow_brokers"])),
        ("graph", "%s; %d fault bursts; POST faults %s; %d POSTs, %d chats, %d operations; "
         "retry-after violations %d" % (f["graph_transport"], c["fault_bursts"],
                                        g["post_faults"], g["chat_posts"], g["chats"],
                                        g["operations"], g["retry_after_violations"])),
        ("h2 cuts", "%d periods of %s, %s connections cut of %s accepted"
         % (c["h2_cut_periods"], c["h2_cut_knob"], g["connections_cut"],
            g["connections_accepted"]) if c["h2_cut_knob"]
         else "skipped (graph-sim has no knob that cuts HTTP/2 connections)"),
        ("results", "%d messages for %d ids, first status %s; %d ids with several copies "
         "(%d extra)" % (r["messages"], r["ids"], r["first_status"],
                         r["ids_with_several_copies"], r["extra_copies"])),
        ("duplicates", "group chats twice: %d (graph-sim counted %d)"
         % (f["duplicates_found"]["group_chats_twice"],
            f["duplicates_found"]["graph_sim_duplicate_group_chats"])),
        ("offsets", "longest stall %.1f s over %d samples (%d failed: %s); drain %s s"
         % (f["offsets"]["longest_stall_s"], f["offsets"]["samples"],
            f["offsets"]["sample_errors"], f["offsets"]["last_sample_error"], f["drain_s"])),
    ]
    for name, text in lines:
        print("%-10s %s" % (name, text))


def shorten(text):
    """Long runs of one non-ASCII character (the long ids) as the character and a count."""
    return re.sub(r"([^\x00-\x7f])\1{7,}",
                  lambda m: "%s...(x%d)" % (m.group(1), len(m.group(0))), text)


def main(argv):
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="chatprov-soak-")
    print("soak: seed %d, %.0f s, work directory %s" % (args.seed, args.duration, tmp),
          flush=True)
    soak = Soak(args, tmp)
    code = 2
    try:
        soak.setup()
        soak.run()
        print_figures(soak.figures)
        invariants.report(soak.violations, lambda s: print(shorten(s)))
        names = soak.violations.names()
        if args.expect_violations:
            wanted = set().union(*(INJECTIONS[x] for x in args.inject))
            missed = sorted(wanted - names)
            print("soak: injected %s; reported %s; missed %s"
                  % (args.inject, sorted(names), missed or "none"))
            code = 1 if missed else 0
        else:
            code = 1 if names else 0
            print("soak: %s" % ("OK, every invariant held" if not names
                                else "FAILED: " + ", ".join(sorted(names))))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"figures": soak.figures, "violations": soak.violations.items,
                           "seed": args.seed, "duration": args.duration}, f, indent=1,
                          ensure_ascii=False)
    finally:
        soak.close()
        if code == 0 and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("soak: logs kept in %s" % tmp)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
