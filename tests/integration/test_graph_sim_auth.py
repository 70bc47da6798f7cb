"""graph-sim: token endpoint (secret, certificate assertions, federation), IMDS, bearer checks."""
import base64
import hashlib
import json
import os
import subprocess
import tempfile
import time
import urllib.parse
import uuid

import pytest

from graphsim import (DEFAULT_CLIENT, DEFAULT_TENANT, USER_A, USER_B, GraphSim, chat_body)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CERT_CLIENT = "11111111-2222-3333-4444-555555555555"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def keypair():
    d = tempfile.mkdtemp()
    key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=chatprov-test"],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    other_key = os.path.join(d, "other.pem")
    subprocess.run(["openssl", "genrsa", "-out", other_key, "2048"], check=True,
                   capture_output=True)
    return {"key": key, "cert": cert, "der": der, "other_key": other_key}


def sign(key, data, alg):
    cmd = ["openssl", "dgst", "-sha256", "-sign", key]
    if alg == "PS256":
        cmd += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
    return subprocess.run(cmd, input=data, check=True, capture_output=True).stdout


def make_jwt(kp, aud, alg="PS256", key=None, claims=None, header=None):
    now = int(time.time())
    h = {"alg": alg, "typ": "JWT", "x5t#S256": b64url(hashlib.sha256(kp["der"]).digest())}
    h.update(header or {})
    h = {k: v for k, v in h.items() if v is not None}
    c = {"aud": aud, "iss": CERT_CLIENT, "sub": CERT_CLIENT, "jti": str(uuid.uuid4()),
         "nbf": now - 5, "exp": now + 300}
    c.update(claims or {})
    c = {k: v for k, v in c.items() if v is not None}
    signing_input = (b64url(json.dumps(h).encode()) + "." + b64url(json.dumps(c).encode()))
    return signing_input + "." + b64url(sign(key or kp["key"], signing_input.encode(), alg))


@pytest.fixture
def sim(keypair):
    s = GraphSim().start(config={"clients": [
        {"tenant": DEFAULT_TENANT, "client_id": DEFAULT_CLIENT, "secret": "sim-secret"},
        {"tenant": DEFAULT_TENANT, "client_id": CERT_CLIENT,
         "certificate_pem_file": keypair["cert"], "federated_tokens": ["fed-token-1"]}]})
    yield s
    assert s.stop() == 0


def assertion_token(sim, assertion, tenant=DEFAULT_TENANT, assertion_type=JWT_BEARER):
    return sim.token_response(tenant, CERT_CLIENT, None, extra={
        "client_assertion_type": assertion_type, "client_assertion": assertion})


def aud(sim, tenant=DEFAULT_TENANT):
    return "https://login.microsoftonline.com/%s/oauth2/v2.0/token" % tenant


def assert_entra_error(r, status, error, code):
    assert r.status == status, r
    e = r.json()
    assert e["error"] == error
    assert e["error_codes"] == [code]
    assert e["error_description"].startswith("AADSTS%d: " % code)
    for k in ("timestamp", "trace_id", "correlation_id"):
        assert e[k]


# --- client secret ---------------------------------------------------------------------
def test_secret_grant(sim):
    r = sim.token_response()
    assert r.status == 200
    t = r.json()
    assert set(t) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert t["token_type"] == "Bearer" and t["expires_in"] == 3599
    assert sim.ledger()["token_grants"]["client_secret"] == 1


@pytest.mark.parametrize("kw,status,error,code", [
    ({"secret": "wrong"}, 401, "invalid_client", 7000215),
    ({"client_id": "99999999-9999-9999-9999-999999999999"}, 400, "unauthorized_client", 700016),
    ({"tenant": "nowhere.onmicrosoft.com"}, 400, "invalid_request", 90002),
    ({"scope": "https://graph.microsoft.com/User.Read"}, 400, "invalid_scope", 70011),
    ({"scope": "https://outlook.office.com/.default"}, 400, "invalid_scope", 70011),
    ({"secret": None}, 401, "invalid_client", 7000216),
])
def test_token_errors(sim, kw, status, error, code):
    assert_entra_error(sim.token_response(**kw), status, error, code)
    assert sim.ledger()["token_failures"] == {"AADSTS%d" % code: 1}


