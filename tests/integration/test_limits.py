"""Graph's limits from the first second and across instances (issue 15): [limits] configured
far above Graph's real limit must not burst or send inside a Retry-After; several instances
of one group share [limits] instead of each sending all of it. graph-sim counts 429s and
records every request that arrives inside a Retry-After it gave (ledger
retry_after_violators).

Figures: pytest -s, or $CHATPROV_BUILD_DIR/test-figures/limits.txt."""

import re
import time

from chaos import FAST_GROUP
from stack import Stack, group_event
from throttling_figures import drain_backlog, format_figures, post_figures, report

SHARE_LINE = re.compile(r"limits: this instance owns (\d+) of (\d+) partitions")
OWNERSHIP_LINE = re.compile(r"(assigned|revoked|lost) chat\.requests \[(\d+)\]")


def check_each_succeeded_once(stack, events, results):
    assert all(r["status"] == "succeeded" for r in results.values())
    assert all(len(stack.results[e["id"]]) == 1 for e in events)


def test_configured_above_the_real_limit(tmp_path):
    """[limits] 200 per 10 s against Graph's 20 per 2 s, 300 events of one tenant: no burst of
    the configured bucket, no request inside a Retry-After, at most one 429 per 10 chats."""
    sim = {"limit_per_tenant": 20, "limit_window_s": 2}
    limits = {"chat_creates_per_10s_per_tenant": "200", "window_s": "10"}
    events = [group_event(i, topic="Above %d" % i) for i in range(300)]
    stack, results, ledger = drain_backlog(tmp_path, sim, limits, events)

    fig = post_figures(ledger["chat_posts"], 10.0, 2)
    first = min(p["at"] for p in ledger["chat_posts"])
    fig["first_20ms"] = sum(1 for p in ledger["chat_posts"] if p["at"] - first < 20)
    fig["retry_after_violations"] = ledger["retry_after_violations"]
    report("limits", "above the limit: events=300 %s" % format_figures(fig))

    check_each_succeeded_once(stack, events, results)
    assert fig["created"] == len(events)
    assert fig["first_20ms"] <= 5, fig  # the slow start's 4, not the configured 200
    # Requests are paced >= 50 ms apart here: one that arrives inside a window within 50 ms
    # of the 429 was on its way before the 429 could be read (a stalled machine); any later
    # one was sent by a daemon that knew (measured: none at all).
    violators = ledger.get("retry_after_violators", [])
    assert not [v for v in violators if v["after_given_ms"] > 50], violators[:20]
    assert ledger["retry_after_violations"] <= 1, violators[:20]
    assert fig["throttled_429"] <= len(events) / 10, fig


def owned(daemon):
    """The input partitions a daemon holds now, from its log's assigned/revoked/lost lines."""
    held = set()
    for verb, part in OWNERSHIP_LINE.findall(daemon.log_text()):
        (held.add if verb == "assigned" else held.discard)(int(part))
    return held


