"""graph-sim: throttling arithmetic, Retry-After forms and violations, faults, latency, hostile
modes, config, process lifecycle."""
import http.client
import json
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest

from graphsim import (APP_ID, USER_A, USER_B, USER_C, GraphSim, chat_body)

CRID = "0b8e7a52-9c31-4d6f-a2e4-5f6a7b8c9d0e"


@pytest.fixture
def sim():
    s = GraphSim().start()
    yield s
    rc = s.stop()
    assert rc in (0, None), (rc, s.stderr_text[-2000:])  # None: the test stopped it itself


@pytest.fixture
def tok(sim):
    return sim.token()


def group(topic="t"):
    return chat_body("group", [USER_A, USER_B], topic=topic)


def test_throttle_exact_limit_then_refill(sim, tok):
    sim.config(limit_per_tenant=5, limit_window_s=1)
    codes = [sim.post_chat(group(), tok).status for _ in range(7)]
    assert codes == [201] * 5 + [429] * 2
    r = sim.post_chat(group(), tok)
    assert r.status == 429 and r.json()["error"]["code"] == "TooManyRequests"
    assert r.headers["retry-after"] == "1"
    time.sleep(0.5)  # refill 5/s: 2.5 tokens, so exactly two more pass
    codes = [sim.post_chat(group(), tok).status for _ in range(3)]
    assert codes == [201, 201, 429]
    led = sim.ledger()
    assert led["throttled"] == 4 and len(led["chats"]) == 7
    assert led["requests"]["POST /{version}/chats"] == {"201": 7, "429": 4}


def test_retry_after_fractional_and_absent(sim, tok):
    sim.config(limit_per_tenant=2, limit_window_s=4, retry_after_mode="fractional")
    sim.post_chat(group(), tok)
    sim.post_chat(group(), tok)
    r = sim.post_chat(group(), tok)
    assert r.status == 429
    ra = float(r.headers["retry-after"])
    assert re.match(r"^\d+\.\d{3}$", r.headers["retry-after"]) and 1.8 < ra <= 2.0
    sim.config(limit_per_tenant=1, limit_window_s=10, retry_after_mode="absent")
    sim.post_chat(group(), tok)
    r = sim.post_chat(group(), tok)
    assert r.status == 429 and "retry-after" not in r.headers


def test_global_bucket_across_tenants(sim):
    sim.config(limit_per_tenant=3, limit_global=4, limit_window_s=10, clients=[
        {"tenant": "a.onmicrosoft.com", "client_id": "ca", "secret": "s"},
        {"tenant": "b.onmicrosoft.com", "client_id": "cb", "secret": "s"}])
    ta = sim.token("a.onmicrosoft.com", "ca", "s")
    tb = sim.token("b.onmicrosoft.com", "cb", "s")
    a = [sim.post_chat(group(), ta).status for _ in range(4)]
    b = [sim.post_chat(group(), tb).status for _ in range(2)]
    assert a == [201, 201, 201, 429] and b == [201, 429]
    assert {c["tenant"] for c in sim.ledger()["chats"]} == {"a.onmicrosoft.com",
                                                             "b.onmicrosoft.com"}


LATE_CRID = "4f2b1c3e-0d5a-4e6f-8a7b-9c0d1e2f3a4b"


def test_retry_after_violations(sim, tok):
    sim.config(limit_per_tenant=1, limit_window_s=0.5)
    assert sim.post_chat(group(), tok).status == 201
    r = sim.post_chat(group(), tok)
    assert r.status == 429 and r.headers["retry-after"] == "1"
    sim.post_chat(group(), tok)  # ignores Retry-After
    time.sleep(0.2)
    sim.post_chat(group(), tok, headers={"client-request-id": LATE_CRID})  # again, 200 ms later
    ledger = sim.ledger()
    assert ledger["retry_after_violations"] == 2
    violators = ledger["retry_after_violators"]
    assert len(violators) == 2 and violators[1]["client_request_id"] == LATE_CRID
    assert 200 <= violators[1]["after_given_ms"] < 1000, violators
    assert 990 <= violators[1]["after_given_ms"] + violators[1]["before_end_ms"] <= 1000
    assert violators[1]["tenant"] == violators[0]["tenant"]
    time.sleep(1.0)
    assert sim.post_chat(group(), tok).status == 201
    assert sim.ledger()["retry_after_violations"] == 2


