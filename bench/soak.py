#!/usr/bin/env python3
"""Soak: mixed traffic for several minutes against two courier instances on one database.

    bench/soak [--minutes 10] [--users 20] [--pause 0.15] [--write docs/reliability.md]

(bench/soak makes sure Postgres, the provider's node modules and the release binaries are there,
then runs this file.) Starts on loopback a fresh database, the test provider with short-lived
access tokens and rotating refresh tokens, the demo API checking every token by introspection,
and two courier instances (target/release/courier) sharing the database. A pool of virtual users
then, until time is up: logs in through the provider's pages at one instance, makes a random
number of calls alternating between the instances (GET /api/me, proxied GETs to the demo API,
some slow ones, some sent to both instances at once), logs out at one, and checks that the old
cookie gets 401 on both. Refreshes happen by themselves: access tokens live --token-ttl seconds
and courier refreshes them 60 s before they expire.

Every 5 s it samples each instance's RSS and open files, and the database's connection count
(with --scrape it also GETs /metrics, as Prometheus would; by default /metrics is read only at
the end, so memory that only a scrape releases shows as growth).
Prints a Markdown report (requests by kind and status, 5xx with their `code`, resources in the
first minute after a warm-up against the last minute, and whether each target held); --write
replaces the "## Soak" section of the given Markdown file. Exits 1 when a target failed.
"""

import argparse
import base64
import datetime
import http.client
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/blackbox"))
from client import (ROOT, Browser, demo_config, free_port, replace_section,  # noqa: E402
                    start_provider, wait_ready)

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
MAX_CONNECTIONS = 16
SAMPLE_SECS = 5
REDIRECTS = (301, 302, 303, 307, 308)
NAMES = ("A", "B")

# What each kind of request should get; anything else is recorded with its details.
EXPECTED = {
    "login": {302},          # GET /auth/login
    "callback": {302},       # GET /auth/callback/main, redirecting to return_to with a cookie
    "me": {200},             # GET /api/me
    "proxy": {200},          # GET /api/services/demo/v1/items
    "proxy_slow": {200},     # GET /api/services/demo/_demo/slow?ms=200
    "proxy_pair": {200},     # the same proxied GET sent to both instances at once
    "logout": {200},         # POST /auth/logout
    "after_logout": {401},   # the logged-out cookie at either instance
    "provider": {200, 302, 303},  # the provider's pages during a login (not courier's)
}


