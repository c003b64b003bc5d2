#!/usr/bin/env python3
"""Where courier's CPU goes on the proxy path: a sampling profile of row (c), by layer.

    bench/profile [--duration 15] [--connections 64] [--users 16] [--row c|d|e] [--write FILE]

(bench/profile installs perf and wrk when missing and builds the release binaries, then runs
this file.) Starts the same parts as bench/run (fresh database, test provider, demo API without
token checks, courier with RUST_LOG=error), logs the users in, and runs wrk against the row
while `perf record` samples courier's threads (cpu-clock, 999 Hz, user and kernel). Each sample
is put in the layer of its innermost frame (the function the CPU was in), by the crate and
module of its symbol: see LAYERS. The table says how much of courier's CPU each layer took and
what that is in µs per request (the CPU per request measured from /proc over the same run,
split by those shares). --write replaces the file's "## Profile by layer" section.

A flat profile by innermost frame says where the CPU is spent, not which caller asked for it:
an allocation made by the session middleware counts as "allocator", a HashMap probe inlined into
a handler as the handler's module.
"""

import argparse
import base64
import collections
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import ADMIN, PATH, cpu_seconds, psql, start, wrk  # noqa: E402
from client import ROOT, Browser, demo_config, free_port, login, replace_section, start_provider, wait_ready  # noqa: E402

# (layer, pattern on the innermost frame's symbol or its shared object); the first match wins.
LAYERS = [
    ("kernel: sockets, syscalls, scheduling", r"^\[k\]|\[kernel"),
    ("allocator (malloc, free, realloc)", r"\b(malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|"
                                           r"_int_realloc|malloc_consolidate|tcache|__libc_malloc|__libc_free|"
                                           r"__rust_alloc|__rust_dealloc|__rust_realloc|alloc::alloc)\b|"
                                           r"_int_free|_int_malloc|malloc_consolidate"),
    ("memcpy, memmove, memset, strings", r"\b__mem|\bmem(cpy|move|set|cmp)|__strlen|__strchr"),
    ("libc: threads, locks, time", r"pthread|futex|__lll|clock_gettime|__vdso|libc\.so"),
    ("courier: session middleware and store (actix-session, actix-identity)",
     r"actix_session|actix_identity|courier::session|PgSessionStore"),
    ("cookie: parse, signature check (cookie, hmac, sha2)", r"\bcookie::|hmac|sha2::|sha256|Sha256|"
                                                            r"digest::|block_buffer"),
    ("courier: token cache, token lookup", r"courier::tokens|courier::cache|courier::app_cache|"
                                            r"courier::domain"),
    ("courier: proxy (header filtering, request and response building)",
     r"courier::proxy|courier::routes::services"),
    ("courier: middleware (request log, response policy, guard, body deadline, CSRF)",
     r"courier::middleware|courier::limits|courier::body_deadline|courier::request_context|"
     r"courier::routes::extract"),
    ("courier: other", r"courier::"),
    ("metrics (counters, histograms, label sets)", r"\bmetrics|quanta|sketches|prometheus"),
    ("tracing (spans, subscriber, filter)", r"\btracing|sharded_slab|opentelemetry"),
    ("upstream client (reqwest, hyper client, hyper-util pool)", r"reqwest|hyper_util|hyper::|\bh2::|"
                                                                  r"want::|try_lock"),
    ("HTTP server (actix-http, actix-web routing, actix-server)", r"actix_http|actix_web|actix_router|"
                                                                  r"actix_server|actix_service|actix_utils|"
                                                                  r"actix_codec|httparse|httpdate|regex"),
    ("async runtime (tokio, actix-rt, futures)", r"tokio|actix_rt|futures_|mio::|parking_lot|crossbeam"),
    ("serialization (serde_json, url, uuid, http types)", r"serde|url::|uuid|\bhttp::|bytes::|"
                                                          r"percent_encoding|idna|itoa|ryu|zmij|base64"),
    ("std and core (hash maps, formatting, strings)", r"\bstd::|\bcore::|hashbrown|alloc::|<alloc|"
                                                      r"\bfmt\b|foldhash"),
]


def classify(symbol):
    for name, pattern in LAYERS:
        if re.search(pattern, symbol):
            return name
    return "other (unresolved or unclassified)"