def wait_until_settled(daemons, partitions, timeout=60):
    """Until the group settled: every instance owns partitions, together all of them, and
    (2 s later) still the same."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        now = [owned(d) for d in daemons]
        if all(now) and sorted(p for s in now for p in s) == list(range(partitions)):
            if now == last:
                return [len(s) for s in now]
            last = now
            time.sleep(2)
            continue
        last = None
        time.sleep(0.2)
    raise AssertionError("the group never settled: %s\n%s" % (
        [owned(d) for d in daemons], daemons[0].log_text()[-2000:]))


def test_three_instances_share_the_limits(tmp_path):
    """Three instances, 12 partitions, each configured with the tenant's real limit (20 per
    1 s): together they send it once, not three times. 480 events of one tenant, spread
    evenly over the partitions: goodput >= 90 % of the limit, <= 2 429s per 100 chats, no
    request inside a Retry-After."""
    limit, window, partitions = 20, 1, 12
    sim = {"limit_per_tenant": limit, "limit_window_s": window}
    limits = {"chat_creates_per_10s_per_tenant": str(limit), "window_s": str(window)}
    events = [group_event(i, topic="Shared %d" % i) for i in range(480)]
    with Stack(tmp_path, partitions=partitions, sim_config=sim) as stack:
        daemons = stack.start_daemons(3, limits=limits, **FAST_GROUP)
        counts = wait_until_settled(daemons, partitions)
        logged = [SHARE_LINE.findall(d.log_text())[-1:] for d in daemons]
        for i in range(partitions):
            stack.produce(events[i::partitions], partition=i, flush=False)
        stack.flush_producer()
        results = stack.wait_results([e["id"] for e in events], timeout=120)
        ledger = stack.graph.ledger()
        for d in daemons:
            assert d.stop() == 0, d.log_text()[-3000:]
        stack.read_results(timeout=0.5)

    fig = post_figures(ledger["chat_posts"], limit / window, window)
    fig["retry_after_violations"] = ledger["retry_after_violations"]
    report("limits", "3 instances %s: events=480 %s" % (counts, format_figures(fig)))

    check_each_succeeded_once(stack, events, results)
    assert fig["created"] == len(events)
    assert ledger["retry_after_violations"] == 0, ledger.get("retry_after_violators", [])[:20]
    assert fig["throttled_429"] <= 0.02 * len(events), fig
    assert fig["goodput_share"] >= 0.90, fig
    # each instance said which share of [limits] it takes
    assert logged == [[(str(n), str(partitions))] for n in counts], logged


def two_instances_above_the_limit(tmp_path, limits_topic):
    """Two instances, 12 partitions, each configured far above Graph's real limit (200 per
    10 s against 20 per 2 s): together they draw 429s. limits_topic: "" or a topic the stack
    creates. Returns (stack, events, results, ledger, daemon logs)."""
    partitions = 12
    sim = {"limit_per_tenant": 20, "limit_window_s": 2}
    limits = {"chat_creates_per_10s_per_tenant": "200", "window_s": "10"}
    events = [group_event(i, topic="Told %d" % i) for i in range(240)]
    with Stack(tmp_path, partitions=partitions, sim_config=sim) as stack:
        if limits_topic:
            stack.kafka.command("create-topic %s 3" % limits_topic)
        daemons = stack.start_daemons(2, limits=limits, kafka={"limits_topic": limits_topic},
                                      **FAST_GROUP)
        wait_until_settled(daemons, partitions)
        for i in range(partitions):
            stack.produce(events[i::partitions], partition=i, flush=False)
        stack.flush_producer()
        results = stack.wait_results([e["id"] for e in events], timeout=150)
        ledger = stack.graph.ledger()
        logs = [d.log_text() for d in daemons]
        for d, log in zip(daemons, logs):
            assert d.stop() == 0, log[-3000:]
        stack.read_results(timeout=0.5)
    return stack, events, results, ledger, logs


# A block read through the topic arrives within a produce (linger 5 ms) and a fetch (at most
# 50 ms of fetch.wait.max.ms), which wakes the Kafka thread (measured: 20-60 ms, from the first
# 429 on); requests the other instance had on the wire before then are not ones it could have
# held. (Before the writer learned the topic at start-up, the first blocks took 180-620 ms:
# librdkafka's topic scan.)
TOLD_WITHIN_MS = 500


def test_a_429_on_one_instance_holds_the_tenant_on_the_other(tmp_path):
    """[kafka] limits_topic: the instance Graph throttles tells the other, which holds the
    tenant for the same Retry-After. Without the topic the other keeps sending into the
    window; with it, nothing arrives inside a window later than TOLD_WITHIN_MS after it was
    given, and fewer requests arrive inside one at all."""
    figures = {}
    for name, topic in (("alone", ""), ("shared", "chat.limits")):
        (tmp_path / name).mkdir()
        stack, events, results, ledger, logs = two_instances_above_the_limit(
            tmp_path / name, topic)
        check_each_succeeded_once(stack, events, results)
        violators = ledger.get("retry_after_violators", [])
        late = [v for v in violators if v["after_given_ms"] > TOLD_WITHIN_MS]
        applied = sum(log.count("another instance was throttled (429)") for log in logs)
        figures[name] = {"violations": ledger["retry_after_violations"], "late": len(late),
                         "applied": applied,
                         "throttled_429": sum(1 for p in ledger["chat_posts"]
                                              if p["status"] == 429)}
        report("limits", "2 instances above the limit, Retry-After %s: events=240 %s"
               % (name, figures[name]))
        if topic:
            assert "Retry-After shared through chat.limits" in logs[0], logs[0][-2000:]
            assert applied > 0, figures
            assert not late, late[:20]
    assert figures["alone"]["applied"] == 0, figures
    # Without the topic the other instance's requests arrive inside windows long after they
    # were given (measured: dozens); with it, none late and fewer in all.
    assert figures["alone"]["late"] > 0, figures
    assert figures["shared"]["violations"] < figures["alone"]["violations"], figures
