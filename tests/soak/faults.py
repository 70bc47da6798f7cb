"""faults - what the soak does to the stack while traffic flows: SIGKILL and restart of
chatprovd, a second instance joining and leaving the group, broker outages on kafka-mock
(with or without failover) and slow brokers, bursts of graph-sim faults, and cut HTTP/2
connections when graph-sim has a knob for it. Each kind of fault runs on a timer of its own,
so they overlap.

Driven from the soak's main loop: tick() never blocks for long (a leaving instance is
polled, not waited for), calm() ends every fault before the drain.
"""

import re
import signal
import time

from chaos import leaders, move_leaders

GROUP = "chatprovd-test"
BROKERS = 3
# Baseline fault rates (every Graph POST and operation GET); a burst multiplies them.
BASE_FAULTS = {"fault_500_rate": 0.01, "fault_503_rate": 0.01, "fault_504_rate": 0.01,
               "fault_reset_rate": 0.01, "fault_hang_rate": 0.004,
               "fault_created_504_rate": 0.02}
BURST_FACTOR = 6
BASE_LATENCY_MS = 20
CUT_LATENCY_MS = 200
NO_FAULTS = {k: 0 for k in BASE_FAULTS}
# A knob that cuts graph-sim's busiest HTTP/2 connection: found by name in GET /_sim/config.
CUT_KNOB = re.compile(r"cut", re.IGNORECASE)


class Violations:
    """What the soak saw broken, by invariant name: [(invariant, detail, ids)]."""

    def __init__(self):
        self.items = []

    def add(self, invariant, detail, ids=()):
        self.items.append((invariant, detail, list(ids)))

    def names(self):
        return {name for name, _, _ in self.items}


class Instance:
    """One slot of the group (the primary, or the second instance)."""

    def __init__(self, name):
        self.name = name
        self.daemon = None
        self.leaving_since = None  # SIGTERM sent, exit awaited


def find_cut_knob(graph):
    """(name, value to set) of graph-sim's HTTP/2 connection-cut knob, or None."""
    knobs = graph.request("GET", "/_sim/config").json()
    for name, default in sorted(knobs.items()):
        if not CUT_KNOB.search(name):
            continue
        if isinstance(default, bool):
            return name, True
        if name.endswith("_s") or name.endswith("_ms"):
            return name, 1 if name.endswith("_s") else 1000
        if name.endswith("rate"):
            return name, 0.05
        if isinstance(default, (int, float)):
            return name, 1
    return None


