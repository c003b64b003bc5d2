//! Typed configuration: one TOML file, `${VAR}` expansion in every string, unknown keys
//! rejected, and validation whose errors name the file and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::domain::client_key::ClientKey;

mod expand;
mod validate;

use expand::expand_value;
use validate::entry_key;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub session: SessionConfig,
    pub security: SecurityConfig,
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// OpenTelemetry trace export (OTLP over HTTP). Off unless `otlp_endpoint` is set here or the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's base URL, e.g. `http://127.0.0.1:4318`; spans go to `{it}/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default `courier`).
    pub service_name: Option<String>,
}

/// Requests to `/auth/login`, `/auth/callback/*` and `/auth/connect/*`, per client address and
/// instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR ranges); the client is
    /// the right-most address in it that is not one of them.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: default_requests_per_minute(),
            burst: default_burst(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_net(p))
            .collect()
    }
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub public_url: Url,
    pub static_dir: Option<PathBuf>,
    #[serde(default = "default_post_logout_redirect")]
    pub post_logout_redirect: String,
    /// Requests whose header fields add up to more bytes are answered 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Requests with more cookies are answered 431.
    #[serde(default = "default_max_cookies")]
    pub max_cookies: usize,
    /// Request bodies forwarded to a service may not be larger (413).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// A request body to courier's own endpoints must arrive within this many seconds of courier
    /// starting to read it, else 408 (a proxied call's body gets its service's `timeout_secs`).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Live connections (WebSockets and event streams) this instance carries at once; one more
    /// is refused 429. Each holds two sockets and a few buffers.
    #[serde(default = "default_server_max_live")]
    pub max_live_connections: usize,
    /// The largest WebSocket message relayed either way; a larger one closes the connection
    /// with 1009. What a connection may hold queued is bounded by it (docs/live.md).
    #[serde(default = "default_websocket_max_message")]
    pub websocket_max_message_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: SecretString,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_absolute_timeout")]
    pub absolute_timeout_secs: u64,
    /// Live connections one session may hold at once, on all instances together; one more is
    /// refused 429.
    #[serde(default = "default_session_max_live")]
    pub max_live_connections: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie_name: default_cookie_name(),
            idle_timeout_secs: default_idle_timeout(),
            absolute_timeout_secs: default_absolute_timeout(),
            max_live_connections: default_session_max_live(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    pub encryption_keys: Vec<SecretString>,
    /// `profile = "fapi2"`: the FAPI 2.0 Security Profile for every provider that does not set
    /// its own `profile`; see `apply_profiles`.
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub id: String,
    /// OpenID Connect: metadata from `{issuer}/.well-known/openid-configuration`.
    pub issuer: Option<Url>,
    /// Plain OAuth 2.0: explicit endpoints instead of `issuer`.
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub userinfo_endpoint: Option<Url>,
    /// RFC 7009; with `issuer`, it replaces the discovered one (or fills its absence).
    pub revocation_endpoint: Option<Url>,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    pub login: bool,
    /// How courier authenticates at the token (and revocation) endpoint; see `client_auth()`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// The sign-in button's text (the SPEC's `/auth/providers`).
    pub display_name: Option<String>,
    /// Pushed authorization requests (RFC 9126); see `par()`.
    pub par: Option<ParMode>,
    /// courier's private key(s) for `private_key_jwt`: a PEM key, a path to a PEM file, or an
    /// array of them (the first signs, all are published). Read into `client_keys`.
    pub client_key: Option<toml::Value>,
    /// `client_key`, parsed when the configuration is loaded.
    #[serde(skip)]
    pub client_keys: Vec<ClientKey>,
    /// DPoP (RFC 9449): tokens from this provider are bound to a key per token owner, and
    /// every grant and service call carries a proof signed with it.
    #[serde(default)]
    pub dpop: bool,
    /// This provider's security profile; default: `[security] profile`.
    pub profile: Option<Profile>,
    /// The one algorithm its ID tokens and logout tokens must use; default: any asymmetric
    /// algorithm it advertises. `none` only for ID tokens from the token endpoint.
    pub id_token_signed_response_alg: Option<IdTokenAlg>,
    /// Whether the FAPI 2.0 profile applies to this provider (set by `apply_profiles`).
    #[serde(skip)]
    pub fapi2: bool,
}