def test_grant_type_and_missing_parameters(sim):
    r = sim.request("POST", "/%s/oauth2/v2.0/token" % DEFAULT_TENANT,
                    body="grant_type=password&client_id=x",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_entra_error(r, 400, "unsupported_grant_type", 70003)
    r = sim.request("POST", "/%s/oauth2/v2.0/token" % DEFAULT_TENANT,
                    body="grant_type=client_credentials",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_entra_error(r, 400, "invalid_request", 900144)


def test_all_clouds_scopes_and_pinned_scope(sim):
    for s in ("https://graph.microsoft.us/.default", "https://dod-graph.microsoft.us/.default",
              "https://microsoftgraph.chinacloudapi.cn/.default"):
        assert sim.token_response(scope=s).status == 200
    sim.config(expected_scope="https://graph.microsoft.us/.default")
    assert_entra_error(sim.token_response(), 400, "invalid_scope", 70011)
    assert sim.token_response(scope="https://graph.microsoft.us/.default").status == 200


def test_tenant_by_guid(sim):
    tid = sim.request("GET", "/_sim/config").json()["clients"][0]["tenant_id"]
    assert sim.token_response(tenant=tid).status == 200


def test_token_outage(sim):
    sim.config(token_fault_503_rate=1.0, fault_503_retry_after_s=2)
    r = sim.token_response()
    assert_entra_error(r, 503, "temporarily_unavailable", 90033)
    assert r.headers["retry-after"] == "2"


# --- bearer tokens -----------------------------------------------------------------------
def test_graph_needs_live_token(sim):
    body = chat_body("oneOnOne", [USER_A, USER_B])
    for tok in (None, "not-a-token"):
        r = sim.post_chat(body, tok)
        assert r.status == 401
        assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert "www-authenticate" in r.headers
    sim.config(token_lifetime_s=1)
    tok = sim.token()
    assert sim.post_chat(body, tok).status == 201
    time.sleep(1.05)
    r = sim.post_chat(body, tok)
    assert r.status == 401 and "expired" in r.json()["error"]["message"]
    assert sim.ledger()["requests"]["POST /{version}/chats"] == {"201": 1, "401": 3}


# --- certificate assertions ------------------------------------------------------------
@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_certificate_assertion(sim, keypair, alg):
    r = assertion_token(sim, make_jwt(keypair, aud(sim), alg=alg))
    assert r.status == 200, r
    tok = r.json()["access_token"]
    assert sim.post_chat(chat_body("oneOnOne", [USER_A, USER_B]), tok).status == 201
    assert sim.ledger()["token_grants"]["client_assertion_certificate"] == 1


def test_x5t_sha1_and_any_audience_host(sim, keypair):
    hdr = {"x5t": b64url(hashlib.sha1(keypair["der"]).digest()), "x5t#S256": None}
    jwt = make_jwt(keypair, "http://127.0.0.1:1/%s/oauth2/v2.0/token" % DEFAULT_TENANT,
                   header=hdr)
    assert assertion_token(sim, jwt).status == 200


@pytest.mark.parametrize("case,code", [
    ("wrong key", 700027),
    ("wrong thumbprint", 700027),
    ("no thumbprint", 700027),
    ("tampered", 700027),
    ("pss salt max", 700027),
    ("iss mismatch", 700021),
    ("wrong audience path", 700023),
    ("expired", 700024),
    ("not yet valid", 700024),
    ("no jti", 50027),
    ("garbage", 50027),
    ("alg none", 50027),
])
def test_bad_assertions(sim, keypair, case, code):
    a = aud(sim)
    if case == "wrong key":
        jwt = make_jwt(keypair, a, key=keypair["other_key"])
    elif case == "wrong thumbprint":
        jwt = make_jwt(keypair, a, header={"x5t#S256": b64url(b"x" * 32)})
    elif case == "no thumbprint":
        jwt = make_jwt(keypair, a, alg="RS256", header={"x5t#S256": None})
    elif case == "tampered":
        p = make_jwt(keypair, a).split(".")
        p[1] = b64url(json.dumps({"aud": a, "iss": CERT_CLIENT, "sub": CERT_CLIENT,
                                  "jti": "x", "exp": int(time.time()) + 99}).encode())
        jwt = ".".join(p)
    elif case == "pss salt max":
        h = {"alg": "PS256", "x5t#S256": b64url(hashlib.sha256(keypair["der"]).digest())}
        si = b64url(json.dumps(h).encode()) + "." + make_jwt(keypair, a).split(".")[1]
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", keypair["key"], "-sigopt",
                              "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max"],
                             input=si.encode(), check=True, capture_output=True).stdout
        jwt = si + "." + b64url(sig)
    elif case == "iss mismatch":
        jwt = make_jwt(keypair, a, claims={"iss": "someone-else"})
    elif case == "wrong audience path":
        jwt = make_jwt(keypair, aud(sim, "other.onmicrosoft.com"))
    elif case == "expired":
        jwt = make_jwt(keypair, a, claims={"exp": int(time.time()) - 1})
    elif case == "not yet valid":
        jwt = make_jwt(keypair, a, claims={"nbf": int(time.time()) + 120})
    elif case == "no jti":
        jwt = make_jwt(keypair, a, claims={"jti": None})
    elif case == "garbage":
        jwt = "a.b"
    else:
        h = {"alg": "none", "x5t#S256": b64url(hashlib.sha256(keypair["der"]).digest())}
        jwt = b64url(json.dumps(h).encode()) + "." + make_jwt(keypair, a).split(".")[1] + ".eA"
    r = assertion_token(sim, jwt)
    assert r.status in (400, 401), r
    assert r.json()["error_codes"] == [code], r


