#!/usr/bin/env python3
"""Black-box check of services, linked accounts and logout, on the release binaries: two courier
instances on one fresh database, two real providers (node-oidc-provider), two demo APIs that
check tokens by introspection, configs written as the SPEC gives them, a client without a
browser. Real time, no injected clock: the login provider's access tokens live 64 s, so they are
due for refresh (60 s margin) a few seconds after they are issued.

    cargo build --release -p courier -p demo-api
    python3 tests/blackbox/services.py

Prints one line per check and 'N passed, N failed'; exits non-zero on a failure.
"""

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

from client import ROOT, Browser, free_port, login, start_provider

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f"  ({detail})"), flush=True)


def raw_status(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return int(data.split(b" ", 2)[1])


def http(method, url, body=None, headers=None):
    import http.client
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    conn.request(method, u.path + ("?" + u.query if u.query else ""), body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


def grants(issuer):
    return json.loads(http("GET", f"{issuer}/__test/grants")[1])


def sign(issuer, claims, header=None):
    body = json.dumps({"claims": claims, "header": header or {"typ": "logout+jwt"}})
    return http("POST", f"{issuer}/__test/sign", body, {"Content-Type": "application/json"})[1].decode()


def main():
    db = "courier_blackbox_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    port_a, port_b = free_port(), free_port()
    app_a, app_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    procs = []
    try:
        main_provider, main_issuer = start_provider(app_a, access_token_ttl=64, clients=[{
            "client_id": "courier", "client_secret": "courier-secret",
            "redirect_uris": [f"{app_a}/auth/callback/main"],
            "post_logout_redirect_uris": [f"{app_a}/"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "backchannel_logout_uri": f"{app_a}/auth/backchannel-logout/main",
            "backchannel_logout_session_required": True}])
        calendar_provider, calendar_issuer = start_provider(app_a, clients=[{
            "client_id": "courier", "client_secret": "courier-secret",
            "redirect_uris": [f"{app_a}/auth/callback/calendar"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}])
        procs += [main_provider, calendar_provider]
        demos = {}
        for name, issuer in [("orders", main_issuer), ("calendar", calendar_issuer)]:
            port = free_port()
            procs.append(subprocess.Popen(
                [os.path.join(ROOT, "target/release/demo-api"), "--listen", f"127.0.0.1:{port}",
                 "--introspection-endpoint", f"{issuer}/token/introspection", "--client-id", "courier"],
                env={**os.environ, "DEMO_API_CLIENT_SECRET": "courier-secret"}, stderr=subprocess.DEVNULL))
            demos[name] = f"http://127.0.0.1:{port}"
        env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
               "COURIER_KEY": base64.b64encode(os.urandom(32)).decode(), "MAIN_SECRET": "courier-secret",
               "RUST_LOG": "warn"}
        for port in (port_a, port_b):
            config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            config.write(f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "{app_a}"

[database]
url = "${{DATABASE_URL}}"
max_connections = 16

[security]
encryption_keys = ["${{COURIER_KEY}}"]

[[providers]]
id = "main"
issuer = "{main_issuer}"
client_id = "courier"
client_secret = "${{MAIN_SECRET}}"
scopes = ["openid", "profile", "email", "offline_access"]
login = true

[[providers]]
id = "calendar"
issuer = "{calendar_issuer}"
client_id = "courier"
client_secret = "${{MAIN_SECRET}}"
scopes = ["openid", "offline_access"]

[[services]]
name = "orders"
base_url = "{demos['orders']}/orders/"
provider = "main"

[[services]]
name = "calendar"
base_url = "{demos['calendar']}/"
provider = "calendar"
scopes = ["calendar:read"]
""")
            config.close()
            procs.append(subprocess.Popen([os.path.join(ROOT, "target/release/courier"), "serve", "--config", config.name],
                                          env=env, stderr=subprocess.DEVNULL))
            for _ in range(100):
                try:
                    if http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
        netloc_a = f"127.0.0.1:{port_a}"

        def api(browser, method, path, app=app_a):
            cookie = browser.cookie(netloc_a, COOKIE)
            headers = {"X-CSRF": "1"}
            if cookie:
                headers["Cookie"] = f"{COOKIE}={cookie}"
            status, body = http(method, app + path, headers=headers)
            try:
                return status, json.loads(body) if body else None
            except ValueError:
                return status, body

        # --- Issue: call dependent services ------------------------------------------------
        alice = Browser()
        login(alice, app_a, "alice")
        status, echo = api(alice, "GET", "/api/services/orders/v1/items?x=1")
        check("a call carries the user's token (introspected by the service)",
              status == 200 and echo["token"]["sub"] == "alice" and echo["path"] == "/orders/v1/items", (status, echo))
        status, echo = api(alice, "GET", "/api/services/orders/v1/items", app_b)
        check("the same session works on the second instance", status == 200, status)

        # courier refreshes a token within 60 s of its expiry, or a quarter of its lifetime when
        # that is shorter: 16 s of the 64 s token, which is due 48 s after the login.
        time.sleep(50)
        http("POST", f"{main_issuer}/__test/token-delay?ms=500")
        before = grants(main_issuer).get("refresh_token", 0)
        statuses = []

        def call(i):
            statuses.append(api(alice, "GET", "/api/services/orders/x", app_a if i % 2 == 0 else app_b)[0])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        http("POST", f"{main_issuer}/__test/token-delay?ms=0")
        after = grants(main_issuer).get("refresh_token", 0)
        check("50 concurrent calls after expiry on two instances all succeed", statuses == [200] * 50, statuses)
        check("... and cost exactly one refresh grant", after - before == 1, after - before)

        cookie = alice.cookie(netloc_a, COOKIE)
        for path in ["../secret", "..%2fsecret", "%2e%2e/secret", ".%2E/x", "v1/../../x", "%252e%252e/x",
                     "..%5cx", "..\\x", "//evil.example/x", "http://evil.example/x", "@evil.example", "a@b"]:
            status = raw_status(port_a, f"GET /api/services/orders/{path} HTTP/1.1\r\nHost: x\r\nX-CSRF: 1\r\n"
                                        f"Cookie: {COOKIE}={cookie}\r\nConnection: close\r\n\r\n")
            check(f"hostile path {path!r} stays inside base_url (400)", status == 400, status)

        # --- Issue: linked accounts ----------------------------------------------------------
        status, services = api(alice, "GET", "/api/services")
        cal = next(s for s in services["services"] if s["name"] == "calendar")
        check("calendar starts not connected, with a connect_url",
              cal["status"] == "not_connected" and cal["connect_url"] == "/auth/connect/calendar", cal)
        url, resp = alice.follow(f"{app_a}/auth/connect/calendar?return_to=/settings")
        u = urllib.parse.urlsplit(url)
        post = f"{u.scheme}://{u.netloc}{u.path}/login"
        resp = alice.request("POST", post, body={"login": "alice-cal", "password": "x"})
        _, resp = alice.follow(urllib.parse.urljoin(post, resp.getheader("Location")),
                               lambda n: n.startswith(app_a) and "/auth/" not in n)
        check("connect comes back to return_to", resp.getheader("Location") == "/settings", resp.getheader("Location"))
        status, echo = api(alice, "GET", "/api/services/calendar/events")
        check("the calendar service gets the linked account's token",
              status == 200 and echo["token"]["sub"] == "alice-cal", (status, echo))

        status, body = api(alice, "POST", "/auth/logout")
        check("logout answers 200 with a logout_url", status == 200 and "logout_url" in body, (status, body))
        logout_url = urllib.parse.urlsplit(body["logout_url"])
        q = urllib.parse.parse_qs(logout_url.query)
        check("logout_url is the provider's end_session_endpoint with id_token_hint, post_logout_redirect_uri, client_id",
              body["logout_url"].startswith(f"{main_issuer}/session/end?") and "id_token_hint" in q
              and q.get("post_logout_redirect_uri") == [f"{app_a}/"] and q.get("client_id") == ["courier"], body)
        check("after logout /api/me is 401", api(alice, "GET", "/api/me")[0] == 401)
        check("after logout the proxy is 401", api(alice, "GET", "/api/services/orders/x")[0] == 401)
        check("the login refresh token was revoked at the provider", grants(main_issuer).get("revoked_grants", 0) >= 1,
              grants(main_issuer))

        alice = Browser()
        login(alice, app_a, "alice")
        status, services = api(alice, "GET", "/api/services")
        cal = next(s for s in services["services"] if s["name"] == "calendar")
        check("after logout and a new login the account is still connected", cal["status"] == "connected", cal)
        status, echo = api(alice, "GET", "/api/services/calendar/events")
        check("... and usable", status == 200 and echo["token"]["sub"] == "alice-cal", (status, echo))
        revoked_before = grants(calendar_issuer).get("revoked_grants", 0)
        status, _ = api(alice, "DELETE", "/api/connections/calendar")
        check("disconnect answers 204", status == 204, status)
        check("disconnect revoked the grant at the calendar provider",
              grants(calendar_issuer).get("revoked_grants", 0) == revoked_before + 1, grants(calendar_issuer))
        status, body = api(alice, "GET", "/api/services/calendar/events")
        check("after disconnect: 403 connect_required", status == 403 and body["code"] == "connect_required", body)

        # --- Issue: logout everywhere --------------------------------------------------------
        cookie = alice.cookie(netloc_a, COOKIE)
        on_b = Browser()
        on_b.cookies[(netloc_a, COOKIE, "/")] = cookie
        check("before back-channel logout instance B serves the session", api(on_b, "GET", "/api/me", app_b)[0] == 200)
        page = alice.get(f"{main_issuer}/session/end?client_id=courier&post_logout_redirect_uri="
                         + urllib.parse.quote(f"{app_a}/", safe=""))
        html = page.body.decode()
        xsrf = html.split('name="xsrf" value="', 1)[1].split('"', 1)[0]
        alice.request("POST", f"{main_issuer}/session/end/confirm", body={"xsrf": xsrf, "logout": "yes"})
        check("a logout at the provider (back-channel to instance A) ends the session on instance B",
              api(on_b, "GET", "/api/me", app_b)[0] == 401)

        victim = Browser()
        login(victim, app_a, "victim")
        now = int(time.time())

        def claims(**changes):
            c = {"iss": main_issuer, "aud": "courier", "iat": now, "exp": now + 120, "jti": str(uuid.uuid4()),
                 "events": {EVENT: {}}, "sub": "victim"}
            for k, v in changes.items():
                if v is None:
                    c.pop(k, None)
                else:
                    c[k] = v
            return c

        def b64(o):
            return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()

        valid = sign(main_issuer, claims())
        head, payload, sig = valid.split(".")
        forged = {
            "bad signature": f"{head}.{payload}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}",
            "alg none": f"{b64({'alg': 'none', 'typ': 'logout+jwt'})}.{payload}.",
            "wrong iss": sign(main_issuer, claims(iss="http://evil.example")),
            "wrong aud": sign(main_issuer, claims(aud="someone-else")),
            "expired": sign(main_issuer, claims(exp=now - 300)),
            "no exp, issued 10 minutes ago": sign(main_issuer, claims(exp=None, iat=now - 600)),
            "events missing": sign(main_issuer, claims(events=None)),
            "nonce present": sign(main_issuer, claims(nonce="n")),
            "neither sid nor sub": sign(main_issuer, claims(sub=None)),
            "typ at+jwt": sign(main_issuer, claims(), {"typ": "at+jwt"}),
            "no jti": sign(main_issuer, claims(jti=None)),
        }
        for name, token in forged.items():
            status, _ = http("POST", f"{app_a}/auth/backchannel-logout/main",
                             urllib.parse.urlencode({"logout_token": token}),
                             {"Content-Type": "application/x-www-form-urlencoded"})
            check(f"forged logout token ({name}) → 400, session alive",
                  status == 400 and api(victim, "GET", "/api/me")[0] == 200, status)
        # As Keycloak before 25 and IdentityServer 6 send them (for a user without a session,
        # so the victim's stays): typed JWT or untyped, and without exp while recent.
        untyped = {"alg": "RS256"}  # a header without typ
        accepted = {
            "typ JWT": sign(main_issuer, claims(sub="nobody"), {"typ": "JWT"}),
            "untyped": sign(main_issuer, claims(sub="nobody"), untyped),
            "no exp, issued 30 s ago": sign(main_issuer, claims(sub="nobody", exp=None, iat=int(time.time()) - 30),
                                            {"typ": "JWT"}),
        }
        for name, token in accepted.items():
            status, _ = http("POST", f"{app_a}/auth/backchannel-logout/main",
                             urllib.parse.urlencode({"logout_token": token}),
                             {"Content-Type": "application/x-www-form-urlencoded"})
            check(f"a logout token as other providers send it ({name}) → 200", status == 200, status)
        status, _ = http("POST", f"{app_b}/auth/backchannel-logout/main", urllib.parse.urlencode({"logout_token": valid}),
                         {"Content-Type": "application/x-www-form-urlencoded"})
        check("a valid logout token (sub) → 200 and the session ends", status == 200 and api(victim, "GET", "/api/me")[0] == 401, status)
        status, _ = http("POST", f"{app_a}/auth/backchannel-logout/main", urllib.parse.urlencode({"logout_token": valid}),
                         {"Content-Type": "application/x-www-form-urlencoded"})
        check("the same logout token replayed → 400", status == 400, status)
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
