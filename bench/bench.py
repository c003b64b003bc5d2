#!/usr/bin/env python3
"""Benchmark: courier against the service it fronts and against nginx, side by side in one run.

    bench/run [--duration 10] [--connections 64] [--users 16] [--write docs/benchmarks.md]

(bench/run installs what is missing and builds the release binaries, then runs this file.)
Starts on loopback a fresh database, the test provider, the demo API (without token checks, so
that the numbers are courier's and not the provider's), nginx and courier; logs N users in; and
runs wrk (-t2) against:

  (a) the demo API directly, GET /v1/items?page=1;
  (b) nginx proxy_pass to it (upstream keepalive, HTTP/1.1), same path;
  (c) courier's proxy path /api/services/demo/v1/items?page=1, spread over the N sessions;
  (d) courier's /api/me, same sessions;
  (e) courier's /healthz;
  (c) once more at 256 connections, for courier's RSS there;
  (c) once more with courier's per-request INFO log line on (RUST_LOG=info, written to a file;
      every other row runs with RUST_LOG=error, so without it);
  (c) once more with DPoP (`dpop = true` on the provider, users logged in again): each call
      carries `Authorization: DPoP` and a fresh ES256 proof signed by the session's key (the
      demo API does not check it here, so the row shows courier's cost of signing);
  (g) the floor of courier's stack: a bare actix-web + reqwest pass-through (bench/floor);
  (gw) (g) with one reqwest client per actix worker instead of one shared client;
  (g2) actix-web with hyper-util's client, one per worker, instead of reqwest (bench/floor): what
      courier's stack would cost without reqwest;
  (h) the floor of the stack below: a bare hyper + hyper-util pass-through (bench/floor);
  (f) (c) and (d) again after 1,000,000 more sessions (with users, identities and tokens) are
      inserted by SQL and the tables analyzed, on a restarted courier (its in-memory cache
      starts empty, so every session is first looked up among the million).

Every row runs the same wrk Lua script, so wrk's own cost is the same in all of them. Prints a
Markdown table (req/s, p50, p99, non-2xx and socket errors, and the CPU time — utime + stime
from /proc over the row — that the row's proxy (nginx, courier or a floor binary) and the demo
API spent per request), the ratios and courier's peak RSS
against the operations issue's targets; --write replaces the "## Latest run" section of the
given Markdown file.
"""

import argparse
import base64
import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/blackbox"))
from client import (ROOT, Browser, demo_config, free_port, login, replace_section,  # noqa: E402
                    start_provider, wait_ready)

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
PATH = "/v1/items?page=1"
MILLION = 1_000_000

LUA = """-- One of the sessions' cookies per request; with the argument "bare", no extra headers.
local cookies = {%s}
local bare = false
function init(args) bare = args[1] == "bare" end
function request()
  if bare then return wrk.format() end
  return wrk.format(nil, nil, {["Cookie"] = "__Host-courier=" .. cookies[math.random(#cookies)],
                               ["X-CSRF"] = "1"})
end
"""