/// A provider's `id_token_signed_response_alg`: an asymmetric JWS algorithm, or `none`
/// (OIDC Core §3.1.3.7 step 6: an ID token from the token endpoint over TLS may be unsigned).
/// Shared-secret (HS*) algorithms are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum IdTokenAlg {
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "RS384")]
    Rs384,
    #[serde(rename = "RS512")]
    Rs512,
    #[serde(rename = "PS256")]
    Ps256,
    #[serde(rename = "PS384")]
    Ps384,
    #[serde(rename = "PS512")]
    Ps512,
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "ES384")]
    Es384,
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "none")]
    None,
}

/// A security profile (the SPEC's `profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// No profile: each setting as configured.
    None,
    /// The FAPI 2.0 Security Profile: PAR required, PKCE S256, `private_key_jwt` (RSA keys sign
    /// PS256), `iss` required in callbacks, DPoP, ID tokens PS256/ES256 only, no secret.
    Fapi2,
}

/// Pushed authorization requests (RFC 9126), as the SPEC's `par` key names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParMode {
    Auto,
    Required,
    Off,
}

/// Client authentication at the provider (RFC 6749 §2.3.1, RFC 7523 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    ClientSecretBasic,
    ClientSecretPost,
    /// A client assertion signed with the first `client_key` (RFC 7523).
    PrivateKeyJwt,
}

impl ProviderConfig {
    /// The configured method, else `private_key_jwt` when a `client_key` is given, else HTTP
    /// Basic for OpenID providers (what discovery-based clients default to) and the request
    /// body for plain OAuth 2.0 ones (GitHub's way).
    pub fn client_auth(&self, is_oidc: bool) -> ClientAuth {
        self.client_auth.unwrap_or(if !self.client_keys.is_empty() {
            ClientAuth::PrivateKeyJwt
        } else if is_oidc {
            ClientAuth::ClientSecretBasic
        } else {
            ClientAuth::ClientSecretPost
        })
    }

    /// Whether logins push their authorization request (RFC 9126): `auto` when not set.
    pub fn par(&self) -> ParMode {
        self.par.unwrap_or(ParMode::Auto)
    }

