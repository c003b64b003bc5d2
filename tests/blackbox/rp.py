#!/usr/bin/env python3
"""Black-box check of what running courier against the OpenID Foundation's RP test tool found
(key rotation, the logout token's algorithm, a userinfo endpoint that refuses the login's
token, a refused pushed authorization request): two courier instances on one fresh database, a
real provider (node-oidc-provider) restarted on the same issuer with new keys, a config written
as the README documents it. Standard library only (node makes the keys).

    cargo build --release -p courier
    python3 tests/blackbox/rp.py               # or: python3 tests/blackbox/rp.py target/debug/courier

An ID token without `iat` or `sub` needs a provider that mints broken tokens: the API tests
show it against their in-process provider (tests/api/token_response.rs). Prints one line per
check, and 'N passed, N failed'; exits non-zero on a failure.
"""

import base64
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

from client import ROOT, Browser, free_port, login, wait_ready
from services import EVENT, sign

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
ORDERS = "https://orders.example/"
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("ok   " if ok else "FAIL ") + name + (f"  ({detail})" if detail != "" else ""), flush=True)


def new_keys():
    """Three RSA keys and one P-256 key, as private JWKs with kids."""
    script = """
const crypto = require('crypto');
const jwk = (kp, kid) => ({ ...kp.privateKey.export({ format: 'jwk' }), kid, use: 'sig' });
const rsa = (kid) => jwk(crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }), kid);
console.log(JSON.stringify([rsa('rsa-1'), rsa('rsa-2'), rsa('rsa-3'),
  jwk(crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }), 'ec-1')]));
"""
    return json.loads(subprocess.run(["node", "-e", script], check=True, capture_output=True, text=True).stdout)


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/courier"))
    db = "courier_blackbox_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    port_a, port_b, provider_port = free_port(), free_port(), free_port()
    app_a, app_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    net_a = f"127.0.0.1:{port_a}"
    issuer = f"http://127.0.0.1:{provider_port}"
    client_secret = "rp-" + secrets.token_hex(8)
    rsa1, rsa2, rsa3, ec1 = new_keys()
    procs, configs = [], []
    provider = [None]

    def start_provider(keys):
        """(Re)starts the provider on the same issuer, signing with the first RSA key listed."""
        if provider[0]:
            provider[0].terminate()
            provider[0].wait(10)
        config = {
            "port": provider_port, "jwks": {"keys": keys},
            "resource_servers": {ORDERS: {"scope": "orders:read"}}, "use_granted_resource": True,
            "clients": [{
                "client_id": "courier", "client_secret": client_secret,
                "redirect_uris": [f"{app_a}/auth/callback/main"],
                "post_logout_redirect_uris": [f"{app_a}/"],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "id_token_signed_response_alg": "RS256",
                "backchannel_logout_uri": f"{app_a}/auth/backchannel-logout/main",
                "backchannel_logout_session_required": True}]}
        provider[0] = subprocess.Popen(["node", "server.mjs"], cwd=os.path.join(ROOT, "tests/oidc-provider"),
                                       env={**os.environ, "OIDC_CONFIG": json.dumps(config)},
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        provider[0].stdout.readline()
        wait_ready(f"{issuer}/.well-known/openid-configuration")

    try:
        start_provider([rsa1, ec1])
        env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
               "COURIER_KEY": base64.b64encode(os.urandom(32)).decode(), "MAIN_SECRET": client_secret,
               "RUST_LOG": "warn"}
        for port in (port_a, port_b):
            config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            config.write(f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "{app_a}"

[database]
url = "${{DATABASE_URL}}"

[security]
encryption_keys = ["${{COURIER_KEY}}"]

[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "${{MAIN_SECRET}}"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
id_token_signed_response_alg = "RS256"

[[services]]
name = "orders"
base_url = "http://127.0.0.1:9/"
provider = "main"
resource = "{ORDERS}"
""")
            config.close()
            configs.append(config.name)
            procs.append(subprocess.Popen([binary, "serve", "--config", config.name], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for app in (app_a, app_b):
            wait_ready(f"{app}/readyz")

        def me(browser, app=app_a):
            u = urllib.parse.urlsplit(app)
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
            conn.request("GET", "/api/me", headers={"X-CSRF": "1", "Cookie": f"{COOKIE}={browser.cookie(net_a, COOKIE)}"})
            resp = conn.getresponse()
            resp.body = resp.read()
            return resp

        # --- A userinfo endpoint that refuses the login's (resource-bound) token -------------
        alice = Browser()
        resp = login(alice, app_a, "alice")
        answer = me(alice)
        body = json.loads(answer.body or b"{}")
        check("a login whose access token is made for the granted resource (userinfo refuses it: 401) "
              "succeeds with the ID token's claims",
              resp.status == 302 and resp.getheader("Location") == "/after" and answer.status == 200
              and body.get("sub") == "alice", f"{resp.status} {resp.getheader('Location')}, /api/me {answer.status}")

        # --- Two key rotations in a row ------------------------------------------------------
        rotations = []
        for keys, name in [([rsa2, rsa1, ec1], "rsa-2"), ([rsa3, rsa2, ec1], "rsa-3")]:
            start_provider(keys)
            started = time.monotonic()
            browser = Browser()
            resp = login(browser, app_a, "bob")
            rotations.append((name, resp.getheader("Location"), round(time.monotonic() - started, 2)))
        check("two logins across two provider key rotations seconds apart both succeed (the keys are "
              "fetched again at once on an unknown kid)",
              all(loc == "/after" for _, loc, _ in rotations), rotations)

        # --- The logout token's algorithm is the pinned one ----------------------------------
        carol = Browser()
        login(carol, app_a, "carol")
        sub = json.loads(me(carol).body)["sub"]
        now = int(time.time())
        claims = lambda: {"iss": issuer, "aud": "courier", "iat": now, "exp": now + 120,
                          "jti": str(uuid.uuid4()), "events": {EVENT: {}}, "sub": sub}
        wrong = sign(issuer, claims(), {"typ": "logout+jwt", "alg": "ES256"})
        status = Browser().request("POST", f"{app_a}/auth/backchannel-logout/main", body={"logout_token": wrong}).status
        alive = me(carol, app_b).status
        check("a logout token signed ES256 with the provider's real key is refused (400) for a client "
              "pinned to RS256, and the session lives on B", status == 400 and alive == 200, f"{status}, /api/me {alive}")
        right = sign(issuer, claims(), {"typ": "logout+jwt"})
        status = Browser().request("POST", f"{app_a}/auth/backchannel-logout/main", body={"logout_token": right}).status
        gone = me(carol, app_b).status
        check("... and the same token signed RS256 ends the session on both instances",
              status == 200 and gone == 401, f"{status}, /api/me on B {gone}")

        # --- A refused pushed authorization request ----------------------------------------
        resp = Browser().get(f"{app_a}/auth/login?prompt=create&return_to=/x")
        location = resp.getheader("Location") or ""
        check("a pushed request the provider refuses (prompt=create: invalid_request) comes back as "
              "login_error=invalid_request, not server_error",
              resp.status == 302 and "login_error=invalid_request" in location, f"{resp.status} {location}")
    finally:
        for p in [*procs, provider[0]]:
            if p:
                p.terminate()
        for p in [*procs, provider[0]]:
            if p:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for c in configs:
            os.unlink(c)
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
