#!/usr/bin/env python3
"""Black-box check of a user's sessions (`/api/sessions`) and `courier sessions list|end`: two
courier instances on one fresh database, a real provider (node-oidc-provider), one user signed
in from two clients with different User-Agents, another user beside them.

    cargo build --release -p courier
    python3 tests/blackbox/sessions.py            # or: python3 tests/blackbox/sessions.py target/debug/courier

Prints one line per check and 'N passed, N failed'; exits non-zero on a failure.
"""

import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

from client import ROOT, Browser, free_port, login, start_courier, start_provider

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
FIREFOX = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0"
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f"  ({detail})"), flush=True)


class Client(Browser):
    """A Browser that sends a User-Agent header, as real ones do."""

    def __init__(self, user_agent):
        super().__init__()
        self.user_agent = user_agent

    def request(self, method, url, body=None, headers=None):
        return super().request(method, url, body, {"User-Agent": self.user_agent, **(headers or {})})


def api(browser, method, url):
    resp = browser.request(method, url, headers={"X-CSRF": "1"})
    return resp.status, (json.loads(resp.body) if resp.body else None)


def on(browser, source_netloc, target_netloc):
    """The same session (its cookie) in a client for another instance."""
    other = Browser()
    other.cookies[(target_netloc, COOKIE, "/")] = browser.cookie(source_netloc, COOKIE)
    return other


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/courier")
    db = "courier_blackbox_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    port_a, port_b = free_port(), free_port()
    app_a, app_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    net_a, net_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
    procs = []
    try:
        provider, issuer = start_provider(app_a)
        procs.append(provider)
        key = base64.b64encode(os.urandom(32)).decode()
        configs = {}
        for port in (port_a, port_b):
            text = f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[database]
url = "postgres://postgres@127.0.0.1:5432/{db}"

[security]
encryption_keys = ["{key}"]

[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "courier-secret"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
"""
            procs.append(start_courier(binary, text))
            config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            config.write(text)
            config.close()
            configs[port] = config.name
        for _ in range(100):
            listening = subprocess.run(
                ["psql", f"postgres://postgres@127.0.0.1:5432/{db}", "-Atc",
                 "SELECT count(*) FROM cache_listeners"], capture_output=True, text=True).stdout
            if listening.strip() == "2":
                break
            time.sleep(0.1)
        check("both instances listen for cache announcements", listening.strip() == "2", listening)

        laptop, phone, bob = Client(CHROME), Client(FIREFOX), Client("curl/8.5.0")
        for browser, user in [(laptop, "alice"), (phone, "alice"), (bob, "bob")]:
            login(browser, app_a, user)
        phone_b = on(phone, net_a, net_b)
        check("a session made on A works on B",
              [api(phone_b, "GET", f"{app_b}/api/me")[0] for _ in range(2)] == [200, 200])

        status, body = api(laptop, "GET", f"{app_a}/api/sessions")
        sessions = (body or {}).get("sessions", [])
        agents = sorted((s["user_agent"], s["current"]) for s in sessions)
        check("/api/sessions lists the user's two sessions, the laptop's current",
              status == 200 and agents == [("Chrome on Linux", True), ("Firefox on macOS", False)],
              (status, body))
        phone_id = next((s["id"] for s in sessions if not s["current"]), "")
        _, bobs = api(bob, "GET", f"{app_a}/api/sessions")
        bob_id = bobs["sessions"][0]["id"]
        check("bob sees only his own session", len(bobs["sessions"]) == 1
              and bob_id not in [s["id"] for s in sessions], bobs)

        status, body = api(laptop, "DELETE", f"{app_a}/api/sessions/{bob_id}")
        check("ending another user's session is 404 not_found",
              status == 404 and body["code"] == "not_found", (status, body))
        check("... and bob's session goes on", api(bob, "GET", f"{app_a}/api/me")[0] == 200)
        status, body = api(laptop, "DELETE", f"{app_a}/api/sessions/not-an-id")
        check("a malformed id is 404 not_found", status == 404 and body["code"] == "not_found",
              (status, body))
        status = laptop.request("DELETE", f"{app_a}/api/sessions/{phone_id}").status
        check("without X-CSRF: 403", status == 403, status)

        status, _ = api(laptop, "DELETE", f"{app_a}/api/sessions/{phone_id}")
        on_b = api(phone_b, "GET", f"{app_b}/api/me")[0]
        on_a = api(phone, "GET", f"{app_a}/api/me")[0]
        check("ending the phone's session on A: 204, then refused on B and on A at once",
              (status, on_b, on_a) == (204, 401, 401), (status, on_b, on_a))
        check("the laptop's session goes on", api(laptop, "GET", f"{app_a}/api/me")[0] == 200)

        phone = Client(FIREFOX)
        login(phone, app_a, "alice")
        phone_b = on(phone, net_a, net_b)
        laptop_b = on(laptop, net_a, net_b)
        check("a new phone session works on B", api(phone_b, "GET", f"{app_b}/api/me")[0] == 200)
        env = {**os.environ, "RUST_LOG": "warn"}
        listed = subprocess.run([binary, "sessions", "list", "--sub", "alice", "--config",
                                 configs[port_a]], capture_output=True, text=True, env=env)
        lines = [json.loads(line) for line in listed.stdout.splitlines()]
        check("courier sessions list --sub alice prints her two sessions as JSON lines",
              listed.returncode == 0 and len(lines) == 2 and all(l["sub"] == "alice" for l in lines),
              listed.stdout + listed.stderr)
        ended = subprocess.run([binary, "sessions", "end", "--sub", "alice", "--config",
                                configs[port_b]], capture_output=True, text=True, env=env)
        after = [api(laptop, "GET", f"{app_a}/api/me")[0], api(laptop_b, "GET", f"{app_b}/api/me")[0],
                 api(phone_b, "GET", f"{app_b}/api/me")[0]]
        check("courier sessions end --sub alice: ended 2, refused on A and B at once",
              ended.returncode == 0 and "ended 2 session(s)" in ended.stdout and after == [401] * 3,
              (ended.returncode, ended.stdout, ended.stderr, after))
        check("... and bob's session goes on", api(bob, "GET", f"{app_a}/api/me")[0] == 200)
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
