#!/usr/bin/env python3
"""Black-box check of the third outside review's findings (issue 25): two courier instances on
one fresh database, a real provider (node-oidc-provider, without the `claims` parameter, so that
its ID tokens carry `auth_time` only when `max_age` asks for it, as many providers do), the demo
API checking every token by introspection, a config written as the SPEC gives it. Standard
library only.

    cargo build --release -p courier -p demo-api
    python3 tests/blackbox/hardening.py        # or: python3 tests/blackbox/hardening.py target/debug/courier

It checks that a WebSocket flood is bounded (8 connections of one session, each flooded by the
service with messages of `websocket_max_message_bytes` while the browser reads nothing, keep
instance A's RSS under 64 MiB above its idle figure) and that a logout on instance B closes every
one of them (4401); that a silent login (`prompt=none`) cannot end the user's other sessions
(401 `reauth_required`) while a fresh one (`prompt=login&max_age=0`) can; that an ndjson feed is
cut off within a second of a logout on the other instance; that the service's response headers
that act on courier's origin and the browser's `DPoP` header do not pass; and that the example
SPA asks for `prompt=login&max_age=0` when ending other sessions needs a fresh login. Prints one
line per check with what it measured, and 'N passed, N failed'; exits non-zero on a failure.
"""

import base64
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from client import ROOT, Browser, free_port, login, start_provider, wait_ready
from live import Refused, WebSocket

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
MAX_MESSAGE = 1024 * 1024
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("ok   " if ok else "FAIL ") + name + (f"  ({detail})" if detail != "" else ""), flush=True)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/courier"))
    demo_binary = os.path.join(os.path.dirname(binary), "demo-api")
    db = "courier_blackbox_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    port_a, port_b, demo_port = free_port(), free_port(), free_port()
    app_a, app_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    net_a = f"127.0.0.1:{port_a}"
    demo = f"http://127.0.0.1:{demo_port}"
    client_secret = "hardening-" + secrets.token_hex(8)
    procs, configs = [], []
    try:
        provider, issuer = start_provider(app_a, claims_parameter=False, clients=[{
            "client_id": "courier", "client_secret": client_secret,
            "redirect_uris": [f"{app_a}/auth/callback/main"],
            "post_logout_redirect_uris": [f"{app_a}/"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}])
        procs.append(provider)
        procs.append(subprocess.Popen(
            [demo_binary, "--listen", f"127.0.0.1:{demo_port}", "--introspection-endpoint",
             f"{issuer}/token/introspection", "--client-id", "courier"],
            env={**os.environ, "DEMO_API_CLIENT_SECRET": client_secret}, stderr=subprocess.DEVNULL))
        env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
               "COURIER_KEY": base64.b64encode(os.urandom(32)).decode(), "MAIN_SECRET": client_secret,
               "RUST_LOG": "warn"}
        couriers = {}
        # Both instances serve one app behind a load balancer: one public_url, one Origin.
        for port in (port_a, port_b):
            config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            config.write(f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "{app_a}"
static_dir = "{ROOT}/examples/spa"
websocket_max_message_bytes = {MAX_MESSAGE}

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

[[services]]
name = "live"
base_url = "{demo}/"
provider = "main"
websocket = true

[[services]]
name = "plain"
base_url = "{demo}/"
provider = "main"
""")
            config.close()
            configs.append(config.name)
            couriers[port] = subprocess.Popen([binary, "serve", "--config", config.name], env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(couriers[port])
        for app in (app_a, app_b):
            wait_ready(f"{app}/readyz")

        def cookie_of(browser):
            return browser.cookie(net_a, COOKIE)

        def api(browser, method, app, path, **headers):
            return browser.request(method, f"{app}{path}", headers={"X-CSRF": "1", **headers})

        def via(app, browser, method, path, **headers):
            # The cookie is the origin's (app_a's); B is the same app behind the balancer.
            return http_request(method, f"{app}{path}",
                                {"Cookie": f"{COOKIE}={cookie_of(browser)}", "X-CSRF": "1", **headers})

        # --- The service's headers and the browser's DPoP --------------------------------
        alice = Browser()
        login(alice, app_a, "alice")
        resp = api(alice, "GET", app_a, "/api/services/plain/_demo/origin-headers", DPoP="a-forged-proof")
        listed = ["refresh", "clear-site-data", "strict-transport-security", "access-control-allow-origin",
                  "access-control-allow-credentials", "service-worker-allowed", "nel", "report-to",
                  "alt-svc", "accept-ch"]
        present = [name for name in listed if resp.getheader(name) is not None]
        check("the service's Refresh, Clear-Site-Data, HSTS, Access-Control-*, Service-Worker-Allowed, "
              "NEL, Report-To, Alt-Svc, Accept-CH do not reach the browser",
              resp.status == 200 and not present, present or resp.status)
        challenges = [v for k, v in resp.getheaders() if k.lower() == "www-authenticate"]
        check("only the service's Bearer challenge passes (no Basic password prompt on courier's origin)",
              challenges == ['Bearer realm="demo", error="invalid_token"'], challenges)
        echo = json.loads(resp.body)
        check("the browser's DPoP header does not reach the service; courier's Bearer token does",
              "dpop" not in echo["headers"] and echo["headers"].get("authorization") == "Bearer <redacted>",
              {k: v for k, v in echo["headers"].items() if k in ("dpop", "authorization")})

        # --- An ndjson feed ends with the session ----------------------------------------
        feed = {}
        u = urllib.parse.urlsplit(app_a)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
        conn.request("GET", "/api/services/plain/_demo/ndjson?interval_ms=100",
                     headers={"Cookie": f"{COOKIE}={cookie_of(alice)}", "X-CSRF": "1"})
        feed_resp = conn.getresponse()
        logged_out = [None]

        def read_feed():
            # read1, not readline: http.client's readline takes a chunked body cut short for
            # its end (its peek swallows IncompleteRead).
            lines = 0
            try:
                while (chunk := feed_resp.read1(65536)):
                    lines += chunk.count(b"\n")
                feed["end"] = "complete"
            except (OSError, http.client.HTTPException) as e:
                feed["end"] = type(e).__name__
            feed["lines"] = lines
            feed["after"] = time.monotonic() - logged_out[0] if logged_out[0] else None

        reader = threading.Thread(target=read_feed, daemon=True)
        reader.start()
        time.sleep(2)
        # Measured from the moment the logout is sent: courier ends the session everywhere
        # before it answers, so the feed may end before the answer arrives.
        logged_out[0] = time.monotonic()
        resp = via(app_b, alice, "POST", "/auth/logout")
        reader.join(10)
        check("an application/x-ndjson feed through A is cut off (no final chunk) within a second of "
              "a logout on B",
              resp.status == 200 and feed.get("end") not in (None, "complete")
              and feed.get("after") is not None and feed["after"] < 1.0,
              f"logout {resp.status}, feed {feed.get('end')} after {feed.get('lines')} lines, "
              f"{feed.get('after') and round(feed['after'] * 1000)} ms after the logout was sent")

        # --- A WebSocket flood is bounded, and closed by logout -------------------------
        bob = Browser()
        login(bob, app_a, "bob")
        time.sleep(1)
        idle = max(rss_mib(couriers[port_a].pid) for _ in range(3))
        sockets = []
        for _ in range(8):
            ws = WebSocket.open(f"{app_a}/api/services/live/_demo/ws",
                                {"Cookie": f"{COOKIE}={cookie_of(bob)}", "Origin": app_a})
            if isinstance(ws, Refused):
                check("bob's WebSockets open", False, ws)
                return 1
            ws.recv()  # the hello
            ws.send(f"flood:100000:{MAX_MESSAGE}")
            sockets.append(ws)
        peak = idle
        for _ in range(16):
            time.sleep(0.5)
            peak = max(peak, rss_mib(couriers[port_a].pid))
        sent = json.loads(Browser().get(f"{demo}/_demo/live").body)["flood_sent_bytes"]
        check("8 WebSockets flooded with 1 MiB messages while the browser reads nothing keep A's RSS "
              "under 64 MiB above idle",
              peak - idle < 64, f"idle {idle:.0f} MiB, peak {peak:.0f} MiB (+{peak - idle:.0f}); the service "
              f"got to send {sent / 2**20:.0f} MiB in all")
        resp = via(app_b, bob, "POST", "/auth/logout")
        since = time.monotonic()
        codes, lock = [], threading.Lock()

        def drain(ws):
            try:
                while (message := ws.recv())[0] != "close":
                    pass
                code = message[1]
            except (OSError, ValueError) as e:
                code = type(e).__name__
            with lock:
                codes.append((code, round(time.monotonic() - since, 2)))

        readers = [threading.Thread(target=drain, args=(ws,), daemon=True) for ws in sockets]
        for r in readers:
            r.start()
        for r in readers:
            r.join(30)
        check("a logout on B closes every one of the 8 flooded WebSockets on A with 4401 (after the "
              "message each had begun)",
              resp.status == 200 and len(codes) == 8 and all(c == 4401 for c, _ in codes),
              f"{codes}")
        after = rss_mib(couriers[port_a].pid)
        check("... and A gives the memory back", after - idle < 32, f"{after:.0f} MiB after, {idle:.0f} idle")

        # --- The 10-minute rule: a silent login cannot end the other sessions --------------
        carol = Browser()
        login(carol, app_a, "carol")
        other = Browser()
        login(other, app_a, "carol")
        # The provider's SSO cookie signs carol in again without a prompt: a new session now.
        url, resp = carol.follow(f"{app_a}/auth/login?prompt=none&return_to=/silent",
                                 lambda n: n.startswith(app_a) and "/auth/" not in n)
        silent_ok = resp.status == 302 and "login_error" not in (resp.getheader("Location") or "")
        me = api(carol, "GET", app_a, "/api/me")
        check("a silent login (prompt=none) at the provider's word makes a session",
              silent_ok and me.status == 200, f"{resp.status} {resp.getheader('Location')}, /api/me {me.status}")
        resp = api(carol, "DELETE", app_a, "/api/sessions")
        code = json.loads(resp.body or b"{}").get("code")
        check("... which cannot end carol's other sessions: 401 reauth_required (its ID token named no "
              "auth_time, which counts as old)", resp.status == 401 and code == "reauth_required",
              f"{resp.status} {code}")
        check("... and her other session goes on", api(other, "GET", app_a, "/api/me").status == 200)
        # The SPA's way out: a fresh login, prompt=login&max_age=0.
        url, resp = carol.follow(f"{app_a}/auth/login?prompt=login&max_age=0&return_to=/fresh")
        interaction = resp.status == 200 and "/interaction/" in url
        if interaction:
            form = urllib.parse.urlsplit(url)
            post = f"{form.scheme}://{form.netloc}{form.path}/login"
            resp = carol.request("POST", post, body={"login": "carol", "password": "x"})
            nxt = urllib.parse.urljoin(post, resp.getheader("Location"))
            _, resp = carol.follow(nxt, lambda n: n.startswith(app_a) and "/auth/" not in n)
        check("prompt=login&max_age=0 asks the user again and signs her in",
              interaction and resp.status == 302 and resp.getheader("Location") == "/fresh",
              f"{url} {resp.status} {resp.getheader('Location')}")
        resp = api(carol, "DELETE", app_a, "/api/sessions")
        check("... after which ending her other sessions works (204) and they are gone on B too",
              resp.status == 204 and via(app_b, other, "GET", "/api/me").status == 401, resp.status)

        # --- The SPA asks for that fresh login -------------------------------------------
        source = Browser().get(f"{app_a}/app.js").body.decode()
        check("the example SPA's 'sign in again' for ending other sessions asks prompt=login and max_age=0 "
              "(the browser test clicks it: tests/e2e)",
              "prompt: 'login', maxAge: 0" in source and "params.set('max_age'" in source)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
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


def http_request(method, url, headers):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    conn.request(method, u.path + ("?" + u.query if u.query else ""), headers=headers)
    resp = conn.getresponse()
    resp.body = resp.read()
    return resp


if __name__ == "__main__":
    sys.exit(main())
