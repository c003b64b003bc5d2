#!/usr/bin/env python3
"""Black-box check of live connections (WebSockets and server-sent events through courier): two
courier instances on one fresh database, a real provider (node-oidc-provider), the demo API
checking every token by introspection, a config written as the SPEC gives it, a small RFC 6455
client written below. Standard library only.

    cargo build --release -p courier -p demo-api
    python3 tests/blackbox/live.py             # or: python3 tests/blackbox/live.py target/debug/courier

The demo API binary is taken from next to courier's. Prints one line per check, the measured
close times, and 'N passed, N failed'; exits non-zero on a failure.
"""

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

from client import ROOT, Browser, free_port, login, start_provider, wait_ready
from services import EVENT, sign

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
COOKIE = "__Host-courier"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f"  ({detail})"), flush=True)


class Refused:
    """A handshake answered with anything but 101."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body
        try:
            self.code = json.loads(body).get("code")
        except ValueError:
            self.code = None

    def __repr__(self):
        return f"<refused {self.status} {self.body[:200]!r}>"


class WebSocket:
    """A small RFC 6455 client: masked frames out, unmasked ones in, pings answered, fragments
    joined. `recv()` gives ("text", str), ("binary", bytes) or ("close", code, reason)."""

    def __init__(self, sock, reader):
        self.sock, self.reader, self.closed = sock, reader, False

    def __repr__(self):
        return "<101 Switching Protocols: a WebSocket opened>"

    @staticmethod
    def open(url, headers=None, timeout=10):
        """The handshake; a WebSocket on 101, else a Refused with the answer."""
        u = urllib.parse.urlsplit(url)
        sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        reader = sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {u.path}{'?' + u.query if u.query else ''} HTTP/1.1", f"Host: {u.netloc}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status = int(reader.readline().split()[1])
        answer = {}
        while (line := reader.readline().decode("latin-1").strip()):
            name, _, value = line.partition(":")
            answer[name.strip().lower()] = value.strip()
        if status != 101:
            if answer.get("transfer-encoding") == "chunked":
                body = b""
                while (size := int(reader.readline().split(b";")[0], 16)):
                    body += reader.read(size)
                    reader.readline()
            else:
                body = reader.read(int(answer.get("content-length", 0)))
            sock.close()
            return Refused(status, answer, body)
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if answer.get("sec-websocket-accept") != accept or answer.get("upgrade", "").lower() != "websocket":
            raise ConnectionError(f"bad handshake answer: {answer}")
        return WebSocket(sock, reader)

    def send(self, payload, opcode=None):
        if isinstance(payload, str):
            payload, opcode = payload.encode(), opcode or 1
        opcode, n, mask = opcode or 2, len(payload), os.urandom(4)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        keystream = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")
        self.sock.sendall(head + mask + masked)

    def _read(self, n):
        data = self.reader.read(n)
        if len(data) < n:
            raise ConnectionError("the connection ended without a close frame")
        return data

    def recv(self):
        message, kind = b"", None
        while True:
            b0, b1 = self._read(2)
            if b1 & 0x80:
                raise ConnectionError("a masked frame from the server")
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if not self.closed:  # answer the close (RFC 6455 5.5.1)
                    self.closed = True
                    try:
                        self.send(payload[:2], 8)
                    except OSError:
                        pass
                self.sock.close()
                return ("close", code, payload[2:].decode(errors="replace"))
            if opcode == 9:
                self.send(payload, 10)
            elif opcode in (0, 1, 2):
                kind = kind or opcode
                message += payload
                if b0 & 0x80:
                    return ("text", message.decode()) if kind == 1 else ("binary", message)

    def close(self, code=1000):
        self.closed = True
        try:
            self.send(struct.pack("!H", code), 8)
            while self.recv()[0] != "close":
                pass
        except OSError:
            pass
        self.sock.close()


def watch(ws, since):
    """Reads `ws` in a thread until it closes; the dict gets `code` and `after` (seconds)."""
    out = {}

    def run():
        try:
            while (message := ws.recv())[0] != "close":
                pass
            out["code"] = message[1]
        except (OSError, ValueError) as e:
            out["error"] = repr(e)
        out["after"] = time.monotonic() - since[0]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out["join"] = lambda: thread.join(5)
    return out


def event_stream(url, headers):
    """`GET url` as an EventSource sends it; the response, its body not read yet."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    conn.request("GET", f"{u.path}?{u.query}", headers={"Accept": "text/event-stream", **headers})
    return conn.getresponse()