@pytest.mark.parametrize("knob,status,code", [
    ("fault_503_rate", 503, "ServiceNotAvailable"),
    ("fault_504_rate", 504, "GatewayTimeout"),
    ("fault_500_rate", 500, "InternalServerError"),
])
def test_error_faults(sim, tok, knob, status, code):
    sim.config(**{knob: 1.0, "fault_503_retry_after_s": 3})
    r = sim.post_chat(group(), tok, headers={"client-request-id": CRID})
    assert r.status == status and r.json()["error"]["code"] == code
    if status == 503:
        assert r.headers["retry-after"] == "3"
    led = sim.ledger()
    assert led["chats"] == []
    assert led["chat_posts"][0]["status"] == status
    assert led["chat_posts"][0]["clientRequestId"] == CRID


def test_created_504(sim, tok):
    sim.config(fault_created_504_rate=1.0)
    r = sim.post_chat(group("really made"), tok, headers={"client-request-id": CRID})
    assert r.status == 504
    led = sim.ledger()
    assert [c["topic"] for c in led["chats"]] == ["really made"]
    assert led["chat_posts"][0]["fault"] == "created_504"
    found = sim.request("GET", "/v1.0/users/%s/chats?$filter=topic%%20eq%%20%%27really%%20made%%27"
                        % USER_A, token=tok).json()["value"]
    assert len(found) == 1
    sim.post_chat(group("really made"), tok, headers={"client-request-id": CRID})
    assert sim.ledger()["duplicate_group_chats"] == 1


def raw_post(sim, tok, timeout=5.0):
    u = urllib.parse.urlsplit(sim.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", "/v1.0/chats", body=json.dumps(group()),
                     headers={"Authorization": "Bearer " + tok,
                              "Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_reset_fault(sim, tok):
    sim.config(fault_reset_rate=1.0)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        raw_post(sim, tok)
    led = sim.ledger()
    assert led["requests"]["POST /{version}/chats"] == {"reset": 1}
    assert led["chat_posts"][0]["fault"] == "reset"


def test_hang_does_not_block_others(sim, tok):
    sim.config(fault_hang_rate=1.0, hang_s=1.0)
    t0 = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError)):
        raw_post(sim, tok, timeout=0.3)
    # While it hangs, other requests are served at once.
    assert sim.request("GET", "/_sim/health").status == 200
    assert time.monotonic() - t0 < 0.9
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        raw_post(sim, tok, timeout=3)  # closed without an answer after hang_s
    assert time.monotonic() - t0 >= 1.2


def test_latency_with_many_in_flight(sim, tok):
    sim.config(latency_ms=200, limit_per_tenant=1e6, limit_global=1e6)
    n = 100
    results = []

    def one():
        results.append(sim.post_chat(chat_body("oneOnOne", [USER_A, USER_C]), tok).status)

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert results == [201] * n
    assert 0.2 <= elapsed < 2.0, elapsed  # 2 worker threads: only suspend/resume does this


def test_operation_get_faults(sim, tok):
    r = sim.post_chat(chat_body("group", [USER_A, USER_B], apps=[APP_ID]), tok)
    loc = r.headers["location"]
    sim.config(fault_503_rate=1.0)
    assert sim.request("GET", "/v1.0" + loc, token=tok).status == 503