def test_assertion_replay_refused(sim, keypair):
    jwt = make_jwt(keypair, aud(sim))
    assert assertion_token(sim, jwt).status == 200
    r = assertion_token(sim, jwt)
    assert r.status == 401 and r.json()["error_codes"] == [50027]


def test_wrong_assertion_type(sim, keypair):
    r = assertion_token(sim, make_jwt(keypair, aud(sim)), assertion_type="urn:x")
    assert r.status == 400


# --- federation and managed identity ---------------------------------------------------
def test_federated_assertion(sim):
    assert assertion_token(sim, "fed-token-1").status == 200
    assert assertion_token(sim, "fed-token-2").status == 401
    sim.config(federated_tokens=["fed-token-2"])
    assert assertion_token(sim, "fed-token-2").status == 200
    assert sim.ledger()["token_grants"]["client_assertion_federated"] == 2


def test_managed_identity(sim):
    path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + \
        urllib.parse.quote("https://graph.microsoft.com/", safe="")
    r = sim.request("GET", path, headers={"Metadata": "true"})
    assert r.status == 200, r
    t = r.json()
    for k in ("access_token", "expires_in", "expires_on", "resource", "token_type",
              "not_before", "client_id"):
        assert isinstance(t[k], str), k
    assert t["resource"] == "https://graph.microsoft.com/" and t["expires_in"] == "3599"
    assert abs(int(t["expires_on"]) - time.time() - 3599) < 5
    assert sim.post_chat(chat_body("oneOnOne", [USER_A, USER_B]),
                         t["access_token"]).status == 201
    assert sim.request("GET", path).status == 400
    assert sim.request("GET", path + "&client_id=" + DEFAULT_CLIENT,
                       headers={"Metadata": "true"}).status == 200
    assert sim.request("GET", path + "&client_id=nobody", headers={"Metadata": "true"}).status == 400
    assert sim.request("GET", "/metadata/identity/oauth2/token?resource=x",
                       headers={"Metadata": "true"}).status == 400
    assert sim.ledger()["token_grants"]["managed_identity"] == 2
