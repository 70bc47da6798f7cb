"""Credential flows end to end (chatprovd as a process, graph-sim verifying): a federated
token file rotated mid-run and configured through the AZURE_* variables Kubernetes injects,
managed identity (IMDS), each national cloud's URLs and scope, and SIGHUP rotation of a client
secret without dropping work. Certificates and failures: test_credentials.py."""

import os
import re
import signal
import socket
import threading
import time

from graphsim import wait_for
from stack import CLIENT_ID, TENANT, Stack, group_event
from test_credentials import CLOUDS, FAST_OPERATIONS, run_events, stop, token_requests

APP = "05F59CEC-A742-4A50-A62E-202A57E478A4"


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


class Listener:
    """A TCP port that counts who connects to it (and hangs up on them)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def test_managed_identity_never_through_a_proxy(tmp_path):
    """The metadata endpoint is reached directly even with http_proxy set: a proxy would carry
    the managed identity's token off the host."""
    proxy = Listener()
    try:
        with Stack(tmp_path, sim_config=FAST_OPERATIONS) as stack:
            auth = {"client_secret_file": "", "managed_identity": "yes",
                    "imds_url": stack.graph.url + "/metadata/identity/oauth2/token"}
            url = "http://127.0.0.1:%d" % proxy.port
            env = {"http_proxy": url, "HTTPS_PROXY": url, "https_proxy": url,
                   "ALL_PROXY": url, "all_proxy": url, "no_proxy": "", "NO_PROXY": ""}
            daemon = stack.start_daemon(env=env, auth=auth)
            assert wait_for(lambda: "ready: group joined, Graph token held" in
                            daemon.log_text() or not daemon.alive(), 30), daemon.log_text()
            ledger = stack.graph.ledger()
            stop(daemon)
    finally:
        proxy.close()
    assert proxy.connections == 0, "the IMDS request went to the proxy"
    assert ledger["token_grants"]["managed_identity"] >= 1


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
