#!/usr/bin/env python3
"""schemathesis against a running courier with a logged-in session.

    python3 tests/schemathesis/run.py [path/to/st] [extra st arguments…]

(scripts/test installs the pinned schemathesis into target/schemathesis and runs this.)

Starts on loopback a fresh database, the test provider, the demo API and courier (the debug
binary), logs a user in, then runs schemathesis over openapi.yaml with the session cookie and
`X-CSRF: 1`: every operation, property-based and stateful, every check. Exits with
schemathesis's exit code.
"""

import base64
import os
import secrets
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../blackbox"))
from client import ROOT, Browser, free_port, login, start_courier, start_provider  # noqa: E402

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


def main():
    st = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/schemathesis/bin/st")
    extra = sys.argv[2:]
    db = "courier_st_" + secrets.token_hex(4)
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    procs = []
    try:
        port, demo_port = free_port(), free_port()
        app = f"http://127.0.0.1:{port}"
        provider, issuer = start_provider(app)
        procs.append(provider)
        procs.append(subprocess.Popen([os.path.join(ROOT, "target/debug/demo-api"), "--listen", f"127.0.0.1:{demo_port}"],
                                      stderr=subprocess.DEVNULL))
        procs.append(start_courier(os.path.join(ROOT, "target/debug/courier"), f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "{app}"
[database]
url = "postgres://postgres@127.0.0.1:5432/{db}"
[security]
encryption_keys = ["{base64.b64encode(os.urandom(32)).decode()}"]
[rate_limit]
requests_per_minute = 100000
burst = 100000
[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "courier-secret"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
[[providers]]
id = "calendar"
authorization_endpoint = "{issuer}/auth"
token_endpoint = "{issuer}/token"
client_id = "courier"
client_secret = "courier-secret"
[[services]]
name = "orders"
base_url = "http://127.0.0.1:{demo_port}/"
provider = "main"
[[services]]
name = "calendar"
base_url = "http://127.0.0.1:{demo_port}/calendar/"
provider = "calendar"
""", {"RUST_LOG": "error"}))
        browser = Browser()
        login(browser, app, "schemathesis")
        cookie = browser.cookie(f"127.0.0.1:{port}", "__Host-courier")
        # The session cookie and the CSRF header are the document's security schemes: given
        # this way, schemathesis also tries requests without them.
        auth = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        auth.write(f'[auth.openapi.sessionCookie]\napi_key = "{cookie}"\n\n'
                   '[auth.openapi.csrfHeader]\napi_key = "1"\n\n'
                   # The proxy forwards every method but CONNECT and TRACE (SPEC), including
                   # ones OpenAPI 3.1 cannot list, such as QUERY.
                   '[[operations]]\ninclude-path-regex = "^/api/services/"\n'
                   'checks.unsupported_method.enabled = false\n\n'
                   # A path parameter is one segment in OpenAPI; the proxy's {path} is the rest
                   # of the URL, with rules of its own (tests/api/services.rs), so generated
                   # "valid" and "invalid" paths do not tell right from wrong here.
                   '[checks]\nnegative_data_rejection.enabled = false\n'
                   'positive_data_acceptance.enabled = false\n')
        auth.close()
        command = [st, "--config-file", auth.name, "run", os.path.join(ROOT, "openapi.yaml"),
                   "--url", app, "--workers", "1", "--seed", "1", *extra]
        # Sign-out and ending sessions can end the session every other operation runs with
        # (DELETE /api/sessions/{id} with the id GET /api/sessions lists): they go last, each
        # in a run of its own, sign-out last of all.
        ending = ["endOtherSessions", "endSession"]
        excluded = [arg for op in ending for arg in ("--exclude-operation-id", op)]
        runs = [[*command, "--exclude-path", "/auth/logout", *excluded]]
        runs += [[*command, "--include-operation-id", op] for op in ending]
        runs.append([*command, "--include-path", "/auth/logout"])
        names = ["every other operation", *ending, "logout"]
        codes = [subprocess.run(run, cwd=ROOT).returncode for run in runs]
        # One line for the four reports above (their warnings: docs/testing.md).
        failed = [f"{name} (exit {code})" for name, code in zip(names, codes) if code]
        print(f"schemathesis: {len(codes) - len(failed)} passed, {len(failed)} failed"
              + (f": {', '.join(failed)}" if failed else f" ({', '.join(names)})"), flush=True)
        return next((code for code in codes if code), 0)
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])


if __name__ == "__main__":
    sys.exit(main())