    /// The key that signs client assertions: the first `client_key`.
    pub fn signing_key(&self) -> Option<&ClientKey> {
        self.client_keys.first()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    User,
    Client,
    /// The user's token exchanged (RFC 8693) for one made for this service.
    Exchange,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub base_url: Url,
    pub provider: Option<String>,
    #[serde(default = "default_token_mode")]
    pub token: TokenMode,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub allowed_methods: Option<Vec<String>>,
    pub allowed_paths: Option<Vec<String>>,
    #[serde(default = "default_service_timeout")]
    pub timeout_secs: u64,
    /// Request bodies up to this size are held so that a call can be retried after a refresh;
    /// larger ones stream through once.
    #[serde(default = "default_retry_buffer_bytes")]
    pub retry_buffer_bytes: usize,
    /// RFC 8707: the resource indicator sent for this service's tokens (on the authorization
    /// request, refresh and client-credentials grants), sent exactly as written.
    pub resource: Option<String>,
    /// RFC 8693: the audience asked for when the user's token is exchanged (`token =
    /// "exchange"`).
    pub audience: Option<String>,
    /// WebSocket upgrades to this service are relayed (bound to the session); without it
    /// they are refused 400.
    #[serde(default)]
    pub websocket: bool,
    /// A WebSocket or a streamed response with no frame or chunk for this long is closed (4408).
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout_secs: u64,
}

fn default_post_logout_redirect() -> String {
    "/".to_owned()
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_cookies() -> usize {
    50
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_body_timeout() -> u64 {
    10
}
fn default_requests_per_minute() -> u32 {
    600
}
fn default_burst() -> u32 {
    100
}
fn default_max_connections() -> u32 {
    16
}
fn default_cookie_name() -> String {
    "__Host-courier".to_owned()
}
fn default_idle_timeout() -> u64 {
    28_800
}
fn default_absolute_timeout() -> u64 {
    604_800
}
fn default_token_mode() -> TokenMode {
    TokenMode::User
}
fn default_service_timeout() -> u64 {
    30
}
fn default_stream_idle_timeout() -> u64 {
    300
}
fn default_server_max_live() -> usize {
    10_000
}
/// The largest `websocket_max_message_bytes` accepted: the instance's WebSocket budget
/// (`live::budget`) must hold a few such messages.
const MAX_WEBSOCKET_MESSAGE: usize = 64 * 1024 * 1024;

fn default_websocket_max_message() -> usize {
    1024 * 1024
}
fn default_session_max_live() -> usize {
    32
}
fn default_retry_buffer_bytes() -> usize {
    64 * 1024
}

/// A configuration error: which file, which key, what is wrong. Never holds a secret value.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, expands and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `path`, looking environment variables up with `env`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: String, message: String| ConfigError {
            file: path.to_owned(),
            key,
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let (line, column) = line_and_column(text, span.start);
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            err(
                String::new(),
                format!("not valid TOML{at}: {}", e.message().trim()),
            )
        })?;
        // Every `${VAR}` is looked at before refusing, so that one run names every missing
        // variable.
        let mut unexpanded = Vec::new();
        for (key, value) in table.iter_mut() {
            expand_value(value, key, env, &mut unexpanded);
        }
        match unexpanded.len() {
            0 => {}
            1 => {
                let (key, message) = unexpanded.remove(0);
                return Err(err(key, message));
            }
            n => {
                let each: Vec<String> = unexpanded
                    .iter()
                    .map(|(key, message)| format!("{key}: {message}"))
                    .collect();
                return Err(err(
                    String::new(),
                    format!("{n} values cannot be expanded:\n  {}", each.join("\n  ")),
                ));
            }
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                // toml appends "in `table`"; the path already says where.
                let message = e.inner().to_string();
                let message = message.split("\nin `").next().unwrap_or_default().trim();
                // url's words for `http//id.example` or `id.example` name no likely mistake.
                let message = if message.starts_with("relative URL without a base") {
                    format!(
                        "{message}: a URL here starts with its scheme, as in \
                         `https://id.example.com` (is the `:` after `http` or `https` missing?)"
                    )
                } else {
                    message.to_owned()
                };
                err(e.path().to_string(), message)
            })?;
        let mut config = config;
        config.read_client_keys().map_err(|(k, m)| err(k, m))?;
        config.apply_profiles().map_err(|(k, m)| err(k, m))?;
        config.validate().map_err(|(k, m)| err(k, m))?;
        Ok(config)
    }

    /// Settings that work but are probably not meant (the SPEC's "Command line" list):
    /// `check-config` prints them and `serve` logs them; neither refuses them.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = Vec::new();
        let mut warn = |key: String, message: &str| {
            warnings.push(ConfigWarning {
                key,
                message: message.to_owned(),
            })
        };
        for (i, p) in self.providers.iter().enumerate() {
            for (field, url) in [
                ("issuer", &p.issuer),
                ("authorization_endpoint", &p.authorization_endpoint),
                ("token_endpoint", &p.token_endpoint),
            ] {
                if let Some(url) = url
                    && url.scheme() == "http"
                    && !is_loopback(url)
                {
                    warn(
                        entry_key("providers", i, &p.id, field),
                        "is http:// on a non-loopback host: codes, tokens and the client \
                         secret would cross the network unencrypted",
                    );
                }
            }
        }
        if self.session.idle_timeout_secs > MAX_SENSIBLE_IDLE_SECS {
            warn(
                "session.idle_timeout_secs".into(),
                "is longer than 24 hours: a forgotten session stays usable that long",
            );
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.audience.is_some() && s.token != TokenMode::Exchange {
                warn(
                    entry_key("services", i, &s.name, "audience"),
                    "applies only to token = \"exchange\" and is ignored here; tokens \
                     restricted to this service otherwise come with `resource`",
                );
            }
        }
        if !self.session.cookie_name.starts_with("__Host-") {
            warn(
                "session.cookie_name".into(),
                "has no `__Host-` prefix: the browser will not guarantee that the cookie is \
                 Secure, host-only and for Path=/",
            );
        }
        warnings
    }

    /// The providers users can sign in with, in the configuration's order.
    pub fn login_providers(&self) -> impl Iterator<Item = &ProviderConfig> {
        self.providers.iter().filter(|p| p.login)
    }

    /// The default login provider: the first one listed with `login = true`.
    #[allow(
        clippy::expect_used,
        reason = "`Config::load` refuses a configuration without a login provider"
    )]
    pub fn default_login_provider(&self) -> &ProviderConfig {
        self.login_providers()
            .next()
            .expect("validated: at least one login provider")
    }

    /// The callback URL registered at the provider for `provider_id`.
    pub fn redirect_uri(&self, provider_id: &str) -> String {
        format!("{}/auth/callback/{provider_id}", self.public_origin())
    }

    /// `public_url` without its trailing slash.
    pub fn public_origin(&self) -> &str {
        self.server.public_url.as_str().trim_end_matches('/')
    }

    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }
}