def psql(sql, check=True):
    return subprocess.run(["psql", ADMIN, "-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=check,
                          capture_output=True, text=True).stdout.strip()


def problem_code(body):
    try:
        return json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None


class Stats:
    """Counts responses by (kind, status) and keeps the details of every unexpected one."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.counts = Counter()
        self.total = 0
        self.faults = []        # courier's 5xx
        self.unexpected = []    # anything else not in EXPECTED (the first 100)
        self.unexpected_count = Counter()

    def elapsed(self):
        return time.monotonic() - self.started

    def record(self, kind, instance, method, path, status, body=b"", ok=None, note=""):
        if ok is None:
            ok = status in EXPECTED[kind]
        with self.lock:
            self.counts[(kind, status)] += 1
            self.total += 1
            if ok:
                return
            entry = {"t": round(self.elapsed(), 1), "instance": instance, "kind": kind,
                     "request": f"{method} {path}", "status": status, "code": problem_code(body),
                     "body": body[:300].decode("utf-8", "replace"), "note": note}
            if isinstance(status, int) and status >= 500 and kind != "provider":
                self.faults.append(entry)
            else:
                self.unexpected_count[kind] += 1
                if len(self.unexpected) < 100:
                    self.unexpected.append(entry)


class KeptAlive:
    """One kept-alive connection to one instance, as a browser keeps it. A request that finds
    the idle connection closed by the server is sent once more on a new one, as browsers do."""

    def __init__(self, port):
        self.port, self.conn = port, None

    def request(self, method, path, headers):
        for _ in range(2):
            fresh = self.conn is None
            if fresh:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=40)
            try:
                self.conn.request(method, path, headers=headers)
                resp = self.conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if fresh:
                    raise
                continue
            except Exception:
                self.close()
                raise
            if (resp.getheader("Connection") or "").lower() == "close":
                self.close()
            return resp.status, body
        raise ConnectionError("closed twice")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class User(threading.Thread):
    """A virtual user: log in, a random number of calls alternating between the instances,
    log out, check the old cookie on both instances, again."""

    def __init__(self, n, ports, stats, stop, pause):
        super().__init__(daemon=True, name=f"user{n}")
        self.n, self.ports, self.stats, self.stop, self.pause = n, ports, stats, stop, pause
        self.rng = random.Random(n)
        self.conns = [KeptAlive(p) for p in ports]
        self.turn = n % 2

    def next_instance(self):
        self.turn ^= 1
        return self.turn

    def call(self, kind, i, method, path, cookie):
        headers = {"Cookie": f"{COOKIE}={cookie}", "X-CSRF": "1"}
        try:
            status, body = self.conns[i].request(method, path, headers)
        except (OSError, http.client.HTTPException) as e:
            self.stats.record(kind, NAMES[i], method, path, f"error:{type(e).__name__}", str(e).encode())
            return None, b""
        self.stats.record(kind, NAMES[i], method, path, status, body)
        return status, body

    def login(self, i):
        """The whole flow through the provider's login page; returns the session cookie."""
        app = f"http://127.0.0.1:{self.ports[i]}"
        browser = Browser()

        def get(kind, url, method="GET", body=None):
            path = urllib.parse.urlsplit(url).path
            try:
                resp = browser.request(method, url, body=body)
            except (OSError, http.client.HTTPException) as e:
                self.stats.record(kind, NAMES[i], method, path, f"error:{type(e).__name__}", str(e).encode())
                return None
            if kind != "callback":
                self.stats.record(kind, NAMES[i], method, path, resp.status, resp.body)
            return resp

        resp = get("login", f"{app}/auth/login?return_to=/after")
        if resp is None or resp.status != 302:
            return None
        url = urllib.parse.urljoin(app, resp.getheader("Location"))
        for _ in range(10):
            if url.startswith(app):
                break
            resp = get("provider", url)
            if resp is None:
                return None
            if resp.status in REDIRECTS:
                url = urllib.parse.urljoin(url, resp.getheader("Location"))
            elif resp.status == 200 and "/interaction/" in url:
                u = urllib.parse.urlsplit(url)
                url = f"{u.scheme}://{u.netloc}{u.path}/login"
                resp = get("provider", url, "POST", {"login": f"soak{self.n}", "password": "x"})
                if resp is None or resp.status not in REDIRECTS:
                    return None
                url = urllib.parse.urljoin(url, resp.getheader("Location"))
            else:
                return None
        else:
            return None
        resp = get("callback", url)
        if resp is None:
            return None
        cookie = browser.cookie(f"127.0.0.1:{self.ports[i]}", COOKIE)
        location = resp.getheader("Location")
        ok = resp.status == 302 and location == "/after" and cookie is not None
        self.stats.record("callback", NAMES[i], "GET", "/auth/callback/main", resp.status, resp.body, ok=ok,
                          note=f"Location: {location}, cookie {'set' if cookie else 'missing'}")
        return cookie if ok else None

    def pair(self, path, cookie):
        other = threading.Thread(target=self.call, args=("proxy_pair", 1, "GET", path, cookie))
        other.start()
        self.call("proxy_pair", 0, "GET", path, cookie)
        other.join()

    def logout(self, cookie):
        """Logs out at one instance, then asks the same instance's /api/me and, right after, the
        other instance's /api/me or a proxied GET: each must answer 401."""
        i = self.next_instance()
        status, _ = self.call("logout", i, "POST", "/auth/logout", cookie)
        if status != 200:
            return
        done = time.monotonic()
        headers = {"Cookie": f"{COOKIE}={cookie}", "X-CSRF": "1"}
        other = self.rng.choice(["/api/me", "/api/services/demo/v1/items?page=1"])
        for j, path in ((i, "/api/me"), (1 - i, other)):
            try:
                status, body = self.conns[j].request("GET", path, headers)
            except (OSError, http.client.HTTPException) as e:
                status, body = f"error:{type(e).__name__}", str(e).encode()
            note = ""
            if status != 401:
                # Stale for a moment, or still live? Ask again until refused, for up to 3 s.
                stale = (time.monotonic() - done) * 1000
                later = None
                while later != 401 and time.monotonic() - done < 3:
                    time.sleep(0.02)
                    try:
                        later, _ = self.conns[j].request("GET", path, headers)
                    except (OSError, http.client.HTTPException):
                        later = None
                refused = (f"refused (401) {(time.monotonic() - done) * 1000:.0f} ms after"
                           if later == 401 else "still not refused 3 s after")
                note = (f"logout at {NAMES[i]}; this answer {stale:.1f} ms after the logout's reply; "
                        f"{refused}")
            self.stats.record("after_logout", NAMES[j], "GET", path, status, body, note=note)

    def run(self):
        self.stop.wait(self.rng.uniform(0, 3))
        while not self.stop.is_set():
            cookie = self.login(self.next_instance())
            if cookie is None:
                self.stop.wait(1)
                continue
            for _ in range(self.rng.randint(10, 150)):
                if self.stop.wait(self.rng.uniform(0, 2 * self.pause)):
                    return
                roll = self.rng.random()
                page = self.rng.randint(1, 5)
                if roll < 0.35:
                    self.call("me", self.next_instance(), "GET", "/api/me", cookie)
                elif roll < 0.85:
                    self.call("proxy", self.next_instance(), "GET", f"/api/services/demo/v1/items?page={page}", cookie)
                elif roll < 0.93:
                    self.call("proxy_slow", self.next_instance(), "GET", "/api/services/demo/_demo/slow?ms=200", cookie)
                else:
                    self.pair(f"/api/services/demo/v1/items?page={page}", cookie)
            if self.stop.is_set():
                return
            self.logout(cookie)


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


class Sampler(threading.Thread):
    """Every 5 s: each instance's VmRSS and open files, the database's connections, and how many
    requests were made so far."""

    def __init__(self, pids, ports, db, stats, stop, scrape):
        super().__init__(daemon=True, name="sampler")
        self.pids, self.ports, self.db, self.stats, self.stop = pids, ports, db, stats, stop
        self.scrape = scrape
        self.samples = []

    def sample(self):
        if self.scrape:
            for port in self.ports:
                scrape_metrics(port)
        row = {"t": self.stats.elapsed(), "requests": self.stats.total, "rss": [], "fds": []}
        for pid in self.pids:
            try:
                row["rss"].append(status_kib(pid, "VmRSS"))
                row["fds"].append(len(os.listdir(f"/proc/{pid}/fd")))
            except (OSError, AttributeError):
                row["rss"].append(None)
                row["fds"].append(None)
        count = psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.db}'", check=False)
        row["db"] = int(count) if count.isdigit() else None
        self.samples.append(row)

    def run(self):
        deadline = time.monotonic()
        while True:
            self.sample()
            deadline += SAMPLE_SECS
            if self.stop.wait(max(0, deadline - time.monotonic())):
                return


