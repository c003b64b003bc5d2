"""A client without a browser for courier's black-box checks and benchmarks: cookies per
origin and path (Secure ones sent over http to 127.0.0.1, as browsers do), redirects followed
only on request, plus helpers to start the test provider and log in through its pages."""

import http.client
import json
import os
import socket
import subprocess
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Keeps cookies per host:port and path, sends Secure ones over http to 127.0.0.1 as
    browsers do, and never follows redirects by itself."""

    def __init__(self):
        self.cookies = {}  # (netloc, name, path) -> value

    def request(self, method, url, body=None, headers=None):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
        hdrs = dict(headers or {})
        jar = [f"{n}={v}" for (loc, n, p), v in self.cookies.items()
               if loc == u.netloc and (u.path or "/").startswith(p)]
        if jar:
            hdrs["Cookie"] = "; ".join(jar)
        if body is not None:
            body = urllib.parse.urlencode(body)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        target = (u.path or "/") + ("?" + u.query if u.query else "")
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        for name, value in resp.getheaders():
            if name.lower() != "set-cookie":
                continue
            first, *attrs = [p.strip() for p in value.split(";")]
            cname, _, cvalue = first.partition("=")
            path = "/"
            removed = cvalue == ""
            for a in attrs:
                k, _, v = a.partition("=")
                if k.lower() == "path":
                    path = v
                if k.lower() == "max-age" and v.strip().startswith(("0", "-")):
                    removed = True
            key = (u.netloc, cname, path)
            if removed:
                self.cookies.pop(key, None)
            else:
                self.cookies[key] = cvalue
        resp.body = data
        resp.url = url
        return resp

    def get(self, url, headers=None):
        return self.request("GET", url, headers=headers)

    def cookie(self, netloc, name):
        return next((v for (loc, n, _), v in self.cookies.items() if loc == netloc and n == name), None)

    def follow(self, url, stop=lambda u: False):
        for _ in range(20):
            resp = self.get(url)
            if resp.status not in (301, 302, 303, 307, 308):
                return url, resp
            nxt = urllib.parse.urljoin(url, resp.getheader("Location"))
            if stop(nxt):
                return url, resp
            url = nxt
        raise RuntimeError("too many redirects")


def start_provider(app_url, provider_id="main", more_app_urls=(), **extra):
    """Starts node-oidc-provider with courier's client registered for `app_url` (and the
    instances at `more_app_urls`) as courier's provider `provider_id`. Returns (process, issuer)."""
    apps = [app_url, *more_app_urls]
    config = {"clients": [{
        "client_id": "courier", "client_secret": extra.pop("secret", "courier-secret"),
        "redirect_uris": [f"{a}/auth/callback/{provider_id}" for a in apps],
        "post_logout_redirect_uris": [f"{a}/" for a in apps],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types": ["code"]}], **extra}
    node = subprocess.Popen(["node", "server.mjs"], cwd=os.path.join(ROOT, "tests/oidc-provider"),
                            env={**os.environ, "OIDC_CONFIG": json.dumps(config)},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    issuer = node.stdout.readline().split()[1]
    return node, issuer


def login(browser, app_url, user, return_to="/after", provider=None):
    """Logs `user` in through the provider's pages (the default login provider's, or
    `provider`'s); returns courier's callback response."""
    query = f"return_to={return_to}" + (f"&provider={provider}" if provider else "")
    url, resp = browser.follow(f"{app_url}/auth/login?{query}")
    assert resp.status == 200 and "/interaction/" in url, (resp.status, url)
    u = urllib.parse.urlsplit(url)
    post = f"{u.scheme}://{u.netloc}{u.path}/login"
    resp = browser.request("POST", post, body={"login": user, "password": "x"})
    nxt = urllib.parse.urljoin(post, resp.getheader("Location"))
    _, resp = browser.follow(nxt, lambda n: n.startswith(app_url) and "/auth/" not in n)
    return resp


def wait_ready(url, attempts=200):
    """Polls `url` until it answers 200."""
    import time
    for _ in range(attempts):
        try:
            if Browser().get(url).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def start_courier(binary, config_text, env=None):
    """Writes `config_text` to a temporary file and starts `courier serve` with it; returns
    the process once /readyz answers at the config's public_url."""
    import re
    import tempfile
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(config_text)
    config.close()
    process = subprocess.Popen([binary, "serve", "--config", config.name],
                               env={**os.environ, "RUST_LOG": "warn", **(env or {})},
                               stderr=subprocess.DEVNULL)
    public_url = re.search(r'public_url = "([^"]+)"', config_text).group(1)
    wait_ready(f"{public_url}/readyz")
    return process


def demo_config(port, db, issuer, demo_port, key, max_connections=16):
    """courier's configuration for the benchmarks and the soak: the login provider `main` and
    one service `demo` that uses its token."""
    return f"""[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[database]
url = "postgres://postgres@127.0.0.1:5432/{db}"
max_connections = {max_connections}

[security]
encryption_keys = ["{key}"]

[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "courier-secret"
scopes = ["openid", "profile", "email", "offline_access"]
login = true

[[services]]
name = "demo"
base_url = "http://127.0.0.1:{demo_port}/"
provider = "main"
"""


def replace_section(path, heading, section, title):
    """Replaces the `## {heading}` section of the Markdown file `path` with `section` (which
    starts with that heading), or appends it; a missing file starts as `# {title}`."""
    import re
    text = open(path).read() if os.path.exists(path) else f"# {title}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