def read_events(resp, out, since=None):
    """Reads the event stream's `data:` lines into out["events"] until it ends: out["end"] is
    "complete" (the final chunk came) or what cut it, out["after"] when (from since[0])."""
    out.setdefault("events", [])
    try:
        while (line := resp.readline()):
            if line.startswith(b"data: "):
                out["events"].append(json.loads(line[6:])["n"])
        out["end"] = "complete"
    except (OSError, http.client.HTTPException) as e:
        out["end"] = repr(e)
    out["after"] = time.monotonic() - (since[0] if since else 0)


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/courier"))
    demo_binary = os.path.join(os.path.dirname(binary), "demo-api")
    db = "courier_blackbox_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    port_a, port_b, demo_port = free_port(), free_port(), free_port()
    app_a, app_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    net_a = f"127.0.0.1:{port_a}"
    demo = f"http://127.0.0.1:{demo_port}"
    client_secret = "live-" + secrets.token_hex(8)
    procs, logs, configs, cookies = [], [], [], []
    try:
        provider, issuer = start_provider(app_a, clients=[{
            "client_id": "courier", "client_secret": client_secret,
            "redirect_uris": [f"{app_a}/auth/callback/main"],
            "post_logout_redirect_uris": [f"{app_a}/"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "backchannel_logout_uri": f"{app_a}/auth/backchannel-logout/main",
            "backchannel_logout_session_required": True}])
        procs.append(provider)
        procs.append(subprocess.Popen(
            [demo_binary, "--listen", f"127.0.0.1:{demo_port}", "--introspection-endpoint",
             f"{issuer}/token/introspection", "--client-id", "courier"],
            env={**os.environ, "DEMO_API_CLIENT_SECRET": client_secret}, stderr=subprocess.DEVNULL))
        env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
               "COURIER_KEY": base64.b64encode(os.urandom(32)).decode(), "MAIN_SECRET": client_secret,
               "RUST_LOG": os.environ.get("RUST_LOG", "info")}
        couriers = {}
        # Both instances serve one app behind a load balancer: one public_url, one Origin.
        for port in (port_a, port_b):
            config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            config.write(f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "{app_a}"

[database]
url = "${{DATABASE_URL}}"

[session]
max_live_connections = 2

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
allowed_paths = ["/_demo/**"]
timeout_secs = 2
websocket = true

[[services]]
name = "quiet"
base_url = "{demo}/"
provider = "main"
websocket = true
stream_idle_timeout_secs = 2

[[services]]
name = "plain"
base_url = "{demo}/"
provider = "main"
""")
            config.close()
            configs.append(config.name)
            log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
            logs.append(log.name)
            couriers[port] = subprocess.Popen([binary, "serve", "--config", config.name], env=env,
                                              stdout=log, stderr=subprocess.STDOUT)
            procs.append(couriers[port])
        for app in (app_a, app_b):
            wait_ready(f"{app}/readyz")

        def session(user):
            browser = Browser()
            login(browser, app_a, user)
            cookies.append(browser.cookie(net_a, COOKIE))
            return browser

        def headers(browser, origin=app_a, **more):
            h = {"Cookie": f"{COOKIE}={browser.cookie(net_a, COOKIE)}"} if browser else {}
            if origin:
                h["Origin"] = origin
            return {**h, **more}

        def ws(app, browser, path="live/_demo/ws", **kw):
            return WebSocket.open(f"{app}/api/services/{path}", headers(browser, **kw))

        def demo_live():
            return json.loads(Browser().get(f"{demo}/_demo/live").body)

        # --- Through both instances -------------------------------------------------------
        alice = session("alice")
        sockets = {}
        for name, app in [("A", app_a), ("B", app_b)]:
            sock = sockets[name] = ws(app, alice)
            if isinstance(sock, Refused):
                check(f"a WebSocket through {name} opens (101, Sec-WebSocket-Accept right)", False, sock)
                continue
            kind, hello = sock.recv()
            hello = json.loads(hello)["hello"]
            check(f"a WebSocket through {name}: the hello shows alice's token active, 'Bearer <redacted>'",
                  kind == "text" and hello["token"].get("active") is True and hello["token"].get("sub") == "alice"
                  and hello["authorization"] == "Bearer <redacted>", hello)
            blob = os.urandom(70_000)  # a 64-bit length on the way out
            sock.send("héllo ✓")
            sock.send(blob)
            echoes = [sock.recv(), sock.recv()]
            check(f"... through {name}, text and a 70 kB binary message come back as sent",
                  echoes == [("text", "héllo ✓"), ("binary", blob)], [(e[0], len(e[1])) for e in echoes])

        # --- Refusals, from alice's second session (the first holds its two live connections) --
        tab = session("alice")
        for label, kw, expected in [
            ("no Origin", {"origin": None}, (403, "csrf_required")),
            ("another origin", {"origin": "http://evil.example"}, (403, "csrf_required")),
            ("Origin null", {"origin": "null"}, (403, "csrf_required")),
            ("no Origin but Sec-Fetch-Site: same-origin (event streams only)",
             {"origin": None, "Sec-Fetch-Site": "same-origin"}, (403, "csrf_required")),
        ]:
            r = ws(app_a, tab, **kw)
            check(f"WebSocket with {label}: {expected[0]} {expected[1]}",
                  isinstance(r, Refused) and (r.status, r.code) == expected, r)
            if isinstance(r, WebSocket):
                r.close()
        r = ws(app_a, None)
        check("WebSocket without a cookie: 401 login_required",
              isinstance(r, Refused) and (r.status, r.code) == (401, "login_required"), r)
        r = ws(app_a, tab, "plain/_demo/ws")
        check("WebSocket to a service without websocket = true: 400 bad_request",
              isinstance(r, Refused) and (r.status, r.code) == (400, "bad_request"), r)
        r = ws(app_a, tab, "live/elsewhere/ws")
        check("WebSocket to a path outside allowed_paths: 403 not_allowed",
              isinstance(r, Refused) and (r.status, r.code) == (403, "not_allowed"), r)
        events_url = f"{app_a}/api/services/live/_demo/events?count=1"
        for label, kw, expected in [
            ("no Origin", {"origin": None}, 403),
            ("another origin", {"origin": "http://evil.example"}, 403),
            ("Sec-Fetch-Site: cross-site and no Origin", {"origin": None, "Sec-Fetch-Site": "cross-site"}, 403),
            ("no Origin but Sec-Fetch-Site: same-origin (docs/live.md's exception)",
             {"origin": None, "Sec-Fetch-Site": "same-origin"}, 200),
        ]:
            resp = event_stream(events_url, headers(tab, **kw))
            body = resp.read()
            code = json.loads(body).get("code") if resp.status == 403 else None
            check(f"event stream with {label}: {expected}" + (" csrf_required" if expected == 403 else ""),
                  resp.status == expected and code in (None, "csrf_required")
                  and (expected == 403 or body.count(b"data: ") == 1), (resp.status, body[:200]))

        # --- An event stream outlives timeout_secs -------------------------------------------
        started = time.monotonic()
        resp = event_stream(f"{app_b}/api/services/live/_demo/events?count=13&interval_ms=400", headers(tab))
        out = {}
        read_events(resp, out)
        took = time.monotonic() - started
        check(f"an event stream of 13 events 400 ms apart through B outlives timeout_secs = 2 "
              f"({took:.1f} s, every event, complete)",
              resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
              and out["events"] == list(range(13)) and out["end"] == "complete" and took > 4.5,
              (resp.status, out, took))

        # A connection bound while the instance checks its sessions (every 250 ms while any
        # connection is open, here alice's first session's on B) is not taken for ended.
        cut, refused = [], []
        for i in range(150):
            resp = event_stream(f"{app_b}/api/services/live/_demo/events?count=2&interval_ms=10", headers(tab))
            out = {}
            read_events(resp, out)
            if resp.status != 200:
                refused.append(resp.status)
            elif out["events"] != [0, 1]:
                cut.append(out["events"])
        check("150 short event streams through B, opened while B watches another session, all deliver their events",
              not cut and not refused, f"{len(cut)} cut short (ended without their events: {cut[:3]}), "
              f"{len(refused)} refused {sorted(set(refused))}")

        # --- A back-channel logout closes them on both instances -----------------------------
        def closed_within(watchers, stream=None):
            for w in watchers.values():
                w["join"]()
            if stream is not None:
                stream["thread"].join(5)
            return {name: (w.get("code"), round(w.get("after", 99), 3)) for name, w in watchers.items()}

        def report(closes, stream=None):
            return ", ".join(f"{n}: {c} after {t:.3f} s" for n, (c, t) in closes.items()) + (
                f"; the event stream on A ended ({stream.get('end')}) after {stream.get('after', 99):.3f} s"
                if stream is not None else "")

        # Alice (both sessions): a logout token for her `sub`, signed by the provider's key,
        # posted to A; measured from the post.
        since = [0.0]
        watchers = {name: watch(s, since) for name, s in sockets.items() if isinstance(s, WebSocket)}
        resp = event_stream(f"{app_a}/api/services/live/_demo/events?count=0&interval_ms=100", headers(tab))
        check("an endless event stream opens on A in alice's second session",
              resp.status == 200, (resp.status, resp.read()[:200] if resp.status != 200 else ""))
        stream = {}
        stream["thread"] = threading.Thread(target=read_events, args=(resp, stream, since), daemon=True)
        stream["thread"].start()
        time.sleep(0.5)
        now = int(time.time())
        token = sign(issuer, {"iss": issuer, "aud": "courier", "iat": now, "exp": now + 120,
                              "jti": str(uuid.uuid4()), "events": {EVENT: {}}, "sub": "alice"})
        since[0] = time.monotonic()
        status = Browser().request("POST", f"{app_a}/auth/backchannel-logout/main", body={"logout_token": token}).status
        closes = closed_within(watchers, stream)
        print(f"     logout token for alice posted to A ({status}): WebSockets closed {report(closes, stream)}", flush=True)
        check("a back-channel logout posted to A closes alice's WebSockets on A and B with 4401 within 1 s",
              status == 200 and len(closes) == 2 and all(c == 4401 and t <= 1.0 for c, t in closes.values()),
              {n: w.get("error", closes[n]) for n, w in watchers.items()})
        check("... and ends the event stream of her other session on A within 1 s, after events",
              "end" in stream and stream["after"] <= 1.0 and len(stream["events"]) > 0,
              {k: v for k, v in stream.items() if k != "thread"})
        r = ws(app_b, alice)
        check("... and a new WebSocket with her old cookie is refused: 401", isinstance(r, Refused) and r.status == 401, r)

        # Bob: logs out at the provider, which sends the back-channel logout to A (public_url)
        # before it answers; measured from the confirmation's start.
        bob = session("bob")
        bob_sockets = {"A": ws(app_a, bob), "B": ws(app_b, bob)}
        for sock in bob_sockets.values():
            sock.recv()
        since = [0.0]
        watchers = {name: watch(sock, since) for name, sock in bob_sockets.items()}
        page = bob.get(f"{issuer}/session/end?client_id=courier&post_logout_redirect_uri="
                       + urllib.parse.quote(f"{app_a}/", safe=""))
        xsrf = page.body.decode().split('name="xsrf" value="', 1)[1].split('"', 1)[0]
        since[0] = time.monotonic()
        bob.request("POST", f"{issuer}/session/end/confirm", body={"xsrf": xsrf, "logout": "yes"})
        confirmed = time.monotonic() - since[0]
        closes = closed_within(watchers)
        print(f"     bob's logout at the provider (its answer after {confirmed:.3f} s): WebSockets closed "
              f"{report(closes)}", flush=True)
        check("a logout at the provider closes bob's WebSockets on A and B with 4401, within 1 s of its answer",
              all(c == 4401 and t <= confirmed + 1.0 for c, t in closes.values()),
              {n: w.get("error", closes[n]) for n, w in watchers.items()})
        for _ in range(20):
            codes = demo_live()["close_codes"]
            if codes.count(4401) >= 4:
                break
            time.sleep(0.1)
        check("... and the service's side of all four was closed with 4401 too", codes.count(4401) == 4, codes)

        # --- The per-session cap (on all instances together), and the idle bound -------------
        carol = session("carol")
        first, second = ws(app_a, carol), ws(app_b, carol)
        third = ws(app_a, carol)
        check("with [session] max_live_connections = 2, WebSockets on A and B open and a third is 429 rate_limited",
              isinstance(first, WebSocket) and isinstance(second, WebSocket) and isinstance(third, Refused)
              and (third.status, third.code) == (429, "rate_limited"), (first, second, third))
        resp = event_stream(f"{app_b}/api/services/live/_demo/events?count=1", headers(carol))
        body = resp.read()
        check("... an event stream as the third is 429 rate_limited too",
              resp.status == 429 and json.loads(body).get("code") == "rate_limited", (resp.status, body[:200]))
        first.recv()
        first.send("close:4000")
        closed = first.recv()
        check("a close from the service reaches the browser with its code (4000)", closed[:2] == ("close", 4000), closed)
        for _ in range(20):
            again = ws(app_a, carol)
            if isinstance(again, WebSocket):
                break
            time.sleep(0.1)
        check("... and frees its place: a new WebSocket opens", isinstance(again, WebSocket), again)

        quiet = ws(app_b, session("dave"), "quiet/_demo/ws")
        quiet_opened = time.monotonic()
        quiet.recv()
        closed = quiet.recv()
        idle = time.monotonic() - quiet_opened
        print(f"     a silent WebSocket to a service with stream_idle_timeout_secs = 2: closed {closed[1]} "
              f"after {idle:.3f} s", flush=True)
        check("a WebSocket silent for stream_idle_timeout_secs = 2 is closed with 4408",
              closed[:2] == ("close", 4408) and 1.8 <= idle <= 4, (closed, idle))

        # --- SIGTERM ---------------------------------------------------------------------
        second.recv()
        again.recv()
        since = [0.0]
        watchers = [watch(second, since), watch(again, since)]
        since[0] = time.monotonic()
        couriers[port_b].send_signal(signal.SIGTERM)
        watchers[0]["join"]()
        try:
            code = couriers[port_b].wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        exited = time.monotonic() - since[0]
        w = watchers[0]
        print(f"     SIGTERM to B: its WebSocket closed {w.get('code')} after {w.get('after', 99):.3f} s; "
              f"B exited {code} after {exited:.3f} s", flush=True)
        check("SIGTERM to B closes its WebSocket with 1001 and B exits 0 within 5 s",
              w.get("code") == 1001 and code == 0, (w.get("code"), w.get("error"), code))
        check("... and carol's WebSocket on A goes on", all("after" not in w for w in watchers[1:])
              and couriers[port_a].poll() is None, [w.get("code") for w in watchers[1:]])
        since[0] = time.monotonic()
        couriers[port_a].send_signal(signal.SIGTERM)
        for w in watchers[1:]:
            w["join"]()
        try:
            code = couriers[port_a].wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        check("SIGTERM to A closes its WebSocket with 1001 and A exits 0",
              [w.get("code") for w in watchers[1:]] == [1001] and code == 0, ([w.get("code") for w in watchers[1:]], code))

        # --- Nothing secret in the logs ----------------------------------------------------
        text = "".join(open(path).read() for path in logs)
        leaked = [s for s in (client_secret, env["COURIER_KEY"], *cookies) if s and s in text]
        leaked += re.findall(r"eyJ[\w-]+\.eyJ", text) + re.findall(r"(?i)(?:bearer|dpop) (?!<redacted>)[\w.~+/-]{8,}", text)
        check(f"no secret, key, cookie value or token in courier's logs ({len(text.splitlines())} lines)",
              not leaked, leaked[:3])
    finally:
        for p in procs:
            p.kill()
        for path in configs + (logs if all(results) else []):
            os.remove(path)
        if not all(results):
            print("courier's logs:", *logs)
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