def scrape_metrics(port):
    """courier's refresh, login and logout counters, summed by outcome, and its pool gauges."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return {}
    out = Counter()
    for m in re.finditer(r'^(courier_(?:token_refreshes|logins|logouts)_total)\{([^}]*)\} ([\d.e+]+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        what = m.group(1).removeprefix("courier_").removesuffix("_total")
        out[f"{what} {labels.get('outcome') or labels.get('kind', '')}".strip()] += int(float(m.group(3)))
    for m in re.finditer(r'^courier_(db_pool(?:_idle)?_connections) ([\d.e+]+)$', text, re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


def settled_metrics(port):
    """scrape_metrics, three times 0.3 s apart, keeping the answer with the fewest pool
    connections in use (one being returned at that moment is not held)."""
    answers = []
    for _ in range(3):
        answers.append(scrape_metrics(port))
        time.sleep(0.3)
    return min(answers, key=lambda m: m["db_pool_connections"] - m["db_pool_idle_connections"]
               if "db_pool_idle_connections" in m else float("inf"))


def log_summary(path):
    """WARN and ERROR lines of a courier log, counted by message (timestamps and ids dropped)."""
    counts = Counter()
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return counts
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        m = re.search(r"\b(WARN|ERROR)\b\s+(.*)", line)
        if m:
            message = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\b[0-9a-f]{16,}\b|\d+", "#", m.group(2))
            counts[f"{m.group(1)} {message[:200]}"] += 1
    return counts


def run(args, db, logdir, procs, stop):
    ports, demo_port = [free_port(), free_port()], free_port()
    apps = [f"http://127.0.0.1:{p}" for p in ports]
    provider, issuer = start_provider(
        apps[0], access_token_ttl=args.token_ttl, rotate_refresh_token=True,
        clients=[{"client_id": "courier", "client_secret": "courier-secret",
                  "redirect_uris": [f"{a}/auth/callback/main" for a in apps],
                  "post_logout_redirect_uris": [f"{a}/" for a in apps],
                  "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}])
    procs.append(provider)
    procs.append(subprocess.Popen(
        [os.path.join(ROOT, "target/release/demo-api"), "--listen", f"127.0.0.1:{demo_port}",
         "--introspection-endpoint", f"{issuer}/token/introspection", "--client-id", "courier"],
        env={**os.environ, "DEMO_API_CLIENT_SECRET": "courier-secret"}, stderr=subprocess.DEVNULL))
    key = base64.b64encode(os.urandom(32)).decode()
    couriers = []
    for name, port in zip(NAMES, ports):
        config = os.path.join(logdir, f"courier-{name}.toml")
        with open(config, "w") as f:
            f.write(demo_config(port, db, issuer, demo_port, key, MAX_CONNECTIONS))
        with open(os.path.join(logdir, f"courier-{name}.log"), "w") as log:
            couriers.append(subprocess.Popen(
                [os.path.join(ROOT, "target/release/courier"), "serve", "--config", config],
                env={**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"}, stdout=log, stderr=log))
        procs.append(couriers[-1])
        wait_ready(f"http://127.0.0.1:{port}/readyz")  # one at a time: the first runs the migrations
    # The demo API is up once it accepts connections.
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", demo_port), timeout=2).close()
            break
        except OSError:
            time.sleep(0.1)

    at_rest = [settled_metrics(p) for p in ports]
    stats = Stats()
    sampler = Sampler([c.pid for c in couriers], ports, db, stats, stop, args.scrape)
    users = [User(n, ports, stats, stop, args.pause) for n in range(args.users)]
    print(f"soak: {args.minutes:g} min, {args.users} users against {apps[0]} and {apps[1]}; "
          f"database {db}; logs in {logdir}", file=sys.stderr)
    sampler.start()
    for u in users:
        u.start()
    duration = args.minutes * 60
    while not stop.wait(min(60, max(0.0, duration - stats.elapsed()))):
        if stats.elapsed() >= duration:
            break
        last = sampler.samples[-1]
        print(f"  {stats.elapsed():4.0f} s: {stats.total} requests, {len(stats.faults)} 5xx, "
              f"{sum(stats.unexpected_count.values())} unexpected, RSS "
              f"{'/'.join(f'{r / 1024:.1f}' if r else '-' for r in last['rss'])} MiB, fds "
              f"{'/'.join(str(x) for x in last['fds'])}, db {last['db']}", file=sys.stderr)
    elapsed = stats.elapsed()
    sampler.sample()
    stop.set()
    for u in users:
        u.join(timeout=45)
    time.sleep(2)  # whatever the last requests started has finished
    alive = [c.poll() is None for c in couriers]
    metrics = [settled_metrics(p) for p in ports]
    logs = [log_summary(os.path.join(logdir, f"courier-{n}.log")) for n in NAMES]
    return {"stats": stats, "samples": sampler.samples, "elapsed": elapsed, "alive": alive,
            "metrics": metrics, "at_rest": at_rest, "logs": logs}


def windows(elapsed, warmup):
    """The first window after the warm-up and the last window of the run (each up to 60 s)."""
    warmup = min(warmup, elapsed / 2)
    width = min(60.0, (elapsed - warmup) / 2)
    return (warmup, warmup + width), (elapsed - width, elapsed + 1)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def slack(first_max):
    """What a count may rise by without being growth: requests in flight come and go, and the
    pools open connections lazily. A leak over a soak is many times this."""
    return max(2, round(first_max * 0.1))


def report(args, r):
    stats, samples, elapsed = r["stats"], r["samples"], r["elapsed"]
    (f0, f1), (l0, l1) = windows(elapsed, args.warmup)
    first = [s for s in samples if f0 <= s["t"] < f1]
    last = [s for s in samples if l0 <= s["t"] < l1]
    targets = []

    def target(name, value, held):
        targets.append((name, value, held))

    courier_requests = sum(n for (kind, _), n in stats.counts.items() if kind != "provider")
    scraped = "every 5 s" if args.scrape else "only at the end"
    lines = [f"{elapsed / 60:.1f} minutes, {args.users} virtual users alternating between two "
             f"instances on one database, /metrics scraped {scraped}; access tokens live {args.token_ttl} s (due for refresh "
             f"{args.token_ttl - 60} s after they are issued), refresh tokens rotate; the demo API "
             f"checks every token by introspection. {courier_requests:,} requests to courier, "
             f"{courier_requests / elapsed:.0f} req/s; resources sampled every {SAMPLE_SECS} s; "
             f"first window {f0:.0f}–{f1:.0f} s, last window {l0:.0f}–{min(l1, elapsed):.0f} s; open files "
             f"may rise by max(2, 10% of the first window's maximum) without counting as growth.", "",
             "| kind | request | requests | statuses |", "|---|---|---:|---|"]
    what = {"login": "GET /auth/login", "callback": "GET /auth/callback/main",
            "me": "GET /api/me", "proxy": "GET /api/services/demo/v1/items",
            "proxy_slow": "GET /api/services/demo/_demo/slow?ms=200",
            "proxy_pair": "the same proxied GET at both instances at once",
            "logout": "POST /auth/logout",
            "after_logout": "with the logged-out cookie: GET /api/me at the same instance, then "
                            "GET /api/me or the proxied GET at the other",
            "provider": "the provider's pages (not courier)"}
    for kind in EXPECTED:
        statuses = sorted(((s, n) for (k, s), n in stats.counts.items() if k == kind), key=lambda x: str(x[0]))
        lines.append(f"| {kind} | {what[kind]} | {sum(n for _, n in statuses):,} | "
                     f"{', '.join(f'{s}: {n:,}' for s, n in statuses)} |")

    metrics = [", ".join(f"{k}: {v:,}" for k, v in sorted(m.items()) if not k.startswith("db_pool")) or "(no answer)"
               for m in r["metrics"]]
    lines += ["", "courier's counters (/metrics): " + "; ".join(f"{n}: {m}" for n, m in zip(NAMES, metrics)) + "."]
    refreshed = sum(m.get("token_refreshes refreshed", 0) for m in r["metrics"])

    lines += ["", "| instance | RSS first window | RSS last window | change | open files first / last window "
              "(avg; first window max) | alive at the end |", "|---|---:|---:|---:|---:|---|"]
    for i, name in enumerate(NAMES):
        rss_first, rss_last = mean(s["rss"][i] for s in first) / 1024, mean(s["rss"][i] for s in last) / 1024
        change = rss_last / rss_first - 1
        fd_first, fd_last = mean(s["fds"][i] for s in first), mean(s["fds"][i] for s in last)
        fd_first_max = max((s["fds"][i] for s in first if s["fds"][i] is not None), default=0)
        lines.append(f"| {name} | {rss_first:.1f} MiB | {rss_last:.1f} MiB | {change:+.1%} | "
                     f"{fd_first:.1f} / {fd_last:.1f} ({fd_first_max}) | {'yes' if r['alive'][i] else '**no**'} |")
        target(f"{name}: RSS flat within 10% (last window against first)", f"{change:+.1%}", abs(change) <= 0.10)
        target(f"{name}: no growth in open files (last window's average ≤ first window's maximum + slack)",
               f"{fd_last:.1f} ≤ {fd_first_max} + {slack(fd_first_max):g}", fd_last <= fd_first_max + slack(fd_first_max))
        target(f"{name}: still running at the end", "yes" if r["alive"][i] else "no", r["alive"][i])
    minutes = range(max(1, round(elapsed / 60)))
    lines += ["", "RSS by minute (MiB, average of the samples): " + "; ".join(
        f"{name}: " + " ".join(f"{mean(s['rss'][i] for s in samples if m * 60 <= s['t'] < m * 60 + 60) / 1024:.1f}"
                               for m in minutes) for i, name in enumerate(NAMES)) + "."]
    dbs = [s["db"] for s in samples if s["db"] is not None]
    db_first_max = max((s["db"] for s in first if s["db"] is not None), default=0)
    db_last = mean(s["db"] for s in last)
    cap = 2 * MAX_CONNECTIONS
    def in_use(m):
        return m["db_pool_connections"] - m["db_pool_idle_connections"] if "db_pool_idle_connections" in m else None
    before, after = [in_use(m) for m in r["at_rest"]], [in_use(m) for m in r["metrics"]]
    lines += ["", f"Database connections: {dbs[0] if dbs else '-'} at the start, {max(dbs, default=0)} at most, "
              f"{dbs[-1] if dbs else '-'} at the end (first window max {db_first_max}, last window average "
              f"{db_last:.1f}). Each pool opens connections as concurrency needs them, up to {MAX_CONNECTIONS}, "
              f"and closes those idle for 5 minutes, so the count follows the peaks; a leak shows as "
              f"connections still in use once the load has stopped, or as the count pinned at the pools' cap "
              f"({cap}). Pool connections in use by courier's gauges before the load and 2 s after it "
              f"(the cache's listener holds one, the scrape's own query another): "
              + ", ".join(f"{n}: {b} and {a}" for n, b, a in zip(NAMES, before, after)) + "."]
    target(f"database connections stay below the pools' cap ({cap})", f"{max(dbs, default=0)} at most",
           max(dbs, default=cap) < cap)
    target("no database connection held once the load stopped (in use after ≤ before, per instance)",
           " / ".join(f"{a} ≤ {b}" for b, a in zip(before, after)),
           all(a is not None and b is not None and a <= b for b, a in zip(before, after)))

    logged_out = stats.unexpected_count["after_logout"]
    others = sum(stats.unexpected_count.values()) - logged_out
    target("no 5xx from courier", str(len(stats.faults)), not stats.faults)
    target("a logged-out cookie gets 401 on both instances", f"{logged_out} not refused", logged_out == 0)
    target("every other courier response as expected (no 401 for a live session, no socket errors)",
           f"{others} unexpected", others == 0)
    target("refreshes took place", f"{refreshed:,} refreshed", refreshed > 0)
    lines += ["", "| target | value | held |", "|---|---|---|"]
    lines += [f"| {n} | {v} | {'yes' if h else '**no**'} |" for n, v, h in targets]

    if stats.faults or stats.unexpected:
        lines += ["", "Unexpected responses (first 20; t in seconds since the load started):", "",
                  "| t | instance | kind | request | status | code | note |", "|---:|---|---|---|---|---|---|"]
        for e in (stats.faults + stats.unexpected)[:20]:
            note = (e["note"] or e["body"][:120]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {e['t']} | {e['instance']} | {e['kind']} | {e['request']} | {e['status']} | "
                         f"{e['code'] or ''} | {note} |")
    warn = [sum(n for m, n in c.items() if m.startswith("WARN")) for c in r["logs"]]
    error = [sum(n for m, n in c.items() if m.startswith("ERROR")) for c in r["logs"]]
    lines += ["", "courier's logs (RUST_LOG=warn): " + "; ".join(
        f"{n}: {w} WARN, {e} ERROR lines" for n, w, e in zip(NAMES, warn, error)) + "."]
    return "\n".join(lines), all(h for _, _, h in targets)


def built_from():
    """The commit the binaries were just built from, noting uncommitted changes to what goes into
    them (a changed doc, such as the one this run may write, does not count)."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = git("status", "--porcelain", "--", "src", "migrations", "dev", "build.rs", "Cargo.toml", "Cargo.lock")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes to the code" if changed else "")


