"""Credentials end to end: chatprovd as a process against graph-sim, which verifies every
assertion. Certificates (PS256, RS256) and the failures people meet: a wrong key, a key that is
not the certificate's, an expired certificate, a wrong audience, a wrong secret, a wrong cloud.
Each is reported once with its AADSTS code and a hint, readiness stays false, and nothing
retries in a loop. Flows and rotation: test_credentials_flows.py."""

import http.client
import http.server
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from graphsim import wait_for
from stack import CLIENT_ID, TENANT, Stack, group_event

FAST_OPERATIONS = {"operation_in_progress_after_s": 0.1, "operation_done_after_s": 0.3}
TOKEN_ROUTE = "POST /{tenant}/oauth2/v2.0/token"
TENANT_GUID = "6babcaad-604b-40ac-a9d7-9fd97c0b779f"
CLOUDS = {
    "global": "https://graph.microsoft.com",
    "usgov": "https://graph.microsoft.us",
    "usgovdod": "https://dod-graph.microsoft.us",
    "china": "https://microsoftgraph.chinacloudapi.cn",
}


# ---- helpers ------------------------------------------------------------------------------

def openssl(*args, cwd=None):
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


def make_keypair(tmp, name):
    """A 2048-bit RSA key and a self-signed certificate valid for a day."""
    key, cert = os.path.join(tmp, name + ".key"), os.path.join(tmp, name + ".crt")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
            "-days", "1", "-subj", "/CN=chatprov-" + name)
    return cert, key


def make_expired_keypair(tmp, name):
    """A certificate that expired in 2020: `openssl ca` takes explicit dates."""
    d = os.path.join(tmp, name + "-ca")
    os.makedirs(d)
    key, csr, cert = (os.path.join(d, f) for f in ("k.pem", "r.csr", "c.pem"))
    openssl("genrsa", "-out", key, "2048")
    openssl("req", "-new", "-key", key, "-subj", "/CN=chatprov-expired", "-out", csr)
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("01\n")
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca = x\n[x]\ndir = .\ndatabase = ./index.txt\n"
                "new_certs_dir = .\nserial = ./serial\ndefault_md = sha256\npolicy = p\n"
                "[p]\ncommonName = supplied\n")
    openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", key, "-startdate",
            "20200101000000Z", "-enddate", "20200102000000Z", "-in", csr, "-out", cert,
            "-notext", cwd=d)
    return cert, key


def cert_auth(cert, key, alg):
    return {"client_secret_file": "", "certificate_file": cert, "private_key_file": key,
            "assertion_alg": alg}


def metrics_port(daemon):
    text = wait_for(lambda: re.search(r"metrics on port (\d+)", daemon.log_text()), 10)
    assert text, daemon.log_text()
    return int(text.group(1))


def readyz(daemon):
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port(daemon), timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    finally:
        conn.close()


def token_requests(ledger):
    return sum(ledger["requests"].get(TOKEN_ROUTE, {}).values())


def stop(daemon):
    code = daemon.stop()
    assert code == 0, daemon.log_text()[-3000:]


def run_events(stack, first, n, **kw):
    events = [group_event(first + i, **kw) for i in range(n)]
    stack.produce(events)
    results = stack.wait_results([e["id"] for e in events], timeout=60)
    for r in results.values():
        assert r["status"] == "succeeded", r
    return results


def assert_rejected_once(stack, daemon, code, hint, requests_allowed):
    """The profile's token failure: one log line with code and hint, not ready, no busy loop.

    Events are sent meanwhile, so a per-event report would show up as repeated lines."""
    stack.produce([group_event(900 + i) for i in range(5)])
    assert wait_for(lambda: code in daemon.log_text(), 15), daemon.log_text()[-3000:]
    before = token_requests(stack.graph.ledger())
    time.sleep(3)
    after = token_requests(stack.graph.ledger())
    log = daemon.log_text()
    lines = [line for line in log.splitlines() if code in line]
    assert len(lines) == 1, lines
    assert hint in lines[0], lines[0]
    assert "credentials rejected" in lines[0]
    assert readyz(daemon) != 200
    assert after - before == 0, "token requests repeated while rejected"
    assert after <= requests_allowed
    assert not stack.read_results(timeout=0.5), "events of a rejected profile got results"
    stop(daemon)


@pytest.fixture
def keys(tmp_path):
    d = str(tmp_path)
    return {"a": make_keypair(d, "a"), "b": make_keypair(d, "b"),
            "expired": make_expired_keypair(d, "expired")}


def cert_clients(cert):
    return {"clients": [{"tenant": TENANT, "client_id": CLIENT_ID, "tenant_id": TENANT_GUID,
                         "certificate_pem_file": cert}]}


