"""Django settings of the test provider: django-oauth-toolkit with OpenID Connect on.

serve.py sets the DOT_* environment variables below before Django starts: the issuer (which
holds the port it bound), the sqlite file of this run, the signing key (signing-key.pem) and
the access-token lifetime.
"""

import os

DEBUG = False
SECRET_KEY = "courier-tests-only-not-a-secret"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "dotprovider.urls"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
    "dotprovider",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DOT_DB_PATH", ":memory:"),
    }
}

# Test users' passwords and the client's hashed secret are checked on every login and every
# authenticated token request; Django's default PBKDF2 costs a good part of a second each on
# a busy two-core machine. A fast hasher is fine for a provider that lives for one test.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "/accounts/login/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": os.environ.get("DOT_LOG_LEVEL", "WARNING")},
}

OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    # The issuer is fixed, so that the `iss` of ID tokens and of authorization responses is
    # exactly what courier discovered, whatever Host header a request carried.
    "OIDC_ISS_ENDPOINT": os.environ.get("DOT_ISSUER", ""),
    "OIDC_RSA_PRIVATE_KEY": os.environ.get("DOT_RSA_PRIVATE_KEY", ""),
    "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
    "OAUTH2_VALIDATOR_CLASS": "dotprovider.validators.ProfileClaimsValidator",
    "SCOPES": {
        "openid": "OpenID Connect",
        "profile": "Your name",
        "email": "Your e-mail address",
        "introspection": "Introspect tokens",
    },
    "DEFAULT_SCOPES": ["openid"],
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("DOT_ACCESS_TOKEN_TTL", "3600")),
    "ID_TOKEN_EXPIRE_SECONDS": 3600,
    "REFRESH_TOKEN_EXPIRE_SECONDS": 86400,
    "ROTATE_REFRESH_TOKEN": True,
    "PKCE_REQUIRED": True,
    # RFC 9700 behaviour that django-oauth-toolkit 4.0 will turn on by default: no implicit or
    # password grant, S256 only, no tokens in query strings, `iss` in authorization responses
    # (RFC 9207), tokens stored hashed.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
}
