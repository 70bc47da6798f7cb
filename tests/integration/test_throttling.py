"""Throttling against graph-sim's token buckets: goodput close to the limit, few 429s, no
request inside an advertised Retry-After window. Graph's window (20 per 10 s) is scaled down to
20 per 2 s for test time; chatprovd is configured with the same limit and window.

Figures: pytest -s, or $CHATPROV_BUILD_DIR/test-figures/throttling.txt."""

import pytest

from stack import group_event
from throttling_figures import drain_backlog, format_figures, post_figures, report

LIMIT = 20
WINDOW_S = 2
LIMIT_PER_S = LIMIT / WINDOW_S
EVENTS = 300
DAEMON_LIMITS = {"chat_creates_per_10s_per_tenant": str(LIMIT), "window_s": str(WINDOW_S)}
@pytest.mark.parametrize("mode", ["integer", "fractional", "absent"])
def test_one_tenant_backlog_runs_at_the_limit(tmp_path, mode):
    """300 events for one tenant limited to 20 per 2 s: goodput >= 95 % of 10/s, <= 5 % 429s,
    zero Retry-After violations, every event succeeded once."""
    sim = {"limit_per_tenant": LIMIT, "limit_window_s": WINDOW_S, "retry_after_mode": mode}
    events = [group_event(i, topic="Throttled %d" % i) for i in range(EVENTS)]
    stack, results, ledger = drain_backlog(tmp_path, sim, DAEMON_LIMITS, events, timeout=120)

    fig = post_figures(ledger["chat_posts"], LIMIT_PER_S, WINDOW_S)
    fig["retry_after_violations"] = ledger["retry_after_violations"]
    report("throttling", "retry_after=%s events=%d %s" % (mode, EVENTS, format_figures(fig)))

    assert all(r["status"] == "succeeded" for r in results.values())
    assert all(len(stack.results[e["id"]]) == 1 for e in events)
    assert fig["created"] == EVENTS
    assert ledger["retry_after_violations"] == 0
    assert fig["throttled_share"] <= 0.05, fig
    assert fig["goodput_share"] >= 0.95, fig
    assert fig["steady_share"] >= 0.95, fig
