"""TLS: chatprovd against graph-sim over https with a private CA.

The right CA in [graph] ca_file: tokens and chats work. A wrong CA: nothing succeeds, Graph
and the token endpoint never see a request, and the log carries curl's own reason. Plain
http to loopback is allowed for tests but logged as a warning.
"""

import os
import ssl
import subprocess
import time

import pytest

from graphsim import GraphSim
from stack import CLIENT_ID, SECRET, TENANT, Stack, group_event

FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3,
                   "limit_per_tenant": 1000000, "limit_global": 1000000,
                   "clients": [{"tenant": TENANT, "client_id": CLIENT_ID, "secret": SECRET}]}


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_ca(d, name):
    key, cert = os.path.join(d, name + ".key"), os.path.join(d, name + ".pem")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=chatprov test " + name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    return key, cert


def make_server_cert(d, ca_key, ca_cert):
    key, csr, cert = (os.path.join(d, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                "basicConstraints=CA:FALSE\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)
    return key, cert


class TlsGraph:
    """graph-sim over https with a server certificate issued by a private CA."""

    def __init__(self, tmp):
        d = str(tmp)
        ca_key, self.ca = make_ca(d, "ca")
        _, self.wrong_ca = make_ca(d, "other-ca")
        key, cert = make_server_cert(d, ca_key, self.ca)
        ctx = ssl.create_default_context(cafile=self.ca)
        self.sim = GraphSim(ssl_context=ctx).start(
            config=FAST_OPERATIONS, args=["--tls-cert", cert, "--tls-key", key])
        assert self.sim.url.startswith("https://127.0.0.1:")

    def config(self, ca_file):
        return {"graph": {"base_url": self.sim.url, "ca_file": ca_file},
                "auth": {"authority_url": self.sim.url}}


def test_private_ca_works_and_plain_http_is_warned(tmp_path):
    tls = TlsGraph(tmp_path)
    try:
        with Stack(tmp_path) as stack:
            # First a plain-http daemon (the usual test setup): it must say so loudly.
            plain = stack.start_daemon()
            deadline = time.time() + 10
            while "plain http" not in plain.log_text() and time.time() < deadline:
                time.sleep(0.1)
            assert plain.stop() == 0
            warnings = [line for line in plain.log_text().splitlines()
                        if "[warning]" in line and "plain http" in line]
            assert any("base_url" in w for w in warnings), plain.log_text()[-2000:]
            assert any("authority_url" in w for w in warnings), plain.log_text()[-2000:]

            daemon = stack.start_daemon(**tls.config(tls.ca))
            events = [group_event(i, app=(i % 2 == 0)) for i in range(6)]
            stack.produce(events)
            results = stack.wait_results([e["id"] for e in events], timeout=60)
            assert daemon.stop() == 0
            assert "plain http" not in daemon.log_text()
        ledger = tls.sim.ledger()
    finally:
        tls.sim.stop()
    assert all(r["status"] == "succeeded" for r in results.values()), results
    assert ledger["token_grants"]["client_secret"] >= 1
    assert len(ledger["chat_posts"]) == len(events)


def test_wrong_ca_fails_closed(tmp_path):
    tls = TlsGraph(tmp_path)
    try:
        with Stack(tmp_path) as stack:
            daemon = stack.start_daemon(**tls.config(tls.wrong_ca))
            events = [group_event(i) for i in range(3)]
            stack.produce(events)
            deadline = time.time() + 20
            while "certificate" not in daemon.log_text() and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(2)
            stack.read_results(timeout=1)
            log = daemon.log_text()
            assert daemon.alive(), log[-2000:]
            daemon.stop()
        ledger = tls.sim.ledger()
    finally:
        tls.sim.stop()
    # Nothing succeeded; every result there is (if any) is a failure.
    for copies in stack.results.values():
        assert all(r["status"] != "succeeded" for r in copies), copies
    # Fails closed: the server never saw a request, not even for a token.
    assert sum(ledger["token_grants"].values()) == 0
    assert ledger["chat_posts"] == []
    assert ledger["requests"] == {} or all(not v for v in ledger["requests"].values())
    # The reason is curl's own text (CURLOPT_ERRORBUFFER), on an error/warning line.
    lines = [line for line in log.splitlines() if "certificate" in line]
    assert lines, log[-3000:]
    assert any("[error]" in line or "[warning]" in line for line in lines), lines
    assert any("SSL certificate problem" in line or "unable to get local issuer" in line
               for line in lines), lines


SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def private_system_store(bundle):
    """A daemon wrapper that runs chatprovd in a mount namespace of its own, where the
    system's CA bundle is `bundle` (root only: None when that cannot be done here)."""
    if not os.path.exists(SYSTEM_BUNDLE):
        return None
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return None
    return ("unshare -m sh -c 'mount --bind \"$0\" %s && exec \"$@\"' %s"
            % (SYSTEM_BUNDLE, bundle))


def test_ca_file_adds_to_the_system_store(tmp_path):
    """[graph] ca_file is an extra bundle: a server the system store trusts stays trusted
    with an unrelated ca_file set (with CURLOPT_CAINFO it would replace the store and fail)."""
    tls = TlsGraph(tmp_path)
    wrapper = private_system_store(tls.ca)
    if wrapper is None:
        tls.sim.stop()
        pytest.skip("needs root and unshare to give chatprovd a system CA store of its own")
    try:
        with Stack(tmp_path) as stack:
            daemon = stack.start_daemon(env={"CHATPROV_DAEMON_WRAPPER": wrapper},
                                        **tls.config(tls.wrong_ca))
            events = [group_event(i) for i in range(3)]
            stack.produce(events)
            results = stack.wait_results([e["id"] for e in events], timeout=60)
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
        ledger = tls.sim.ledger()
    finally:
        tls.sim.stop()
    assert all(r["status"] == "succeeded" for r in results.values()), results
    assert ledger["token_grants"]["client_secret"] >= 1