# ---- certificates -------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["PS256", "RS256"])
def test_certificate(tmp_path, keys, alg):
    """The signed assertion is accepted by graph-sim; events go through with its token."""
    cert, key = keys["a"]
    config = dict(FAST_OPERATIONS, **cert_clients(cert))
    with Stack(tmp_path, sim_config=config) as stack:
        daemon = stack.start_daemon(auth=cert_auth(cert, key, alg))
        run_events(stack, 0, 5)
        ledger = stack.graph.ledger()
        stop(daemon)
    assert ledger["token_grants"]["client_assertion_certificate"] >= 1
    assert ledger["token_grants"]["client_secret"] == 0
    assert ledger["token_failures"] == {}


def test_certificate_wrong_key(tmp_path, keys):
    """A key pair the app does not know: AADSTS700027 and its hint, once."""
    cert_a, _ = keys["a"]
    cert_b, key_b = keys["b"]
    with Stack(tmp_path, sim_config=cert_clients(cert_a)) as stack:
        daemon = stack.start_daemon(auth=cert_auth(cert_b, key_b, "PS256"))
        assert_rejected_once(stack, daemon, "AADSTS700027",
                             "certificate not registered on the app", 1)
        assert stack.graph.ledger()["token_failures"] == {"AADSTS700027": 1}


def test_certificate_key_mismatch_and_expired(tmp_path, keys):
    """Local problems are found before any request: a key that is not the certificate's,
    then (after SIGHUP) an expired certificate; each reported once, with what to do."""
    cert_a, key_a = keys["a"]
    _, key_b = keys["b"]
    cert_x, key_x = keys["expired"]
    with Stack(tmp_path, sim_config=cert_clients(cert_a)) as stack:
        path = stack.write_config(auth=cert_auth(cert_a, key_b, "RS256"))
        daemon = stack.start_daemon(config_path=path)
        needle = "does not match certificate"
        assert wait_for(lambda: needle in daemon.log_text(), 15), daemon.log_text()
        stack.write_config(auth=cert_auth(cert_x, key_x, "RS256"))
        daemon.send(signal.SIGHUP)
        assert wait_for(lambda: "expired on" in daemon.log_text(), 15), daemon.log_text()
        stack.produce([group_event(i) for i in range(5)])
        time.sleep(2)
        log = daemon.log_text()
        assert readyz(daemon) != 200
        stop(daemon)
        ledger = stack.graph.ledger()
    assert len([line for line in log.splitlines() if needle in line]) == 1, log
    expired = [line for line in log.splitlines() if "expired on" in line]
    assert len(expired) == 1, log
    assert "renew it and update certificate_file" in expired[0]
    assert "Jan  2 00:00:00 2020 GMT" in expired[0]
    assert token_requests(ledger) == 0


class PathRewriter(http.server.BaseHTTPRequestHandler):
    """A reverse proxy that maps the tenant's name in the token path to its GUID: the
    assertion's aud (the URL chatprovd posted to) no longer matches the path graph-sim sees."""
    upstream = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.replace("/" + TENANT + "/", "/" + TENANT_GUID + "/")
        req = urllib.request.Request(self.upstream + path, data=body, method="POST",
                                     headers={"Content-Type": self.headers["Content-Type"]})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_certificate_wrong_audience(tmp_path, keys):
    """aud is not the endpoint Entra received the assertion on: AADSTS700023 and a hint."""
    cert, key = keys["a"]
    with Stack(tmp_path, sim_config=cert_clients(cert)) as stack:
        handler = type("H", (PathRewriter,), {"upstream": stack.graph.url})
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            auth = dict(cert_auth(cert, key, "PS256"),
                        authority_url="http://127.0.0.1:%d" % proxy.server_address[1])
            daemon = stack.start_daemon(auth=auth)
            assert_rejected_once(stack, daemon, "AADSTS700023",
                                 "audience is not this token endpoint", 1)
        finally:
            proxy.shutdown()
            proxy.server_close()


def test_wrong_secret(tmp_path):
    """The most common mistake: a wrong client secret, AADSTS7000215, reported once."""
    with Stack(tmp_path) as stack:
        with open(stack.secret_path, "w") as f:
            f.write("not-the-secret\n")
        daemon = stack.start_daemon()
        assert_rejected_once(stack, daemon, "AADSTS7000215", "invalid client secret", 1)


def test_wrong_cloud_scope(tmp_path):
    """A daemon set to the wrong cloud asks for the wrong scope: AADSTS70011, 'wrong cloud?'."""
    with Stack(tmp_path, sim_config={"expected_scope": CLOUDS["usgov"] + "/.default"}) as stack:
        daemon = stack.start_daemon(graph={"cloud": "global"})
        assert_rejected_once(stack, daemon, "AADSTS70011", "wrong cloud?", 1)
