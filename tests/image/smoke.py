#!/usr/bin/env python3
"""Smoke test of courier's container image, run by `scripts/image smoke`.

    python3 tests/image/smoke.py IMAGE

Runs IMAGE with podman on the host's network against a fresh database on the local Postgres
(127.0.0.1:5432) and a test provider (tests/oidc-provider), and checks from outside: the
configuration passes `courier check-config` in the image; `/healthz` and `/readyz` answer 200,
and so does the image's own HEALTHCHECK; a user logs in through the provider's pages and
`/api/me` names them; courier runs as a non-root user; the runtime image does not trust the
host's extra CAs (a proxy's that re-signs HTTPS; only the builder stage may). Removes the container,
the provider and the database afterwards. Exits non-zero with the container's log on failure.
"""

import base64
import glob
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../blackbox"))
from client import Browser, free_port, login, start_provider, wait_ready  # noqa: E402

ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
USER = "smoke"


def podman(*args, check=True):
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True)


def pem_bodies(text):
    """The base64 bodies of the PEM certificates in `text`, without line breaks."""
    return {re.sub(r"\s+", "", m) for m in
            re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)}


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        raise AssertionError(what)


def main(image):
    suffix = secrets.token_hex(4)
    db, name = f"courier_image_{suffix}", f"courier-smoke-{suffix}"
    subprocess.run(["psql", ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True)
    provider, config_path, started = None, None, False
    try:
        port = free_port()
        app = f"http://127.0.0.1:{port}"
        provider, issuer = start_provider(app)
        # Secrets come from the environment, as in production; the file only names them.
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as config:
            config.write(f"""[server]
listen = "127.0.0.1:{port}"
public_url = "{app}"
[database]
url = "${{DATABASE_URL}}"
[security]
encryption_keys = ["${{COURIER_KEY}}"]
[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "${{MAIN_SECRET}}"
scopes = ["openid", "profile", "email"]
login = true
""")
            config_path = config.name
        os.chmod(config_path, 0o644)  # the container's user is not this one
        run = ["--network=host", "-v", f"{config_path}:/etc/courier/courier.toml:ro",
               "-e", f"DATABASE_URL=postgres://postgres@127.0.0.1:5432/{db}",
               "-e", "COURIER_KEY=" + base64.b64encode(os.urandom(32)).decode(),
               "-e", "MAIN_SECRET=courier-secret", "-e", "RUST_LOG=info",
               "-e", f"COURIER_HEALTHCHECK_PORT={port}"]

        checked = podman("run", "--rm", *run, image, "check-config", check=False)
        check(checked.returncode == 0,
              f"courier check-config accepts the configuration (exit {checked.returncode}"
              f"{': ' + checked.stderr.strip() if checked.returncode else ''})")

        podman("run", "-d", "--name", name, *run, image)
        started = True
        try:
            wait_ready(f"{app}/readyz", attempts=300)
        except RuntimeError:
            check(False, "courier in the container becomes ready")

        browser = Browser()
        check(browser.get(f"{app}/healthz").status == 200, "/healthz answers 200")
        check(browser.get(f"{app}/readyz").status == 200, "/readyz answers 200")
        health = podman("healthcheck", "run", name, check=False)
        check(health.returncode == 0, f"the image's HEALTHCHECK passes ({health.stdout.strip() or 'healthy'})")

        callback = login(browser, app, USER)
        check(callback.status in (302, 303) and browser.cookie(f"127.0.0.1:{port}", "__Host-courier"),
              f"a login through the provider's pages ends with a session cookie ({callback.status})")
        me = browser.get(f"{app}/api/me", headers={"X-CSRF": "1"})
        body = json.loads(me.body) if me.status == 200 else {}
        check(me.status == 200 and body.get("sub") == USER and body.get("provider") == "main",
              f"/api/me answers 200 for {USER} ({me.status})")

        uid = podman("exec", name, "id", "-u").stdout.strip()
        status = podman("exec", name, "cat", "/proc/1/status").stdout
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        comm = podman("exec", name, "cat", "/proc/1/comm").stdout.strip()
        check(uid not in ("", "0") and comm == "courier" and "0" not in uids,
              f"courier runs as a non-root user (exec id -u: {uid}; PID 1 {comm}, uids {' '.join(uids)})")

        bundle = podman("exec", name, "cat", "/etc/ssl/certs/ca-certificates.crt").stdout
        local = podman("exec", name, "ls", "-A", "/usr/local/share/ca-certificates").stdout.split()
        host_cas = glob.glob("/usr/local/share/ca-certificates/*.crt")
        trusted = set()
        for path in host_cas:
            with open(path) as f:
                trusted |= pem_bodies(f.read()) & pem_bodies(bundle)
        check(bundle and not trusted and not local,
              f"the runtime image trusts none of the {len(host_cas)} local CA(s) "
              f"({len(pem_bodies(bundle))} certificates in its bundle)")
        print(f"image smoke test passed: {image}")
    except (AssertionError, subprocess.CalledProcessError) as e:
        if isinstance(e, subprocess.CalledProcessError):
            print(f"FAIL {' '.join(e.cmd)}: {e.stderr}", file=sys.stderr)
        if started:
            logs = podman("logs", "--tail", "40", name, check=False)
            print("--- the container's log (last 40 lines)\n" + logs.stdout + logs.stderr, file=sys.stderr)
        return 1
    finally:
        if started:
            podman("rm", "-f", "-t", "5", name, check=False)
        if provider:
            provider.kill()
            provider.wait()
        if config_path:
            os.unlink(config_path)
        subprocess.run(["psql", ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: smoke.py IMAGE")
    sys.exit(main(sys.argv[1]))