def write_doc(path, args, commit, text):
    section = (f"## Soak\n\n`bench/soak --minutes {args.minutes:g}`, {datetime.date.today().isoformat()}, "
               f"{commit}, {os.cpu_count()} cores (shared with whatever else ran).\n\n{text}\n\n")
    replace_section(path, "Soak", section, "Reliability")

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--users", type=int, default=20, help="virtual users")
    parser.add_argument("--pause", type=float, default=0.15, help="mean seconds a user waits between calls")
    parser.add_argument("--token-ttl", type=int, default=65,
                        help="access tokens' lifetime in seconds (courier refreshes 60 s before expiry)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the first window")
    parser.add_argument("--scrape", action="store_true",
                        help="GET /metrics from each instance every 5 s, as Prometheus would")
    parser.add_argument("--write", metavar="FILE", help="replace the file's '## Soak' section")
    args = parser.parse_args()
    if args.token_ttl <= 60:
        parser.error("--token-ttl must exceed courier's 60 s refresh margin, else every call refreshes")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background

    db = "courier_soak_" + secrets.token_hex(4)
    logdir = os.path.join(ROOT, "target", "soak", db)
    os.makedirs(logdir, exist_ok=True)
    commit = built_from()
    procs, stop = [], threading.Event()
    psql(f"CREATE DATABASE {db}")
    try:
        result = run(args, db, logdir, procs, stop)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", check=False)

    text, held = report(args, result)
    with open(os.path.join(logdir, "samples.json"), "w") as f:
        stats = result["stats"]
        json.dump({"samples": result["samples"], "faults": stats.faults, "unexpected": stats.unexpected,
                   "counts": {f"{k} {s}": n for (k, s), n in stats.counts.items()}}, f, indent=1)
    print(text)
    for name, counts in zip(NAMES, result["logs"]):
        for message, n in counts.most_common(10):
            print(f"{name} log, {n}x: {message}", file=sys.stderr)
    if args.write:
        write_doc(os.path.join(ROOT, args.write), args, commit, text)
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