/// A setting that works but is probably not meant. Never holds a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// An idle timeout beyond this is warned about.
const MAX_SENSIBLE_IDLE_SECS: u64 = 24 * 3600;

/// Whether `url`'s host is this machine: `localhost` (and `*.localhost`, RFC 6761), 127.0.0.0/8
/// or ::1. Browsers treat such origins as secure over plain http, and nothing crosses a network.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A glob over paths: `*` stays within a segment, `**` crosses segments. Validated here,
/// compiled by `services` for a service's `allowed_paths`.
pub fn path_glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::expand::expand_string;
    use super::validate::check_id_token_alg;
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
            "SECRET" => Some("s3cret".into()),
            _ => None,
        }
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
[database]
url = "postgres://localhost/courier"
[security]
encryption_keys = ["${KEY}"]
[[providers]]
id = "main"
issuer = "http://127.0.0.1:9000"
client_id = "courier"
client_secret = "${SECRET}"
login = true
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("courier.toml"), &env)
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.session.cookie_name, "__Host-courier");
        assert_eq!(config.session.idle_timeout_secs, 28_800);
        assert_eq!(config.database.max_connections, 16);
        assert_eq!(
            config.redirect_uri("main"),
            "http://127.0.0.1:8080/auth/callback/main"
        );
        assert_eq!(
            config.providers[0]
                .client_secret
                .as_ref()
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
    }

    #[test]
    fn a_missing_variable_is_named_with_its_key() {
        let text = MINIMAL.replace("${SECRET}", "${NOPE}");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("courier.toml"), "{e}");
        assert!(e.contains("providers[0].client_secret"), "{e}");
        assert!(e.contains("NOPE"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let text = MINIMAL.replace("[database]", "[database]\npoolsize = 3");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("database") && e.contains("poolsize"), "{e}");
    }

    #[test]
    fn several_login_providers_load_and_the_first_is_the_default() {
        let text = format!(
            "{MINIMAL}\n[[providers]]\nid = \"b\"\nissuer = \"http://x\"\nclient_id = \"c\"\nlogin = true\n"
        );
        let config = parse(&text).unwrap();
        let ids: Vec<&str> = config.login_providers().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["main", "b"]);
        assert_eq!(config.default_login_provider().id, "main");
    }

    #[test]
    fn a_configuration_without_a_login_provider_is_refused() {
        let text = MINIMAL.replace("login = true", "login = false");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("at least one provider must have login = true"),
            "{e}"
        );
    }

    #[test]
    fn a_plain_oauth_login_provider_is_refused() {
        let text = format!(
            "{MINIMAL}\n[[providers]]\nid = \"gh\"\nauthorization_endpoint = \"http://x/a\"\ntoken_endpoint = \"http://x/t\"\nclient_id = \"c\"\nlogin = true\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("providers[1].login (provider \"gh\")") && e.contains("issuer"),
            "the provider is named by its id too: {e}"
        );
    }

    #[test]
    fn a_short_key_is_refused_without_printing_it() {
        let text = MINIMAL.replace("${KEY}", "c2hvcnQ=");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("security.encryption_keys[0]"), "{e}");
        assert!(!e.contains("c2hvcnQ="), "{e}");
    }

    #[test]
    fn a_service_must_name_a_configured_provider() {
        let text = format!(
            "{MINIMAL}\n[[services]]\nname = \"orders\"\nbase_url = \"http://127.0.0.1:9100/\"\nprovider = \"nope\"\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("services[0].provider"), "{e}");
    }

    #[test]
    fn a_revocation_endpoint_may_stand_next_to_an_issuer() {
        let text = MINIMAL.replace(
            "login = true",
            "login = true\nrevocation_endpoint = \"http://127.0.0.1:9000/o/revoke_token/\"",
        );
        let config = parse(&text).unwrap();
        assert!(config.providers[0].revocation_endpoint.is_some());
        let text = MINIMAL.replace(
            "login = true",
            "login = true\nrevocation_endpoint = \"ftp://x\"",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("providers[0].revocation_endpoint"), "{e}");
        let text = MINIMAL.replace(
            "login = true",
            "login = true\nuserinfo_endpoint = \"http://x/\"",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("comes from discovery"), "{e}");
    }

    #[test]
    fn expansion_replaces_every_reference() {
        assert_eq!(
            expand_string("a${SECRET}b${SECRET}", &env).unwrap(),
            "as3cretbs3cret"
        );
        assert!(expand_string("${SECRET", &env).is_err());
        assert!(expand_string("${1X}", &env).is_err());
    }

    #[test]
    fn under_fapi2_the_id_token_algorithm_is_ps256_or_es256_and_never_none() {
        let mut provider: ProviderConfig = toml::from_str(
            "id = \"bank\"\nissuer = \"https://bank.example\"\nclient_id = \"courier\"",
        )
        .unwrap();
        assert!(check_id_token_alg(&provider, IdTokenAlg::None).is_ok());
        assert!(check_id_token_alg(&provider, IdTokenAlg::Rs256).is_ok());
        provider.fapi2 = true;
        for alg in [IdTokenAlg::None, IdTokenAlg::Rs256, IdTokenAlg::EdDsa] {
            assert!(check_id_token_alg(&provider, alg).is_err(), "{alg:?}");
        }
        for alg in [IdTokenAlg::Ps256, IdTokenAlg::Es256] {
            assert!(check_id_token_alg(&provider, alg).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn every_missing_variable_is_named_in_one_error() {
        let text = MINIMAL
            .replace("${KEY}", "${NO_SUCH_KEY}")
            .replace("${SECRET}", "${NO_SUCH_SECRET}");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("NO_SUCH_KEY") && e.contains("NO_SUCH_SECRET") && e.contains("2 values"),
            "{e}"
        );
    }

    #[test]
    fn a_url_without_its_scheme_is_named_with_the_likely_mistake() {
        let text = MINIMAL.replace("http://127.0.0.1:9000", "http//127.0.0.1:9000");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("providers[0].issuer") && e.contains("is the `:` after `http`"),
            "{e}"
        );
    }
}
