"""Figures of a throttled run, computed from graph-sim's ledger (shared by the throttling and
fault tests). Printed (pytest -s) and appended to $CHATPROV_BUILD_DIR/test-figures/<name>.txt."""

import os
import uuid

from stack import Stack

CREATED = (201, 202)
CLIENT_REQUEST_ID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chatprov:client-request-id")


def client_request_id(event_id):
    return str(uuid.uuid5(CLIENT_REQUEST_ID_NS, event_id))


def drain_backlog(tmp_path, sim, limits, events, timeout=150):
    """One daemon with these [limits] drains `events` against graph-sim with `sim`'s knobs;
    returns (stack, results, ledger) once it stopped cleanly."""
    with Stack(tmp_path, sim_config=sim) as stack:
        stack.start_daemon(limits=limits)
        stack.produce(events)
        results = stack.wait_results([e["id"] for e in events], timeout=timeout)
        ledger = stack.graph.ledger()
        assert stack.daemon.stop() == 0, stack.daemon.log_text()[-3000:]
        stack.read_results(timeout=0.5)
    return stack, results, ledger


def post_figures(posts, limit_per_s, window_s):
    """Goodput and 429 share of a list of ledger chat_posts (one tenant, or a subset).

    goodput: created chats per second from the first POST to the last created chat, counting
    intervals ((n - 1) / span). steady: the same after the first window, when the initial
    burst (a full bucket, Graph's too) is spent: the rate the scheduler sustains."""
    created = sorted(p["at"] for p in posts if p["status"] in CREATED)
    first = min(p["at"] for p in posts)
    span_s = (created[-1] - first) / 1000.0
    steady_from = first + window_s * 1000
    steady = [t for t in created if t >= steady_from]
    steady_span_s = (created[-1] - steady_from) / 1000.0
    throttled = sum(1 for p in posts if p["status"] == 429)
    fig = {
        "requests": len(posts),
        "created": len(created),
        "throttled_429": throttled,
        "throttled_share": throttled / len(posts),
        "span_s": span_s,
        "goodput_per_s": (len(created) - 1) / span_s if span_s > 0 else 0.0,
        "steady_per_s": len(steady) / steady_span_s if steady_span_s > 0 else 0.0,
    }
    fig["goodput_share"] = fig["goodput_per_s"] / limit_per_s
    fig["steady_share"] = fig["steady_per_s"] / limit_per_s
    return fig


def format_figures(fig):
    parts = []
    for key, value in fig.items():
        if isinstance(value, float):
            if key.endswith("share"):
                parts.append("%s=%.1f%%" % (key, value * 100))
            else:
                parts.append("%s=%.2f" % (key, value))
        else:
            parts.append("%s=%s" % (key, value))
    return " ".join(parts)


def report(name, line):
    """Prints a figure line and appends it to the build's test-figures/<name>.txt."""
    print("\n[figures] %s: %s" % (name, line))
    build = os.environ.get("CHATPROV_BUILD_DIR")
    if not build:
        return
    folder = os.path.join(build, "test-figures")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".txt"), "a") as f:
        f.write(line + "\n")