class Chaos:
    def __init__(self, stack, config_path, rng, violations, storm, scale=1.0,
                 second_instance=True):
        self.stack = stack
        self.config_path = config_path
        self.rng = rng
        self.violations = violations
        self.scale = scale
        self.primary = Instance("primary")
        self.second = Instance("second") if second_instance else None
        self.coordinator = 1
        self.outage = None  # {"broker", "phase", "at", "moved"}
        self.burst_until = None
        self.cut_knob = find_cut_knob(stack.graph)
        self.cut_until = None
        now = time.monotonic()
        self.next = {"kill": now + self.gap(8, 18), "member": now + self.gap(10, 25),
                     "outage": now + self.gap(15, 35), "burst": now + self.gap(6, 20),
                     "cut": now + self.gap(5, 15), "slow": now + self.gap(5, 15),
                     "storm": now + self.gap(15, 30)}
        self.slow = None  # (broker, until)
        self.storm = storm  # the feeder's duplicate storm switch
        self.storm_until = None
        self.figures = {"kills": 0, "restarts": 0, "joins": 0, "leaves_sigterm": 0,
                        "second_killed": 0, "outages": 0, "failovers": 0, "slow_brokers": 0,
                        "fault_bursts": 0, "dup_storms": 0,
                        "h2_cut_periods": 0,
                        "h2_cut_knob": self.cut_knob[0] if self.cut_knob else None}
        assert stack.kafka.command("coordinator group %s 1" % GROUP).startswith("OK")

    def gap(self, low, high):
        return self.rng.uniform(low, high) * self.scale

    def start(self):
        self.primary.daemon = self.stack.start_daemon(self.config_path)

    def instances(self):
        return [i for i in (self.primary, self.second) if i is not None]

    def live_daemons(self):
        return [i.daemon for i in self.instances() if i.daemon is not None and i.daemon.alive()]

    # ---- the loop ----

    def tick(self):
        now = time.monotonic()
        self.watch_exits()
        self.step_outage(now)
        if self.burst_until is not None and now >= self.burst_until:
            self.stack.graph.config(**BASE_FAULTS)
            self.burst_until = None
        if self.slow is not None and now >= self.slow[1]:
            self.set_rtt(self.slow[0], 0)
            self.slow = None
        if self.cut_until is not None and now >= self.cut_until:
            self.set_cut(False)
        if self.storm_until is not None and now >= self.storm_until:
            self.end_storm()
        for kind, due in list(self.next.items()):
            if now >= due:
                getattr(self, "do_" + kind)(now)

    def watch_exits(self):
        """An instance that exited without being told to is a violation (and restarted, so
        the soak goes on); one told to leave must exit 0 within a minute."""
        for inst in self.instances():
            d = inst.daemon
            if d is None:
                continue
            code = d.proc.poll()
            if inst.leaving_since is not None:
                if code is None and time.monotonic() - inst.leaving_since > 60 * self.scale:
                    self.violations.add("clean-exits", "%s instance did not exit within 60 s "
                                        "of SIGTERM (log %s)" % (inst.name, d.log_path))
                    d.kill()
                    inst.daemon, inst.leaving_since = None, None
                elif code is not None:
                    if code != 0:
                        self.violations.add("clean-exits", "%s instance exited %d after "
                                            "SIGTERM (log %s)" % (inst.name, code, d.log_path))
                    d.kill()  # closes its log
                    inst.daemon, inst.leaving_since = None, None
            elif code is not None:
                self.violations.add("clean-exits", "%s instance exited on its own with %d "
                                    "(log %s):\n%s" % (inst.name, code, d.log_path,
                                                       d.log_text()[-1500:]))
                d.kill()
                inst.daemon = self.stack.start_daemon(self.config_path)
                self.figures["restarts"] += 1

    def do_kill(self, now):
        self.next["kill"] = now + self.gap(8, 18)
        live = [i for i in self.instances() if i.daemon is not None and i.daemon.alive()
                and i.leaving_since is None]
        if not live:
            return
        inst = self.rng.choice(live)
        inst.daemon.sigkill()
        self.figures["kills"] += 1
        if inst is self.second and self.rng.random() < 0.5:
            inst.daemon = None  # the second instance is gone for a while
            self.figures["second_killed"] += 1
            return
        inst.daemon = self.stack.start_daemon(self.config_path)
        self.figures["restarts"] += 1

    def do_member(self, now):
        """The second instance joins, or leaves (SIGTERM: a clean hand-over)."""
        self.next["member"] = now + self.gap(10, 25)
        s = self.second
        if s is None or s.leaving_since is not None:
            return
        if s.daemon is None:
            s.daemon = self.stack.start_daemon(self.config_path)
            self.figures["joins"] += 1
        else:
            s.daemon.send(signal.SIGTERM)
            s.leaving_since = now
            self.figures["leaves_sigterm"] += 1

    # ---- brokers ----

    def do_outage(self, now):
        self.next["outage"] = now + self.gap(15, 35)
        if self.outage is not None:
            return
        broker = self.rng.randint(1, BROKERS)
        led = leaders(self.stack, broker)
        reply = self.stack.kafka.command("broker down %d" % broker)
        assert reply == "OK broker %d down" % broker, reply
        self.outage = {"broker": broker, "led": led, "failover": self.rng.random() < 0.5,
                       "phase": "down", "at": now + self.gap(2, 6)}
        self.figures["outages"] += 1

    def step_outage(self, now):
        o = self.outage
        if o is None or now < o["at"]:
            return
        if o["phase"] == "down" and o["failover"]:
            to = self.rng.choice([b for b in range(1, BROKERS + 1) if b != o["broker"]])
            move_leaders(self.stack, o["led"], to)
            if self.coordinator == o["broker"]:
                assert self.stack.kafka.command(
                    "coordinator group %s %d" % (GROUP, to)).startswith("OK")
                self.coordinator = to
            self.figures["failovers"] += 1
            o["phase"], o["at"] = "moved", now + self.gap(2, 5)
            return
        self.broker_up(o["broker"])
        self.outage = None

    def broker_up(self, broker):
        reply = self.stack.kafka.command("broker up %d" % broker)
        assert reply == "OK broker %d up" % broker, reply

    def do_slow(self, now):
        """A slow broker: every answer of one broker delayed (acks of results, state records
        and commits arrive late, so duplicates land between them)."""
        self.next["slow"] = now + self.gap(10, 25)
        if self.slow is not None or self.storm_until is not None:
            return
        broker = self.rng.randint(1, BROKERS)
        self.set_rtt(broker, self.rng.choice((50, 150, 400)))
        self.slow = (broker, now + self.gap(4, 10))
        self.figures["slow_brokers"] += 1

    def do_storm(self, now):
        """One broker 150 ms slow for 4-8 s (so the acknowledgements of a request's done
        record and of its result, on different partitions, come apart) while every group
        event is sent again a few times within a second (traffic.Feeder.duplicate)."""
        self.next["storm"] = now + self.gap(20, 40)
        if self.storm_until is not None or self.slow is not None:
            return
        self.slow = (self.rng.randint(1, BROKERS), now + self.gap(4, 8))
        self.set_rtt(self.slow[0], 150)
        self.storm.set()
        self.storm_until = self.slow[1]
        self.figures["dup_storms"] += 1

    def end_storm(self):
        self.storm.clear()
        self.storm_until = None

    def set_rtt(self, broker, ms):
        reply = self.stack.kafka.command("rtt %d %d" % (broker, ms))
        assert reply.startswith("OK"), reply

    # ---- graph-sim ----

    def do_burst(self, now):
        self.next["burst"] = now + self.gap(10, 25)
        if self.burst_until is not None:
            return
        self.stack.graph.config(**{k: min(1.0, v * BURST_FACTOR)
                                   for k, v in BASE_FAULTS.items()})
        self.burst_until = now + self.gap(3, 8)
        self.figures["fault_bursts"] += 1

    def do_cut(self, now):
        self.next["cut"] = now + self.gap(10, 20)
        if self.cut_knob is None or self.cut_until is not None:
            return
        self.set_cut(True)
        self.cut_until = now + self.gap(5, 10)
        self.figures["h2_cut_periods"] += 1

    def set_cut(self, on):
        """Cuts (while on) with slower answers, so that many POSTs are in flight on the
        connection that goes away."""
        name, value = self.cut_knob
        self.stack.graph.config(**{name: value if on else None,
                                   "latency_ms": CUT_LATENCY_MS if on else BASE_LATENCY_MS})
        if not on:
            self.cut_until = None

    # ---- the end ----

    def calm(self):
        """Ends every fault: brokers up (leaders stay where a failover put them), no Graph
        faults, no cuts, a leaving instance gone, the primary running. The second instance
        stays as it is (in the group or not)."""
        if self.outage is not None:
            self.broker_up(self.outage["broker"])
            self.outage = None
        if self.slow is not None:
            self.set_rtt(self.slow[0], 0)
            self.slow = None
        if self.storm_until is not None:
            self.end_storm()
        self.stack.graph.config(**NO_FAULTS)
        self.burst_until = None
        if self.cut_knob is not None and self.cut_until is not None:
            self.set_cut(False)
        deadline = time.monotonic() + 70 * self.scale
        while self.second is not None and self.second.leaving_since is not None \
                and time.monotonic() < deadline:
            self.watch_exits()
            time.sleep(0.2)
        self.watch_exits()
        if self.primary.daemon is None:
            self.primary.daemon = self.stack.start_daemon(self.config_path)
