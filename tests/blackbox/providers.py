#!/usr/bin/env python3
"""Black-box check of issue 17 (several login providers, silent login, a user's sessions): two
courier instances on one fresh database, configured from the SPEC alone with two login
providers (two node-oidc-provider instances, `login = true` with a `display_name`) and a third,
non-login provider beside them.

    cargo build --release -p courier
    (cd tests/oidc-provider && npm ci)
    python3 tests/blackbox/providers.py           # or: python3 tests/blackbox/providers.py target/debug/courier

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
import urllib.parse

from client import ROOT, Browser, free_port, login, start_courier, start_provider

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
FIREFOX = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0"
PROVIDERS = [("alpha", "Alpha ID"), ("beta", "Beta Accounts")]
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f"  ({detail})"), flush=True)


class Client(Browser):
    """A Browser that sends a User-Agent header, as real ones do."""

    def __init__(self, user_agent):
        super().__init__()
        self.user_agent = user_agent

    def request(self, method, url, body=None, headers=None):
        return super().request(method, url, body, {"User-Agent": self.user_agent, **(headers or {})})


def api(browser, method, url):
    resp = browser.request(method, url, headers={"X-CSRF": "1"})
    try:
        body = json.loads(resp.body) if resp.body else None
    except ValueError:
        body = resp.body[:200]
    return resp.status, body


def on(browser, source_netloc, target_netloc):
    """The same session (its cookie) in a client for another instance."""
    other = Browser()
    other.cookies[(target_netloc, COOKIE, "/")] = browser.cookie(source_netloc, COOKIE)
    return other


def config_text(port, issuers, linked_issuer):
    text = f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[database]
url = "${{BLACKBOX_DATABASE_URL}}"

[security]
encryption_keys = ["${{BLACKBOX_KEY}}"]
"""
    for (pid, name), issuer in zip(PROVIDERS, issuers):
        text += f"""
[[providers]]
id = "{pid}"
issuer = "{issuer}"
client_id = "courier"
client_secret = "${{BLACKBOX_SECRET}}"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
display_name = "{name}"
"""
    # A provider without `login = true`: not a sign-in button, not a `provider=` for login.
    text += f"""
[[providers]]
id = "linked"
issuer = "{linked_issuer}"
client_id = "courier"
client_secret = "${{BLACKBOX_SECRET}}"
scopes = ["openid"]
"""
    return text


