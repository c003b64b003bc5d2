"""Starts django-oauth-toolkit as an OpenID provider for one test.

Configuration: JSON in the environment variable DOT_CONFIG (see README.md), all keys optional.
The database is a fresh sqlite file in DOT_DATA_DIR (a temporary directory of its own when
unset). Listens on 127.0.0.1 only, and prints exactly one line `READY <issuer>` to stdout once
it accepts requests; everything else goes to stderr.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PASSWORD = "courier-test-password"


def log(*args):
    print("[dot-provider]", *args, file=sys.stderr, flush=True)


def load_config():
    text = os.environ.get("DOT_CONFIG", "").strip()
    try:
        config = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        log("DOT_CONFIG is not valid JSON:", e)
        sys.exit(2)
    config.setdefault("port", 0)
    config.setdefault("access_token_ttl", 3600)
    config.setdefault("users", ["alice", "bob", "carol"])
    config.setdefault("clients", [])
    return config


def signing_key_pem():
    """The provider's RS256 key: a test key kept in the repo (making one per run costs half a
    second on a busy machine). Tests never depend on it: courier reads the JWKS."""
    with open(os.path.join(HERE, "signing-key.pem")) as f:
        return f.read()


def populate(config):
    from django.contrib.auth import get_user_model
    from oauth2_provider.models import get_application_model

    User = get_user_model()
    for name in config["users"]:
        User.objects.create_user(name, email=f"{name}@example.test", password=PASSWORD)

    Application = get_application_model()
    for client in config["clients"]:
        Application.objects.create(
            name=client["client_id"],
            client_id=client["client_id"],
            client_secret=client["client_secret"],
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            redirect_uris=" ".join(client.get("redirect_uris", [])),
            post_logout_redirect_uris=" ".join(client.get("post_logout_redirect_uris", [])),
            # RS256 makes ID tokens verifiable with the published JWKS; without an
            # algorithm django-oauth-toolkit issues no ID token at all.
            algorithm=Application.RS256_ALGORITHM,
            skip_authorization=client.get("skip_authorization", False),
        )


def prepare_database(path, call_command):
    """Migrates a fresh sqlite database at `path`. Migrating takes seconds, so the first run
    of an installation migrates a template next to the venv and later runs copy it."""
    import django
    import oauth2_provider
    from django.db import connections

    with open(os.path.join(HERE, "dotprovider", "settings.py"), "rb") as f:
        settings_hash = hashlib.sha256(f.read()).hexdigest()[:12]
    key = f"{django.__version__}-{oauth2_provider.__version__}-{settings_hash}"
    template = os.path.join(sys.prefix, f"dot-template-{key}.sqlite3")
    if os.path.exists(template):
        shutil.copyfile(template, path)
        return
    call_command("migrate", verbosity=0, interactive=False)
    connections.close_all()
    try:
        # Copy, then rename: a parallel run sees a whole template or none.
        partial = f"{template}.{os.getpid()}"
        shutil.copyfile(path, partial)
        os.replace(partial, template)
    except OSError as e:
        log("no migrated template kept:", e)


def main():
    config = load_config()
    data_dir = os.environ.get("DOT_DATA_DIR")
    own_dir = data_dir is None
    if own_dir:
        data_dir = tempfile.mkdtemp(prefix="dot-provider-")
    try:
        serve(config, data_dir)
    finally:
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def serve(config, data_dir):
    sys.path.insert(0, HERE)
    # Bind first: the issuer names the port, and Django reads it from the settings.
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    httpd = ThreadedWSGIServer(("127.0.0.1", int(config["port"])), WSGIRequestHandler)
    issuer = f"http://127.0.0.1:{httpd.server_port}/o"

    os.environ["DJANGO_SETTINGS_MODULE"] = "dotprovider.settings"
    os.environ["DOT_ISSUER"] = issuer
    os.environ["DOT_DB_PATH"] = os.path.join(data_dir, "db.sqlite3")
    os.environ["DOT_RSA_PRIVATE_KEY"] = signing_key_pem()
    os.environ["DOT_ACCESS_TOKEN_TTL"] = str(int(config["access_token_ttl"]))

    import django
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    django.setup()
    prepare_database(os.environ["DOT_DB_PATH"], call_command)
    populate(config)

    httpd.set_app(get_wsgi_application())
    print(f"READY {issuer}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