NGINX = """worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream demo {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://demo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""

# 1,000,000 users, each with an identity, a bound live session and a token row shaped like the
# real ones (the sealed bytes of a real row: never opened, so their binding does not matter).
SESSIONS_SQL = f"""
WITH u AS (
  INSERT INTO users (id) SELECT gen_random_uuid() FROM generate_series(1, {MILLION}) RETURNING id
), i AS (
  INSERT INTO identities (provider, subject, user_id, claims)
  SELECT 'main', 'bench-' || u.id, u.id, r.claims FROM u, (SELECT claims FROM identities LIMIT 1) r
), s AS (
  INSERT INTO sessions (id, key_hash, user_id, provider, subject, created_at, last_seen_at,
                        idle_expires_at, absolute_expires_at)
  SELECT gen_random_uuid(), sha256(uuid_send(gen_random_uuid())), u.id, 'main', 'bench-' || u.id,
         now(), now(), now() + interval '1 day', now() + interval '30 days' FROM u
  RETURNING id
)
INSERT INTO session_tokens (session_id, access_token, refresh_token, id_token, expires_at, scopes)
SELECT s.id, r.access_token, r.refresh_token, r.id_token, r.expires_at, r.scopes
FROM s, (SELECT * FROM session_tokens LIMIT 1) r;
ANALYZE;
"""


def psql(url, sql, check=True):
    subprocess.run(["psql", url, "-qX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=check,
                   stdout=subprocess.DEVNULL)


def wrk(url, script, duration, connections, bare):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script, url]
    out = subprocess.run(cmd + (["--", "bare"] if bare else []), capture_output=True, text=True,
                         check=True).stdout

    def pct(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50": pct(50), "p99": pct(99), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": sum(map(int, sockets.groups())) if sockets else 0}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process and its children that are still running (nginx's workers),
    all threads included, from /proc."""
    def own(p):
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    total = own(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        total += own(int(entry))
            except (OSError, ValueError):
                pass
    return total


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


class RssSampler(threading.Thread):
    """Reads courier's VmRSS once a second; keeps the maximum for each phase."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.phase, self.max = pid, None, {}

    def run(self):
        while True:
            try:
                rss = status_kib(self.pid, "VmRSS")
            except (OSError, AttributeError):
                # Between a courier stopped and the next one started (`pid` is then updated).
                time.sleep(0.2)
                continue
            self.max[self.phase] = max(self.max.get(self.phase, 0), rss)
            time.sleep(1)


def start(procs, cmd, **kwargs):
    procs.append(subprocess.Popen(cmd, **kwargs))
    return procs[-1]


def log_in(app, port, users, prefix):
    """Logs `users` users in; their session cookies."""
    cookies = []
    for n in range(users):
        browser = Browser()
        login(browser, app, f"{prefix}{n}")
        cookies.append(browser.cookie(f"127.0.0.1:{port}", "__Host-courier"))
    return cookies


def measure(args, db, tmp, procs):
    port, demo_port, nginx_port = free_port(), free_port(), free_port()
    app = f"http://127.0.0.1:{port}"
    provider, issuer = start_provider(app)
    procs.append(provider)
    demo = start(procs, [os.path.join(ROOT, "target/release/demo-api"), "--listen",
                         f"127.0.0.1:{demo_port}"], stderr=subprocess.DEVNULL)
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(NGINX.format(dir=tmp, upstream=demo_port, port=nginx_port))
    nginx = start(procs, ["nginx", "-p", tmp, "-e", os.path.join(tmp, "error.log"),
                          "-c", os.path.join(tmp, "nginx.conf"), "-g", "daemon off;"])
    floors = {}
    for key, name, *extra in (("g", "floor-actix"), ("gw", "floor-actix", "--per-worker"),
                              ("g2", "floor-actix-hyper"), ("h", "floor-hyper")):
        floor_port = free_port()
        floors[key] = (start(procs, [os.path.join(ROOT, "bench/floor/target/release", name),
                                     f"127.0.0.1:{floor_port}", f"http://127.0.0.1:{demo_port}", *extra]),
                       f"http://127.0.0.1:{floor_port}{PATH}")
    config = os.path.join(tmp, "courier.toml")
    key = base64.b64encode(os.urandom(32)).decode()
    with open(config, "w") as f:
        f.write(demo_config(port, db, issuer, demo_port, key))
    courier = start(procs, [os.path.join(ROOT, "target/release/courier"), "serve", "--config", config],
                    env={**os.environ, "RUST_LOG": "error"})
    for url in (f"http://127.0.0.1:{demo_port}/v1/x", f"http://127.0.0.1:{nginx_port}/v1/x",
                f"{app}/readyz", *(url for _, url in floors.values())):
        wait_ready(url)

    script = os.path.join(tmp, "sessions.lua")
    with open(script, "w") as f:
        f.write(LUA % ", ".join(json.dumps(c) for c in log_in(app, port, args.users, "bench")))

    hwm = 0
    sampler = RssSampler(courier.pid)
    sampler.start()
    results = {}

    # CPU per request, read from /proc over the row, of the process that proxies it (nginx's
    # master and workers, courier, or a floor binary) and of the demo API (the downstream of
    # every row).
    def row(key, url, proxy, bare=False, connections=args.connections, script=script):
        print(f"{key}: {url} ({connections} connections)", file=sys.stderr)
        sampler.phase = key
        pids = {"proxy": proxy.pid if proxy else None, "demo": demo.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
        results[key] = wrk(url, script, args.duration, connections, bare)
        n = max(results[key]["requests"], 1)
        for name, pid in pids.items():
            results[key][f"cpu_{name}"] = (cpu_seconds(pid) - before[name]) / n * 1e6 if pid else None

    row("a", f"http://127.0.0.1:{demo_port}{PATH}", None, bare=True)
    row("b", f"http://127.0.0.1:{nginx_port}{PATH}", nginx, bare=True)
    row("g", floors["g"][1], floors["g"][0], bare=True)
    row("gw", floors["gw"][1], floors["gw"][0], bare=True)
    row("g2", floors["g2"][1], floors["g2"][0], bare=True)
    row("h", floors["h"][1], floors["h"][0], bare=True)
    row("c", f"{app}/api/services/demo{PATH}", courier)
    row("d", f"{app}/api/me", courier)
    row("e", f"{app}/healthz", courier, bare=True)
    row("c256", f"{app}/api/services/demo{PATH}", courier, connections=256)
    # The same courier again, with its INFO log line per request written to a file.
    hwm = status_kib(courier.pid, "VmHWM")
    courier.terminate()
    courier.wait()
    with open(os.path.join(tmp, "courier-info.log"), "w") as log:
        courier = start(procs, [os.path.join(ROOT, "target/release/courier"), "serve", "--config", config],
                        env={**os.environ, "RUST_LOG": "info"}, stderr=log)
    wait_ready(f"{app}/readyz")
    sampler.pid = courier.pid
    row("clog", f"{app}/api/services/demo{PATH}", courier)

    # DPoP: the provider binds the sessions' tokens to their keys, so the users log in again.
    hwm = max(hwm, status_kib(courier.pid, "VmHWM"))
    courier.terminate()
    courier.wait()
    with open(config, "w") as f:
        f.write(demo_config(port, db, issuer, demo_port, key).replace("login = true", "login = true\ndpop = true"))
    courier = start(procs, [os.path.join(ROOT, "target/release/courier"), "serve", "--config", config],
                    env={**os.environ, "RUST_LOG": "error"})
    wait_ready(f"{app}/readyz")
    sampler.pid = courier.pid
    dpop_script = os.path.join(tmp, "dpop-sessions.lua")
    with open(dpop_script, "w") as f:
        f.write(LUA % ", ".join(json.dumps(c) for c in log_in(app, port, args.users, "dpop")))
    row("cdpop", f"{app}/api/services/demo{PATH}", courier, script=dpop_script)
    with open(config, "w") as f:
        f.write(demo_config(port, db, issuer, demo_port, key))
    print(f"inserting {MILLION:,} sessions", file=sys.stderr)
    sampler.phase = "insert"
    started = time.monotonic()
    psql(f"postgres://postgres@127.0.0.1:5432/{db}", SESSIONS_SQL)
    print(f"inserted in {time.monotonic() - started:.0f} s", file=sys.stderr)
    # A new process, so that (f) starts with nothing in courier's in-memory cache and every
    # session is first looked up among the million.
    hwm = max(hwm, status_kib(courier.pid, "VmHWM"))
    courier.terminate()
    courier.wait()
    courier = start(procs, [os.path.join(ROOT, "target/release/courier"), "serve", "--config", config],
                    env={**os.environ, "RUST_LOG": "error"})
    wait_ready(f"{app}/readyz")
    sampler.pid = courier.pid
    row("fc", f"{app}/api/services/demo{PATH}", courier)
    row("fd", f"{app}/api/me", courier)
    hwm = max(hwm, status_kib(courier.pid, "VmHWM"))
    return results, hwm, sampler.max.get("c256", 0)


def report(args, r, hwm_kib, rss256_kib):
    labels = {"a": "(a) demo API directly", "b": "(b) nginx proxy_pass",
              "g": "(g) floor: actix-web + reqwest pass-through",
              "gw": "(gw) (g) with a reqwest client per actix worker",
              "g2": "(g2) actix-web + hyper-util client per worker",
              "h": "(h) floor: hyper + hyper-util pass-through",
              "c": f"(c) courier proxy path, {args.users} sessions", "d": "(d) courier /api/me",
              "e": "(e) courier /healthz", "c256": "(c) at 256 connections",
              "clog": "(c) with the INFO log line per request on",
              "cdpop": "(c) with DPoP: a fresh ES256 proof per call",
              "fc": f"(f) (c) with {MILLION:,} more sessions",
              "fd": f"(f) (d) with {MILLION:,} more sessions"}
    lines = ["| row | req/s | p50 ms | p99 ms | non-2xx/errors | CPU µs/req: proxy | demo API |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in labels.items():
        x = r[key]
        proxy = "–" if x["cpu_proxy"] is None else f"{x['cpu_proxy']:.1f}"
        lines.append(f"| {label} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | "
                     f"{x['non2xx']}/{x['errors']} | {proxy} | {x['cpu_demo']:.1f} |")

    def target(met):
        return "met" if met else "**not met**"

    def cpu(key):
        return r[key]["cpu_proxy"]

    cb, ca, de = r["c"]["rps"] / r["b"]["rps"], r["c"]["rps"] / r["a"]["rps"], r["d"]["rps"] / r["e"]["rps"]
    added = r["c"]["p50"] - r["a"]["p50"]
    cost_c, cost_d = 1 - r["fc"]["rps"] / r["c"]["rps"], 1 - r["fd"]["rps"] / r["d"]["rps"]
    hwm, rss256 = hwm_kib / 1024, rss256_kib / 1024
    lines += ["", "| measure | value | target | |", "|---|---:|---|---|",
              f"| c/b (req/s) | {cb:.3f} | ≥ 0.8 | {target(cb >= 0.8)} |",
              f"| c/a (req/s) | {ca:.3f} | | |",
              f"| g/b, h/b (req/s of the floors against nginx) | {r['g']['rps'] / r['b']['rps']:.3f}, "
              f"{r['h']['rps'] / r['b']['rps']:.3f} | | |",
              f"| courier's CPU per proxied request / nginx's (c / b) | {cpu('c') / cpu('b'):.2f}× | "
              f"≤ 1.5× (≤ 2.5× this round) | {target(cpu('c') <= 2.5 * cpu('b'))} |",
              f"| courier's CPU per proxied request above its stack's floor (c − g), above hyper's (c − h) "
              f"| {cpu('c') - cpu('g'):.1f} µs, {cpu('c') - cpu('h'):.1f} µs | | |",
              f"| reqwest's share of the floor: CPU of (g) − (g2) | {cpu('g') - cpu('g2'):.1f} µs | | |",
              f"| a DPoP proof's CPU per call (cdpop − c) | {cpu('cdpop') - cpu('c'):.1f} µs | | |",
              f"| the INFO log line's CPU per request (clog − c) | {cpu('clog') - cpu('c'):.1f} µs | | |",
              f"| d/e (req/s) | {de:.3f} | ≥ 0.5 | {target(de >= 0.5)} |",
              f"| p50 added by courier (c − a) | {added:.2f} ms | < 1 ms | {target(added < 1)} |",
              f"| {MILLION:,} sessions' cost on (c) | {cost_c:.1%} | < 10% | {target(cost_c < 0.1)} |",
              f"| {MILLION:,} sessions' cost on (d) | {cost_d:.1%} | < 10% | {target(cost_d < 0.1)} |",
              f"| courier's RSS at 256 connections (max VmRSS) | {rss256:.1f} MiB | < 64 MiB | "
              f"{target(rss256 < 64)} |",
              f"| courier's peak RSS over the run (VmHWM) | {hwm:.1f} MiB | | |"]
    return "\n".join(lines)


def write_doc(path, args, table):
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    section = (f"## Latest run\n\n{datetime.date.today().isoformat()}, {commit}: "
               f"{args.connections} connections, {args.duration} s per row, wrk -t2, {args.users} sessions, "
               f"{os.cpu_count()} cores.\n\n"
               f"{table}\n\n")
    replace_section(path, "Latest run", section, "Benchmarks")

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=16, help="sessions that (c) and (d) spread over")
    parser.add_argument("--write", metavar="FILE", help="replace the file's '## Latest run' section")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    db = "courier_bench_" + secrets.token_hex(4)
    procs = []
    with tempfile.TemporaryDirectory(prefix="courier-bench-") as tmp:
        psql(ADMIN, f"CREATE DATABASE {db}")
        try:
            results, hwm, rss256 = measure(args, db, tmp, procs)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            psql(ADMIN, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", check=False)

    table = report(args, results, hwm, rss256)
    print(table)
    if args.write:
        write_doc(os.path.join(ROOT, args.write), args, table)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
