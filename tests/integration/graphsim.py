"""Start and drive tools/graph-sim from tests (standard library only).

    sim = GraphSim().start(config={"limit_per_tenant": 5})
    tok = sim.token()
    r = sim.post_chat(chat_body("group", [USER_A, USER_B], topic="t"), tok)
    assert r.status == 201 and sim.ledger()["chats"]
    sim.stop()
"""
import http.client
import json
import os
import select
import signal
import subprocess
import tempfile
import time
import urllib.parse

DEFAULT_TENANT = "contoso.onmicrosoft.com"
DEFAULT_CLIENT = "00000000-0000-0000-0000-000000000001"
DEFAULT_SECRET = "sim-secret"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MEMBER_TYPE = "#microsoft.graph.aadUserConversationMember"
USER_A = "8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca"
USER_B = "82fe7758-5bb3-4f0d-a43f-e555fd399c6f"
USER_C = "3626a173-f2bc-4883-bcf7-01514c3bfb82"
APP_ID = "05F59CEC-A742-4A50-A62E-202A57E478A4"


def binary():
    build = os.environ.get("CHATPROV_BUILD_DIR")
    if not build:
        here = os.path.dirname(os.path.abspath(__file__))
        build = os.path.join(here, "..", "..", "build")
    return os.path.join(build, "tools", "graph-sim", "graph-sim")


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Response(%d, %r)" % (self.status, self.body[:300])


def member(user, role="owner", version="v1.0", tenant_id=None,
           host="https://graph.microsoft.com"):
    m = {"@odata.type": MEMBER_TYPE, "roles": [role],
         "user@odata.bind": "%s/%s/users('%s')" % (host, version, user.replace("'", "''"))}
    if tenant_id:
        m["tenantId"] = tenant_id
    return m


def chat_body(chat_type, users, topic=None, apps=(), version="v1.0"):
    body = {"chatType": chat_type, "members": [member(u, version=version) for u in users]}
    if topic is not None:
        body["topic"] = topic
    if apps:
        body["installedApps"] = [
            {"teamsApp@odata.bind":
             "https://graph.microsoft.com/%s/appCatalogs/teamsApps/%s" % (version, a)}
            for a in apps]
    return body


class GraphSim:
    def __init__(self, path=None, ssl_context=None):
        self.path = path or binary()
        self.ssl_context = ssl_context  # for https (--tls-cert/--tls-key)
        self.proc = None
        self.url = None
        self.control_url = None  # --http2: the plain HTTP/1.1 port (same state, for /_sim/)
        self._cfg = None
        self.stderr_text = ""  # of the last stop, when graph-sim did not exit 0

    def start(self, config=None, args=(), timeout=5.0):
        cmd = [self.path, "--listen", "127.0.0.1:0"] + list(args)
        if config is not None:
            self._cfg = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
            json.dump(config, self._cfg)
            self._cfg.close()
            cmd += ["--config", self._cfg.name]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("LISTEN "):
            self.proc.kill()
            err = self.proc.stderr.read().decode()
            raise RuntimeError("graph-sim did not start: %r %s" % (line, err))
        self.url = line.split()[1]
        if "--http2" in args:  # printed and flushed with the LISTEN line
            line = self.proc.stdout.readline().decode()
            if not line.startswith("CONTROL "):
                self.proc.kill()
                raise RuntimeError("graph-sim --http2 printed no CONTROL line: %r" % line)
            self.control_url = line.split()[1]
        return self

    def stop(self, timeout=5.0):
        """SIGTERM; returns the exit code (graph-sim exits 0)."""
        if not self.proc:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        # Kept for the test's message when graph-sim did not exit 0 (MHD's panics go there).
        self.stderr_text = self.proc.stderr.read().decode(errors="replace") if rc else ""
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.proc = None
        if self._cfg:
            os.unlink(self._cfg.name)
            self._cfg = None
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- HTTP -------------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, token=None, timeout=10.0):
        # http.client speaks HTTP/1.1 only: under --http2 it goes to the control port.
        u = urllib.parse.urlsplit(self.control_url or self.url)
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", "replace")
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def config(self, **knobs):
        r = self.request("POST", "/_sim/config", body=knobs)
        if r.status != 200:
            raise RuntimeError("config refused: %s" % r.body)
        return r.json()

    def ledger(self):
        return self.request("GET", "/_sim/ledger").json()

    def reset(self):
        assert self.request("POST", "/_sim/reset").status == 200

    def token_response(self, tenant=DEFAULT_TENANT, client_id=DEFAULT_CLIENT,
                       secret=DEFAULT_SECRET, scope=GRAPH_SCOPE, extra=None):
        form = {"grant_type": "client_credentials", "client_id": client_id, "scope": scope}
        if secret is not None:
            form["client_secret"] = secret
        form.update(extra or {})
        return self.request("POST", "/%s/oauth2/v2.0/token" % tenant,
                            body=urllib.parse.urlencode(form),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    def token(self, tenant=DEFAULT_TENANT, client_id=DEFAULT_CLIENT, secret=DEFAULT_SECRET):
        r = self.token_response(tenant, client_id, secret)
        if r.status != 200:
            raise RuntimeError("token refused: %s" % r.body)
        return r.json()["access_token"]

    def post_chat(self, body, token, version="v1.0", headers=None):
        return self.request("POST", "/%s/chats" % version, body=body, token=token,
                            headers=headers)


def wait_for(pred, timeout=5.0, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()
