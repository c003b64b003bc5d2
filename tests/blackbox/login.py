#!/usr/bin/env python3
"""Black-box check of the courier binary: a fresh database, a real provider
(node-oidc-provider), a config written as the SPEC gives it, and a client without a browser.

    python3 tests/blackbox/login.py [path/to/courier]    # default target/release/courier

Logs in, reads /api/me, then tries the bad inputs the login must refuse. Prints one line per
check and 'N passed, N failed'; exits non-zero on a failure. Standard library only.
"""

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse

from client import ROOT, Browser, free_port

BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/courier")
ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f"  ({detail})"), flush=True)


def main():
    db = "courier_blackbox_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    port = free_port()
    app = f"http://127.0.0.1:{port}"
    procs = []
    try:
        provider_config = {"clients": [{
            "client_id": "courier", "client_secret": "bb-secret",
            "redirect_uris": [f"{app}/auth/callback/main"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}]}
        node = subprocess.Popen(["node", "server.mjs"], cwd=os.path.join(ROOT, "tests/oidc-provider"),
                                env={**os.environ, "OIDC_CONFIG": json.dumps(provider_config)},
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(node)
        issuer = node.stdout.readline().split()[1]

        config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        config.write(f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "{app}"

[database]
url = "${{DATABASE_URL}}"
max_connections = 16

[session]
cookie_name = "__Host-courier"
idle_timeout_secs = 28800
absolute_timeout_secs = 604800

[security]
encryption_keys = ["${{COURIER_KEY}}"]

[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "${{MAIN_SECRET}}"
scopes = ["openid", "profile", "email", "offline_access"]
authorize_params = {{ prompt = "consent" }}
login = true
# The state checks below read `state` from the authorization URL: not pushed (PAR).
par = "off"
""")
        config.close()
        env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
               "COURIER_KEY": base64.b64encode(os.urandom(32)).decode(), "MAIN_SECRET": "bb-secret"}
        check_config = subprocess.run([BINARY, "check-config", "--config", config.name], env=env,
                                      capture_output=True, text=True)
        check("check-config accepts the SPEC-shaped config", check_config.returncode == 0,
              check_config.stderr)
        courier = subprocess.Popen([BINARY, "serve", "--config", config.name], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(courier)
        for _ in range(100):
            try:
                if Browser().get(f"{app}/readyz").status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        check("/readyz is 200", Browser().get(f"{app}/readyz").status == 200)

        def provider_form(browser, return_to="/after"):
            url, resp = browser.follow(f"{app}/auth/login?return_to={return_to}")
            assert resp.status == 200 and "/interaction/" in url, (resp.status, url)
            return url

        def submit(browser, form_url, user, stop_at_callback=False):
            u = urllib.parse.urlsplit(form_url)
            post = f"{u.scheme}://{u.netloc}{u.path}/login"
            resp = browser.request("POST", post, body={"login": user, "password": "x"})
            nxt = urllib.parse.urljoin(post, resp.getheader("Location"))
            stop = (lambda n: n.startswith(app)) if stop_at_callback else \
                (lambda n: n.startswith(app) and "/auth/" not in n)
            url, resp = browser.follow(nxt, stop)
            if stop_at_callback:
                return urllib.parse.urljoin(url, resp.getheader("Location"))
            return resp

        def me(browser, csrf=True):
            return browser.get(f"{app}/api/me", {"X-CSRF": "1"} if csrf else {})

        netloc = f"127.0.0.1:{port}"
        alice = Browser()
        resp = submit(alice, provider_form(alice), "alice")
        check("login redirects to return_to", resp.status == 302 and resp.getheader("Location") == "/after",
              (resp.status, resp.getheader("Location")))
        set_cookie = " ".join(v for k, v in resp.getheaders() if k.lower() == "set-cookie" and v.startswith(COOKIE + "="))
        check("session cookie is Secure; HttpOnly; SameSite=Lax; Path=/; no Domain",
              all(a in set_cookie for a in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/")) and "Domain" not in set_cookie,
              set_cookie)
        r = me(alice)
        body = json.loads(r.body)
        check("/api/me shows alice", r.status == 200 and body["sub"] == "alice" and body["email"] == "alice@example.test"
              and body["provider"] == "main" and "created_at" in body["session"], r.body[:200])
        check("/api/me carries no token", b"eyJ" not in r.body)
        r = me(alice, csrf=False)
        check("no X-CSRF: 403 csrf_required", r.status == 403 and json.loads(r.body)["code"] == "csrf_required")
        check("Cache-Control: no-store on /api", r.getheader("Cache-Control") == "no-store")
        r = me(Browser())
        check("no session: 401 login_required", r.status == 401 and json.loads(r.body)["code"] == "login_required")
        for bad in ["garbage", "%00", "A" * 3000]:
            b = Browser()
            b.cookies[(netloc, COOKIE, "/")] = bad
            r = me(b)
            check(f"malformed cookie {bad[:10]!r}: 401", r.status == 401)

        # Two tabs.
        bob = Browser()
        f1, f2 = provider_form(bob, "/one"), provider_form(bob, "/two")
        r1, r2 = submit(bob, f1, "bob"), submit(bob, f2, "bob")
        check("two tabs both complete", r1.getheader("Location") == "/one" and r2.getheader("Location") == "/two",
              (r1.getheader("Location"), r2.getheader("Location")))

        # State and code abuse.
        carol = Browser()
        form = provider_form(carol)
        pending = {k: v for k, v in carol.cookies.items() if "-login-" in k[1]}
        callback = submit(carol, form, "carol", stop_at_callback=True)
        stranger = Browser()
        r = stranger.get(callback)
        check("a state from another browser is refused", r.getheader("Location") == "/?login_error=invalid_state")
        r = carol.get(callback)
        check("the real callback logs carol in", r.getheader("Location") == "/after")
        replayer = Browser()
        replayer.cookies.update(pending)
        r = replayer.get(callback)
        check("a replayed state is refused", r.getheader("Location") == "/?login_error=invalid_state")
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["code"][0]
        other = Browser()
        auth = other.get(f"{app}/auth/login").getheader("Location")
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(auth).query)["state"][0]
        iss = urllib.parse.quote(issuer, safe="")  # the provider names itself (RFC 9207)
        r = other.get(f"{app}/auth/callback/main?code={code}&state={state}&iss={iss}")
        check("a code used twice is refused", r.getheader("Location") == "/?login_error=token_exchange_failed",
              r.getheader("Location"))
        r = Browser().get(f"{app}/auth/callback/main?code=x")
        check("a missing state is refused", r.getheader("Location") == "/?login_error=invalid_state")
        b = Browser()
        b.get(f"{app}/auth/login")
        r = b.get(f"{app}/auth/callback/main?code=x&state=wrong")
        check("a wrong state is refused", r.getheader("Location") == "/?login_error=invalid_state")
        b = Browser()
        auth = b.get(f"{app}/auth/login").getheader("Location")
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(auth).query)["state"][0]
        r = b.get(f"{app}/auth/callback/main?error=access_denied&state={state}&iss={iss}")
        check("error=access_denied comes back as a login error",
              r.getheader("Location") == "/?login_error=access_denied")
        # RFC 9207: node-oidc-provider advertises the iss parameter, so a callback without it
        # is not the provider's.
        b = Browser()
        callback = submit(b, provider_form(b), "erin", stop_at_callback=True)
        without_iss = re.sub(r"&iss=[^&]*|iss=[^&]*&", "", callback)
        r = b.get(without_iss)
        check("a callback without iss is refused (issuer_mismatch)",
              "iss=" not in urllib.parse.urlsplit(without_iss).query
              and r.getheader("Location") == "/?login_error=issuer_mismatch", (without_iss, r.getheader("Location")))
        check("... and makes no session", me(b).status == 401)
        for hostile in ["//evil.example", "https://evil.example", "/%5Cevil.example", "%2F%2Fevil.example"]:
            b = Browser()
            r = submit(b, provider_form(b, urllib.parse.quote(hostile, safe="")), "dave")
            check(f"return_to={hostile} stays on the origin", r.getheader("Location") == "/", r.getheader("Location"))
        courier.terminate()
        logs = courier.communicate(timeout=10)[1]
        leaked = [s for s in ("bb-secret", env["COURIER_KEY"]) if s in logs] + re.findall(r"eyJ[\w-]+\.eyJ", logs)
        check("no secret or token in the log", not leaked, leaked[:2])
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
