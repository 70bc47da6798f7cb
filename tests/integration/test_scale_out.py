"""Scale-out and broker failures (issue 5): three chatprovd instances in one group lose two
members mid-run (SIGTERM, SIGKILL); a broker of a 3-broker kafka-mock goes down, its
partitions fail over, and it comes back. docs/crash-safety.md says what each test proves."""

import signal
import time

from chaos import (CHAOS_SIM, FAST_GROUP, Trickle, check_outcomes, drain_results, leaders,
                   mixed_events, move_leaders, wait_for_log)
from stack import Stack

GROUP = "chatprovd-test"


def read_for(stack, seconds):
    """Keeps reading results for `seconds` (so the reader never falls behind)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stack.read_results(timeout=0.3)


def test_three_instances_lose_two(tmp_path):
    """12 partitions shared by three instances; 3,000 events arrive over 20 s; one instance
    gets SIGTERM at ~6 s and another SIGKILL at ~11 s: the third takes everything over."""
    events, expected = mixed_events(3000, seed=23)
    with Stack(tmp_path, partitions=12, sim_config=CHAOS_SIM) as stack:
        daemons = stack.start_daemons(3, **FAST_GROUP)
        for d in daemons:
            assert wait_for_log(d, "assigned", 30), "no partitions:\n" + d.log_text()[-2000:]
        feeder = Trickle(stack, events, seconds=20)
        feeder.start()
        read_for(stack, 6)
        before_term = len(stack.results)
        assert daemons[0].stop(signal.SIGTERM) == 0, daemons[0].log_text()[-3000:]
        read_for(stack, 5)
        assert daemons[1].sigkill() == -9
        at_kill = len(stack.results)
        feeder.finish()
        stack.wait_results(expected, timeout=150)
        assert daemons[2].stop(signal.SIGTERM) == 0, daemons[2].log_text()[-3000:]
        drain_results(stack)
        ledger = stack.graph.ledger()

    print("results before SIGTERM %d, at SIGKILL %d" % (before_term, at_kill))
    assert 0 < before_term < at_kill < len(expected), (before_term, at_kill)
    check_outcomes(stack, ledger, expected)


def test_broker_down_failover_and_up(tmp_path):
    """3 brokers; 1,500 events over 16 s. Broker 1 (the group's coordinator and leader of a
    third of the partitions of every topic) goes down; 4 s later its partitions and the
    group move to broker 2; 4 s after that broker 1 is back: nothing lost, nothing twice."""
    events, expected = mixed_events(1500, seed=31)
    with Stack(tmp_path, brokers=3, sim_config=CHAOS_SIM) as stack:
        assert stack.kafka.command("coordinator group %s 1" % GROUP).startswith("OK")
        stack.start_daemon(**FAST_GROUP)
        feeder = Trickle(stack, events, seconds=16)
        feeder.start()
        read_for(stack, 5)
        led = leaders(stack, 1)
        assert led, "broker 1 leads nothing"
        before_down = len(stack.results)
        assert stack.kafka.command("broker down 1") == "OK broker 1 down"
        read_for(stack, 4)
        move_leaders(stack, led, 2)
        assert stack.kafka.command("coordinator group %s 2" % GROUP).startswith("OK")
        read_for(stack, 4)
        assert stack.kafka.command("broker up 1") == "OK broker 1 up"
        at_up = len(stack.results)
        feeder.finish()
        stack.wait_results(expected, timeout=120)
        assert stack.daemon.stop(signal.SIGTERM) == 0, stack.daemon.log_text()[-3000:]
        drain_results(stack)
        ledger = stack.graph.ledger()

    print("results before the outage %d, when broker 1 came back %d" % (before_down, at_up))
    assert 0 < before_down < at_up < len(expected), (before_down, at_up)
    check_outcomes(stack, ledger, expected)
