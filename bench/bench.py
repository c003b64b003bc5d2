#!/usr/bin/env python3
"""Benchmark: courier's proxy path against a direct call to the same service.

    bench/proxy.py [--duration 10] [--connections 64] [--write docs/benchmarks.md]

Builds the release binaries, starts on loopback a fresh database, the test provider, the demo
API (without token checks, so the numbers are courier's and not the provider's) and courier,
logs a user in, and runs wrk against (a) the demo API directly and (b) the same request through
`/api/services/demo/…` with the session cookie. Prints req/s and latency percentiles, and with
--write appends the table to the given Markdown file.
"""

import argparse
import base64
import datetime
import os
import re
import secrets
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/blackbox"))
from client import ROOT, Browser, free_port, login, start_courier, start_provider, wait_ready  # noqa: E402

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


def wrk(url, duration, connections, headers=()):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "errors": int(non2xx.group(1)) if non2xx else 0}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--write")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "courier", "-p", "demo-api"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts/ensure-postgres")], check=True)
    db = "courier_bench_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    procs = []
    try:
        port, demo_port = free_port(), free_port()
        app = f"http://127.0.0.1:{port}"
        demo = f"http://127.0.0.1:{demo_port}"
        provider, issuer = start_provider(app)
        procs.append(provider)
        procs.append(subprocess.Popen([os.path.join(ROOT, "target/release/demo-api"), "--listen", f"127.0.0.1:{demo_port}"],
                                      stderr=subprocess.DEVNULL))
        procs.append(start_courier(os.path.join(ROOT, "target/release/courier"), f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "{app}"
[database]
url = "postgres://postgres@127.0.0.1:5432/{db}"
max_connections = 16
[security]
encryption_keys = ["{base64.b64encode(os.urandom(32)).decode()}"]
[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "courier-secret"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
[[services]]
name = "demo"
base_url = "{demo}/"
provider = "main"
"""))
        wait_ready(f"{demo}/v1/x")
        browser = Browser()
        login(browser, app, "bench")
        cookie = browser.cookie(f"127.0.0.1:{port}", "__Host-courier")

        path = "/v1/items?page=1"
        results = {
            "direct": wrk(f"{demo}{path}", args.duration, args.connections),
            "proxy": wrk(f"{app}/api/services/demo{path}", args.duration, args.connections,
                         ["X-CSRF: 1", f"Cookie: __Host-courier={cookie}"]),
        }
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])

    d, p = results["direct"], results["proxy"]
    rows = [
        "| path | req/s | p50 ms | p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|",
        f"| (a) demo API directly | {d['rps']:.0f} | {d['p50']:.2f} | {d['p99']:.2f} | {d['errors']} |",
        f"| (b) courier proxy, logged-in session | {p['rps']:.0f} | {p['p50']:.2f} | {p['p99']:.2f} | {p['errors']} |",
    ]
    summary = (f"proxy/direct throughput: {p['rps'] / d['rps']:.2f}; "
               f"p50 added by courier: {p['p50'] - d['p50']:.2f} ms")
    print("\n".join(rows))
    print(summary)
    if args.write:
        stamp = datetime.date.today().isoformat()
        with open(os.path.join(ROOT, args.write), "a") as f:
            f.write(f"\n## Proxy path, {stamp} ({args.connections} connections, {args.duration} s, "
                    f"wrk -t2, {os.cpu_count()} cores)\n\n" + "\n".join(rows) + f"\n\n{summary}\n")


if __name__ == "__main__":
    main()