@pytest.mark.parametrize("mode", ["invalid_json_201", "201_without_id"])
def test_hostile_bodies(sim, tok, mode):
    sim.config(hostile_mode=mode)
    r = sim.post_chat(group(), tok)
    assert r.status == 201
    if mode == "invalid_json_201":
        with pytest.raises(ValueError):
            json.loads(r.body)
    else:
        assert "id" not in r.json()


def test_hostile_oversized_and_endless(sim, tok):
    sim.config(hostile_mode="oversized_body")
    r = sim.post_chat(group(), tok)
    assert r.status == 201 and len(r.body) == 20 * 1024 * 1024
    assert json.loads(r.body)["pad"].startswith("xxx")
    sim.config(hostile_mode="endless_body")
    u = urllib.parse.urlsplit(sim.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.request("POST", "/v1.0/chats", body=json.dumps(group()),
                 headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 201 and len(resp.read(5 * 1024 * 1024)) == 5 * 1024 * 1024
    conn.close()


def test_hostile_location_and_retry_after(sim, tok):
    sim.config(hostile_mode="foreign_location")
    r = sim.post_chat(chat_body("group", [USER_A, USER_B], apps=[APP_ID]), tok)
    assert r.status == 202 and r.headers["location"].startswith("https://graph.attacker.example/")
    sim.config(hostile_mode="retry_after_year")
    r = sim.post_chat(group(), tok)
    assert r.status == 429 and r.headers["retry-after"] == "31536000"


def test_config_validation_and_reset_to_default(sim):
    for bad in ({"nope": 1}, {"fault_503_rate": 2}, {"limit_per_tenant": "x"},
                {"retry_after_mode": "sometimes"}, {"clients": [{"tenant": "t"}]},
                {"clients": [{"tenant": "t", "client_id": "c",
                              "certificate_pem_file": "/nonexistent"}]}):
        r = sim.request("POST", "/_sim/config", body=bad)
        assert r.status == 400 and r.json()["error"], bad
    assert sim.request("POST", "/_sim/config", body="{x",
                       headers={"Content-Type": "application/json"}).status == 400
    assert sim.config(limit_per_tenant=7)["limit_per_tenant"] == 7
    assert sim.config(limit_per_tenant=None)["limit_per_tenant"] == 20
    assert sim.request("GET", "/_sim/config").json()["limit_global"] == 200


def test_config_file_and_bad_config():
    with GraphSim().start(config={"limit_per_tenant": 2}) as s:
        assert s.request("GET", "/_sim/config").json()["limit_per_tenant"] == 2
    with pytest.raises(RuntimeError):
        GraphSim().start(config={"limit_per_tenant": -1})


def test_body_too_large(sim, tok):
    r = sim.request("POST", "/v1.0/chats", body="x" * (1024 * 1024 + 1), token=tok,
                    headers={"Content-Type": "application/json"})
    assert r.status == 413


def test_sigterm_with_suspended_requests_exits_zero(tok, sim):
    sim.config(latency_ms=30000)
    outcome = []

    def waiter():
        try:
            outcome.append(raw_post(sim, tok, 10))
        except (OSError, http.client.HTTPException) as e:
            outcome.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert sim.stop() == 0
    assert time.monotonic() - t0 < 3
    t.join()
    assert outcome  # answered early or closed: either way not left hanging


def test_tls():
    d = tempfile.mkdtemp()
    key, cert = d + "/key.pem", d + "/cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=cert)
    s = GraphSim(ssl_context=ctx).start(args=["--tls-cert", cert, "--tls-key", key])
    try:
        assert s.url.startswith("https://127.0.0.1:")
        tok = s.token()
        assert s.post_chat(group(), tok).status == 201
        with pytest.raises(ssl.SSLError):
            u = urllib.parse.urlsplit(s.url)
            c = http.client.HTTPSConnection(u.hostname, u.port, timeout=5,
                                            context=ssl.create_default_context())
            c.request("GET", "/_sim/health")
    finally:
        assert s.stop() == 0
