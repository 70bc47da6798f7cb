"""Credentials end to end: chatprovd as a process against graph-sim, which verifies every
assertion. Certificates (PS256, RS256), a wrong key, an expired certificate, a wrong audience,
a rotated federated token file, IMDS, each national cloud's URLs and scope, and SIGHUP
rotation of a client secret."""

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
APP = "05F59CEC-A742-4A50-A62E-202A57E478A4"
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


# ---- workload identity federation and managed identity -------------------------------------

def test_federated_token_file_rotated(tmp_path):
    """The kubelet rotates the token file: the next token request sends the new content.

    Configured through the AZURE_* variables the workload identity webhook injects."""
    token_file = os.path.join(str(tmp_path), "azure-identity-token")
    with open(token_file, "w") as f:
        f.write("fed-token-1\n")
    config = dict(FAST_OPERATIONS, federated_tokens=["fed-token-1"], token_lifetime_s=3)
    env = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT_ID,
           "AZURE_FEDERATED_TOKEN_FILE": token_file}
    with Stack(tmp_path, sim_config=config) as stack:
        path = stack.write_config(auth={"client_secret_file": ""})
        # The file's [auth] keeps nothing but what AZURE_* leaves to it.
        with open(path) as f:
            text = f.read()
        text = re.sub(r"^(tenant_id|client_id|client_secret_file|authority_url) = .*\n", "", text,
                      flags=re.M)
        with open(path, "w") as f:
            f.write(text)
        env["AZURE_AUTHORITY_HOST"] = stack.graph.url + "/"
        daemon = stack.start_daemon(config_path=path, env=env)
        run_events(stack, 0, 5)
        # Rotation: both accepted while the file changes, then the old one is revoked.
        stack.graph.config(federated_tokens=["fed-token-1", "fed-token-2"])
        with open(token_file + ".new", "w") as f:
            f.write("fed-token-2\n")
        os.replace(token_file + ".new", token_file)
        time.sleep(2.5)  # a refresh (at 50-80 % of 3 s) has read the new file
        stack.graph.config(federated_tokens=["fed-token-2"])
        grants = stack.graph.ledger()["token_grants"]["client_assertion_federated"]
        assert wait_for(lambda: stack.graph.ledger()["token_grants"]
                        ["client_assertion_federated"] >= grants + 2, 10)
        run_events(stack, 100, 5)
        ledger = stack.graph.ledger()
        stop(daemon)
    assert ledger["token_failures"] == {}, ledger["token_failures"]
    assert ledger["token_grants"]["client_secret"] == 0


def test_managed_identity(tmp_path):
    """IMDS: GET with Metadata: true, string expires_in; the token works on Graph."""
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        auth = {"client_secret_file": "", "managed_identity": "yes",
                "imds_url": stack.graph.url + "/metadata/identity/oauth2/token"}
        daemon = stack.start_daemon(auth=auth)
        run_events(stack, 0, 5)
        ledger = stack.graph.ledger()
        stop(daemon)
    assert ledger["token_grants"]["managed_identity"] >= 1
    assert ledger["requests"]["GET /metadata/identity/oauth2/token"].get("200", 0) >= 1
    assert token_requests(ledger) == 0


# ---- national clouds ----------------------------------------------------------------------

def test_each_cloud_urls_and_scope(tmp_path):
    """cloud = X: the token request asks for X's scope (graph-sim pinned to accept only that)
    and every bind URL in the POST bodies uses X's Graph root, although the traffic goes to
    graph-sim (base_url/authority_url only reroute)."""
    with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
        for n, (cloud, root) in enumerate(CLOUDS.items()):
            stack.graph.config(expected_scope=root + "/.default")
            stack.graph.reset()
            daemon = stack.start_daemon(graph={"cloud": cloud})
            events = [group_event(n * 10 + i, app=(i == 0)) for i in range(2)]
            stack.produce(events)
            results = stack.wait_results([e["id"] for e in events], timeout=60)
            ledger = stack.graph.ledger()
            stop(daemon)
            assert all(r["status"] == "succeeded" for r in results.values()), results
            assert ledger["token_failures"] == {}, (cloud, ledger["token_failures"])
            assert ledger["token_grants"]["client_secret"] >= 1
            bodies = [c["body"] for c in ledger["chats"]]
            assert len(bodies) == 2, cloud
            for body in bodies:
                for m in body["members"]:
                    assert re.fullmatch(re.escape(root) + r"/beta/users\('[0-9a-f-]{36}'\)",
                                        m["user@odata.bind"]), (cloud, m)
            apps = [a for b in bodies for a in b.get("installedApps", [])]
            assert apps == [{"teamsApp@odata.bind":
                             "%s/beta/appCatalogs/teamsApps/%s" % (root, APP)}], cloud


def test_wrong_cloud_scope(tmp_path):
    """A daemon set to the wrong cloud asks for the wrong scope: AADSTS70011, 'wrong cloud?'."""
    with Stack(tmp_path, sim_config={"expected_scope": CLOUDS["usgov"] + "/.default"}) as stack:
        daemon = stack.start_daemon(graph={"cloud": "global"})
        assert_rejected_once(stack, daemon, "AADSTS70011", "wrong cloud?", 1)


# ---- rotation on SIGHUP -------------------------------------------------------------------

def test_sighup_rotates_secret_without_dropping_work(tmp_path):
    """New secret in the file and at Entra, SIGHUP: requests in flight finish, the next token
    request uses the new secret, events keep succeeding, each exactly once."""
    config = dict(FAST_OPERATIONS, token_lifetime_s=3, latency_ms=300)
    with Stack(tmp_path, sim_config=config) as stack:
        daemon = stack.start_daemon()
        run_events(stack, 0, 5)
        # Work in flight (300 ms per request) while the credential changes.
        stack.produce([group_event(100 + i) for i in range(30)])
        time.sleep(0.2)
        stack.graph.config(clients=[{"tenant": TENANT, "client_id": CLIENT_ID,
                                     "secret": "rotated-secret"}])
        grants = stack.graph.ledger()["token_grants"]["client_secret"]
        with open(stack.secret_path + ".new", "w") as f:
            f.write("rotated-secret\n")
        os.replace(stack.secret_path + ".new", stack.secret_path)
        daemon.send(signal.SIGHUP)
        assert wait_for(lambda: "reloaded" in daemon.log_text(), 10), daemon.log_text()
        results = stack.wait_results(["grp-%06d" % (100 + i) for i in range(30)], timeout=60)
        # Only the new secret is accepted now: two more grants prove it is the one sent.
        assert wait_for(lambda: stack.graph.ledger()["token_grants"]["client_secret"]
                        >= grants + 2, 10)
        results.update(run_events(stack, 200, 10))
        stack.read_results(timeout=1)
        ledger = stack.graph.ledger()
        stop(daemon)
    assert all(r["status"] == "succeeded" for r in results.values())
    assert all(len(stack.results[i]) == 1 for i in results)
    assert ledger["duplicate_group_chats"] == 0
    assert ledger["requests"]["POST /{version}/chats"].get("401", 0) == 0