def sessions_cli(binary, env, config, *args):
    return subprocess.run([binary, "sessions", *args, "--config", config],
                          capture_output=True, text=True, env=env)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/courier")
    db = "courier_blackbox_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    port_a, port_b = free_port(), free_port()
    app_a, app_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    net_a, net_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
    env = {**os.environ, "RUST_LOG": "warn",
           "BLACKBOX_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
           "BLACKBOX_KEY": base64.b64encode(os.urandom(32)).decode(),
           "BLACKBOX_SECRET": "courier-secret"}
    procs = []
    try:
        issuers = []
        for pid, _ in PROVIDERS:
            proc, issuer = start_provider(app_a, provider_id=pid, more_app_urls=[app_b])
            procs.append(proc)
            issuers.append(issuer)
        proc, linked_issuer = start_provider(app_a, provider_id="linked", more_app_urls=[app_b])
        procs.append(proc)
        configs = {}
        for port in (port_a, port_b):
            text = config_text(port, issuers, linked_issuer)
            config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            config.write(text)
            config.close()
            configs[port] = config.name
            procs.append(start_courier(binary, text, env))
        for _ in range(100):
            listening = subprocess.run(
                ["psql", env["BLACKBOX_DATABASE_URL"], "-Atc",
                 "SELECT count(*) FROM cache_listeners"], capture_output=True, text=True).stdout
            if listening.strip() == "2":
                break
            time.sleep(0.1)
        check("both instances listen for cache announcements", listening.strip() == "2", listening)

        # /auth/providers: no session, no X-CSRF header.
        for app in (app_a, app_b):
            resp = Browser().get(f"{app}/auth/providers")
            try:
                listed = [(p["id"], p["name"]) for p in json.loads(resp.body)["providers"]]
            except (ValueError, KeyError, TypeError):
                listed = resp.body[:200]
            check(f"GET /auth/providers on {'A' if app == app_a else 'B'} without session or "
                  "X-CSRF: 200, both login providers in order with their display_name, not the "
                  "non-login one",
                  resp.status == 200 and listed == PROVIDERS
                  and "no-store" in (resp.getheader("Cache-Control") or ""),
                  (resp.status, listed, resp.getheader("Cache-Control")))

        # A login through each provider; the same sub at both is two users.
        mes = {}
        for pid, _ in PROVIDERS:
            browser = Client(CHROME)
            resp = login(browser, app_a, "alice", provider=pid)
            status, me = api(on(browser, net_a, net_b), "GET", f"{app_b}/api/me")
            mes[pid] = me
            check(f"a login through {pid} (on A) gives a session whose /api/me (on B) names "
                  f"provider {pid}",
                  resp.status == 302 and status == 200 and me.get("provider") == pid
                  and me.get("sub") == "alice", (resp.status, status, me))
        ids = [mes[pid].get("user_id") if isinstance(mes[pid], dict) else None for pid, _ in PROVIDERS]
        check("alice at alpha and alice at beta (same e-mail) are two users, not merged",
              None not in ids and ids[0] != ids[1], ids)

        for query, what in [("provider=nope", "an unknown provider"),
                            ("provider=linked", "a non-login provider"),
                            ("provider=beta&prompt=bogus", "prompt=bogus")]:
            status = Browser().get(f"{app_a}/auth/login?return_to=/x&{query}").status
            check(f"/auth/login with {what} ({query}) is 400", status == 400, status)

        # Silent login without a session at the provider.
        for pid, _ in PROVIDERS:
            browser = Browser()
            url, resp = browser.follow(
                f"{app_a}/auth/login?return_to=/silent&provider={pid}&prompt=none",
                lambda n: n.startswith(app_a) and "/auth/" not in n)
            target = urllib.parse.urljoin(url, resp.getheader("Location") or "")
            u = urllib.parse.urlsplit(target)
            query = urllib.parse.parse_qs(u.query)
            me = api(browser, "GET", f"{app_a}/api/me")[0]
            check(f"prompt=none at {pid} without a provider session comes back to return_to "
                  "with login_error=login_required, no session",
                  resp.status in (302, 303) and target.startswith(app_a) and u.path == "/silent"
                  and query.get("login_error") == ["login_required"] and me == 401,
                  (resp.status, target, me))

        # One user, two browsers, one provider (alpha).
        laptop, phone = Client(CHROME), Client(FIREFOX)
        for browser in (laptop, phone):
            login(browser, app_a, "carol", provider="alpha")
        laptop_b, phone_b = on(laptop, net_a, net_b), on(phone, net_a, net_b)
        views = {}
        for who, client, app in [("laptop on A", laptop, app_a), ("laptop on B", laptop_b, app_b),
                                 ("phone on A", phone, app_a), ("phone on B", phone_b, app_b)]:
            status, body = api(client, "GET", f"{app}/api/sessions")
            sessions = (body or {}).get("sessions", []) if isinstance(body, dict) else []
            views[who] = (status, sorted((s["user_agent"], s["provider"], s["current"], s["id"])
                                         for s in sessions))
        ids_seen = {tuple(sorted(s[3] for s in v[1])) for v in views.values()}
        ok = all(v[0] == 200 and len(v[1]) == 2 for v in views.values()) and len(ids_seen) == 1
        check("/api/sessions lists carol's two sessions (two cookie jars) the same from A and B",
              ok, views)
        laptop_current = [s[:3] for s in views["laptop on A"][1]]
        phone_current = [s[:3] for s in views["phone on B"][1]]
        check("... with the right current: the laptop's on the laptop, the phone's on the phone",
              laptop_current == [("Chrome on Linux", "alpha", True), ("Firefox on macOS", "alpha", False)]
              and phone_current == [("Chrome on Linux", "alpha", False), ("Firefox on macOS", "alpha", True)]
              and [s[:3] for s in views["laptop on B"][1]] == laptop_current
              and [s[:3] for s in views["phone on A"][1]] == phone_current, views)
        phone_id = next((s[3] for s in views["laptop on A"][1] if not s[2]), "")

        status, _ = api(laptop, "DELETE", f"{app_a}/api/sessions/{phone_id}")
        on_b = api(phone_b, "GET", f"{app_b}/api/me")[0]
        on_a = api(phone, "GET", f"{app_a}/api/me")[0]
        check("DELETE /api/sessions/{phone} from the laptop on A: 204, then the phone's next "
              "request is 401 on B and on A at once", (status, on_b, on_a) == (204, 401, 401),
              (status, on_b, on_a))
        check("... the laptop goes on (A and B)",
              [api(laptop, "GET", f"{app_a}/api/me")[0],
               api(laptop_b, "GET", f"{app_b}/api/me")[0]] == [200, 200])

        # The command line: with two login providers, --sub needs --provider.
        phone = Client(FIREFOX)
        login(phone, app_b, "carol", provider="alpha")
        phone_a = on(phone, net_b, net_a)
        beta_carol = Client(CHROME)
        login(beta_carol, app_a, "carol", provider="beta")
        before = [api(c, "GET", f"{a}/api/me")[0] for c, a in
                  [(laptop, app_a), (phone, app_b), (phone_a, app_a), (beta_carol, app_a)]]
        check("a new phone session (made on B) works on A, carol@beta too", before == [200] * 4,
              before)
        refused = sessions_cli(binary, env, configs[port_a], "end", "--sub", "carol")
        still = [api(c, "GET", f"{a}/api/me")[0] for c, a in
                 [(laptop, app_a), (phone, app_b), (beta_carol, app_a)]]
        check("courier sessions end --sub carol without --provider is refused with a message "
              "naming --provider, nothing ended",
              refused.returncode != 0 and "--provider" in refused.stderr + refused.stdout
              and still == [200] * 3,
              (refused.returncode, refused.stdout, refused.stderr, still))
        listed = sessions_cli(binary, env, configs[port_a], "list", "--sub", "carol",
                              "--provider", "alpha")
        try:
            lines = [json.loads(line) for line in listed.stdout.splitlines()]
        except ValueError:
            lines = None
        check("courier sessions list --sub carol --provider alpha prints her two alpha sessions",
              listed.returncode == 0 and lines is not None and len(lines) == 2,
              (listed.returncode, listed.stdout, listed.stderr))
        ended = sessions_cli(binary, env, configs[port_b], "end", "--sub", "carol",
                             "--provider", "alpha")
        after = [api(laptop, "GET", f"{app_a}/api/me")[0], api(laptop_b, "GET", f"{app_b}/api/me")[0],
                 api(phone, "GET", f"{app_b}/api/me")[0], api(phone_a, "GET", f"{app_a}/api/me")[0]]
        check("courier sessions end --sub carol --provider alpha: ended 2, both refused on A "
              "and B right after it returns",
              ended.returncode == 0 and "ended 2 session(s)" in ended.stdout and after == [401] * 4,
              (ended.returncode, ended.stdout, ended.stderr, after))
        check("... carol at beta (another user) goes on, on A and B",
              [api(beta_carol, "GET", f"{app_a}/api/me")[0],
               api(on(beta_carol, net_a, net_b), "GET", f"{app_b}/api/me")[0]] == [200, 200])
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