def perf_samples(data):
    """(symbol with its dso, samples) of each innermost frame."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
                          "--percent-limit", "0", "-F", "overhead,sample,dso,sym", "-g", "none"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+(.*)$", line)
        if m:
            rows.append((f"{m.group(4).strip()} {m.group(3)}", int(m.group(2))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--row", choices=["c", "d", "e", "g", "gw", "g2", "h"], default="c",
                        help="c, d, e: courier's rows; g, h: the floor binaries' pass-through, for comparison")
    parser.add_argument("--syscalls", action="store_true",
                        help="count the system calls per request with strace instead (slows the run down)")
    parser.add_argument("--callers", action="store_true",
                        help="also record call stacks (DWARF unwinding) and print the functions with "
                             "the most CPU under them (inclusive), courier's own first")
    parser.add_argument("--strace-args", default="-c",
                        help="with --syscalls: what strace is asked for (default: counts, -c)")
    parser.add_argument("--log", action="store_true",
                        help="courier with its INFO line per request on (RUST_LOG=info, to a file)")
    parser.add_argument("--top", type=int, default=25, help="also print the N hottest symbols")
    parser.add_argument("--write", metavar="FILE", help="replace the file's '## Profile by layer' section")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    db = "courier_profile_" + secrets.token_hex(4)
    procs = []
    with tempfile.TemporaryDirectory(prefix="courier-profile-") as tmp:
        psql(ADMIN, f"CREATE DATABASE {db}")
        try:
            port, demo_port = free_port(), free_port()
            app = f"http://127.0.0.1:{port}"
            provider, issuer = start_provider(app)
            procs.append(provider)
            demo = start(procs, [os.path.join(ROOT, "target/release/demo-api"), "--listen",
                                 f"127.0.0.1:{demo_port}"], stderr=subprocess.DEVNULL)
            config = os.path.join(tmp, "courier.toml")
            with open(config, "w") as f:
                f.write(demo_config(port, db, issuer, demo_port, base64.b64encode(os.urandom(32)).decode()))
            log = open(os.path.join(tmp, "courier.log"), "w")
            courier = start(procs, [os.path.join(ROOT, "target/release/courier"), "serve", "--config", config],
                            env={**os.environ, "RUST_LOG": "info" if args.log else "error"}, stderr=log)
            wait_ready(f"http://127.0.0.1:{demo_port}/v1/x")
            wait_ready(f"{app}/readyz")
            cookies = []
            for n in range(args.users):
                browser = Browser()
                login(browser, app, f"profile{n}")
                cookies.append(browser.cookie(f"127.0.0.1:{port}", "__Host-courier"))
            script = os.path.join(tmp, "sessions.lua")
            with open(script, "w") as f:
                f.write(bench.LUA % ", ".join(json.dumps(c) for c in cookies))
            url, bare = {"c": (f"{app}/api/services/demo{PATH}", False), "d": (f"{app}/api/me", False),
                         "e": (f"{app}/healthz", True)}.get(args.row, (None, True))
            target = courier
            if args.row in ("g", "gw", "g2", "h"):
                floor_port = free_port()
                name = {"g": "floor-actix", "gw": "floor-actix", "g2": "floor-actix-hyper",
                        "h": "floor-hyper"}[args.row]
                target = start(procs, [os.path.join(ROOT, "bench/floor/target/release", name),
                                       f"127.0.0.1:{floor_port}", f"http://127.0.0.1:{demo_port}",
                                       *(["--per-worker"] if args.row == "gw" else [])])
                url = f"http://127.0.0.1:{floor_port}{PATH}"
                wait_ready(url)
            # Warm the caches and the connection pools, then measure.
            wrk(url, script, 2, args.connections, bare)
            if args.syscalls:
                counts = os.path.join(tmp, "strace.txt")
                tracer = subprocess.Popen(["strace", "-f", *args.strace_args.split(), "-o", counts, "-p", str(target.pid)],
                                          stderr=subprocess.DEVNULL)
                import time
                time.sleep(1)
                result = wrk(url, script, args.duration, args.connections, bare)
                tracer.send_signal(signal.SIGINT)
                tracer.wait()
                if "-c" not in args.strace_args.split():
                    print(open(counts).read())
                    for tid in os.listdir(f"/proc/{target.pid}/task"):
                        print(tid, open(f"/proc/{target.pid}/task/{tid}/comm").read().strip())
                    return
                print(f"{result['requests']} requests; system calls per request:")
                for line in open(counts):
                    m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
                    if m and m.group(2) != "total":
                        print(f"  {int(m.group(1)) / max(result['requests'], 1):6.2f}  {m.group(2)}")
                return
            data = os.path.join(tmp, "perf.data")
            stacks = ["--call-graph", "dwarf,32768"] if args.callers else []
            perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", *stacks, "-p",
                                     str(target.pid), "-o", data], stderr=subprocess.DEVNULL)
            before = cpu_seconds(target.pid)
            result = wrk(url, script, args.duration, args.connections, bare)
            cpu = (cpu_seconds(target.pid) - before) / max(result["requests"], 1) * 1e6
            perf.send_signal(signal.SIGINT)
            perf.wait()
            samples = perf_samples(data)
            if args.callers:
                out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--children", "--sort", "sym",
                                      "-g", "none", "--percent-limit", "0.5"],
                                     capture_output=True, text=True).stdout
                print("inclusive CPU (children) by function:", file=sys.stderr)
                for line in out.splitlines():
                    if re.match(r"\s*[\d.]+%", line):
                        print("  " + line.strip()[:200], file=sys.stderr)
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

    total = sum(n for _, n in samples) or 1
    layers = collections.Counter()
    for symbol, n in samples:
        layers[classify(symbol)] += n
    row = {"c": "(c) the proxy path", "d": "(d) /api/me", "e": "(e) /healthz",
           "g": "(g) the actix-web + reqwest floor", "g2": "(g2) actix-web + hyper-util per worker",
           "gw": "(gw) the actix-web + reqwest floor, a client per worker",
           "h": "(h) the hyper floor"}[args.row]
    lines = [f"{row}: {result['rps']:.0f} req/s, {cpu:.1f} µs of CPU per request, "
             f"{total} samples.", "",
             "| layer (innermost frame) | share | µs/req |", "|---|---:|---:|"]
    for name, n in layers.most_common():
        lines.append(f"| {name} | {n / total:.1%} | {cpu * n / total:.1f} |")
    table = "\n".join(lines)
    print(table)
    print(f"\nhottest symbols of {total} samples:", file=sys.stderr)
    for symbol, n in sorted(samples, key=lambda s: -s[1])[:args.top]:
        print(f"  {n / total:6.1%}  {classify(symbol)[:24]:24}  {symbol[:150]}", file=sys.stderr)
    if args.write:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        replace_section(os.path.join(ROOT, args.write), "Profile by layer",
                        f"## Profile by layer\n\n{commit}, `bench/profile --row {args.row}`, "
                        f"{args.connections} connections, {args.duration} s, {os.cpu_count()} cores.\n\n"
                        f"{table}\n\n", "Benchmarks")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
