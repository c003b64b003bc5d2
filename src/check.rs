//! `courier check-config [--online]`: the configuration's warnings, and with `--online` what each
//! provider's discovery metadata and keys say it supports, checked against the configuration.
//!
//! Exit codes: 2 for what `serve` would refuse or could not use (a configuration error, metadata
//! or keys that cannot be fetched or parsed, an issuer that is not the metadata's `issuer`);
//! 0 otherwise, with warnings on stderr for what will probably not work as configured.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use openidconnect::JsonWebKeySet;
use openidconnect::core::CoreJsonWebKey;
use serde_json::Value;

use crate::config::{ClientAuth, Config, ParMode, ProviderConfig, TokenMode};
use crate::oidc::registry::{Metadata, error_chain};

/// The exit code for a configuration that `serve` would refuse or could not use.
const EXIT_REFUSED: u8 = 2;

/// A provider response larger than this is not metadata or a key set.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Prints the configuration's warnings and, when `online`, every provider's capabilities and
/// problems. Returns the process's exit code.
pub fn run(path: &Path, config: &Config, online: bool) -> ExitCode {
    let file = path.display();
    for warning in config.warnings() {
        eprintln!("warning: {file}: {warning}");
    }
    if !online {
        println!("{file}: ok");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("courier: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let http = crate::oidc::http::build_client();
    let mut refused = false;
    for (i, provider) in config.providers.iter().enumerate() {
        let report = runtime.block_on(inspect(config, i, provider, &http));
        print!("{}", report.summary);
        for finding in &report.findings {
            let level = match finding.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            eprintln!(
                "{level}: {file}: providers[{i}] ({}): {}",
                provider.id, finding.message
            );
        }
        refused |= report
            .findings
            .iter()
            .any(|f| f.severity == Severity::Error);
    }
    if refused {
        eprintln!(
            "{file}: refused: as these providers answer now, `courier serve` would start but \
             answer 503 on /readyz, and refuse logins and calls through them, until they \
             answer as the configuration expects"
        );
        ExitCode::from(EXIT_REFUSED)
    } else {
        println!("{file}: ok (online)");
        ExitCode::SUCCESS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    /// `serve` would fail: the provider cannot be used at all.
    Error,
    /// Something in the configuration will probably not work with this provider.
    Warning,
}

struct Finding {
    severity: Severity,
    message: String,
}

/// What was learnt about one provider: a summary for stdout and the findings.
#[derive(Default)]
struct ProviderReport {
    summary: String,
    findings: Vec<Finding>,
}

impl ProviderReport {
    fn line(&mut self, label: &str, value: impl AsRef<str>) {
        let _ = writeln!(self.summary, "  {label:<28} {}", value.as_ref());
    }
    fn error(&mut self, message: impl Into<String>) {
        self.findings.push(Finding {
            severity: Severity::Error,
            message: message.into(),
        });
    }
    fn warn(&mut self, message: impl Into<String>) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            message: message.into(),
        });
    }
}

/// Every scope courier asks `provider` for: its own and those of services using it.
fn requested_scopes(config: &Config, provider: &ProviderConfig) -> Vec<String> {
    let mut scopes = provider.scopes.clone();
    for service in &config.services {
        if service.provider.as_deref() == Some(provider.id.as_str()) {
            for scope in &service.scopes {
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
        }
    }
    scopes
}

async fn inspect(
    config: &Config,
    index: usize,
    provider: &ProviderConfig,
    http: &reqwest::Client,
) -> ProviderReport {
    let mut report = ProviderReport::default();
    let role = if provider.login && config.default_login_provider().id == provider.id {
        "login provider, the default"
    } else if provider.login {
        "login provider"
    } else {
        "linked-account provider"
    };
    let _ = writeln!(report.summary, "provider {} ({role})", provider.id);
    let Some(issuer) = &provider.issuer else {
        plain_oauth(provider, &mut report);
        return report;
    };
    // As discovery does at `serve`: the configured issuer without its trailing slash.
    let expected_issuer = issuer.as_str().trim_end_matches('/');
    let discovery_url = format!("{expected_issuer}/.well-known/openid-configuration");
    report.line("issuer", expected_issuer);
    report.line("discovery", &discovery_url);

    let metadata = match fetch_json(http, &discovery_url).await {
        Ok(metadata) => metadata,
        Err(why) => {
            report.error(format!("the discovery metadata cannot be fetched: {why}"));
            return report;
        }
    };
    match metadata.get("issuer").and_then(Value::as_str) {
        // `serve` takes the issuer with or without a trailing slash (src/oidc/registry.rs).
        Some(found)
            if found == expected_issuer || found.strip_suffix('/') == Some(expected_issuer) => {}
        Some(found) => report.error(format!(
            "providers[{index}].issuer: the metadata names the issuer `{found}`, not \
             `{expected_issuer}`; discovery at `serve` requires them to be equal (set \
             `issuer = \"{found}\"` if that is the provider)"
        )),
        None => report.error("the metadata has no `issuer`"),
    }
    if let Err(e) = serde_json::from_value::<Metadata>(metadata.clone()) {
        report.error(format!(
            "the metadata lacks what OpenID Connect discovery requires: {e}"
        ));
    }

    let list = |name: &str| -> Option<Vec<String>> {
        metadata.get(name).and_then(Value::as_array).map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
    };
    let endpoint = |name: &str| {
        metadata
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let flag = |name: &str| metadata.get(name).and_then(Value::as_bool).unwrap_or(false);
    let shown = |items: &Option<Vec<String>>, absent: &str| match items {
        Some(items) if !items.is_empty() => items.join(", "),
        _ => absent.to_owned(),
    };

    // RFC 8414 §2: without `grant_types_supported` the default is these two.
    let grant_types = list("grant_types_supported");
    report.line(
        "grant types",
        shown(
            &grant_types,
            "not listed (by default authorization_code, implicit)",
        ),
    );
    let supports_grant = |grant: &str| {
        grant_types
            .as_ref()
            .map_or(grant == "authorization_code" || grant == "implicit", |g| {
                g.iter().any(|x| x == grant)
            })
    };
    let pkce = list("code_challenge_methods_supported");
    report.line(
        "PKCE methods",
        shown(&pkce, "not listed (courier sends S256 anyway)"),
    );
    let par = endpoint("pushed_authorization_request_endpoint");
    let par_required = flag("require_pushed_authorization_requests");
    let par_mode = provider.par();
    report.line(
        "PAR (RFC 9126)",
        match (&par, par_required, par_mode) {
            (Some(url), true, _) => format!("required, {url}"),
            (Some(url), false, ParMode::Off) => {
                format!("supported, {url} (par = \"off\": not used)")
            }
            (Some(url), false, _) => format!("supported, {url} (logins push their requests)"),
            (None, _, _) => "no".into(),
        },
    );
    let dpop_algs = list("dpop_signing_alg_values_supported");
    report.line("DPoP (RFC 9449)", shown(&dpop_algs, "not listed"));
    if provider.dpop
        && !dpop_algs
            .as_ref()
            .is_some_and(|algs| algs.iter().any(|a| a == "ES256"))
    {
        report.warn(
            "dpop = true, but dpop_signing_alg_values_supported does not list ES256, the \
             algorithm of courier's proofs",
        );
    }
    let iss_parameter = flag("authorization_response_iss_parameter_supported");
    report.line(
        "iss parameter (RFC 9207)",
        if iss_parameter {
            "yes (callbacks without `iss` are refused)"
        } else {
            "no"
        },
    );
    let revocation = endpoint("revocation_endpoint");
    report.line(
        "revocation (RFC 7009)",
        revocation.as_deref().unwrap_or("no"),
    );
    report.line(
        "end-session",
        endpoint("end_session_endpoint")
            .as_deref()
            .unwrap_or("no (logout ends the courier session only)"),
    );
    let backchannel = flag("backchannel_logout_supported");
    report.line(
        "back-channel logout",
        if backchannel {
            let sid = if flag("backchannel_logout_session_supported") {
                ", with sid"
            } else {
                ""
            };
            format!(
                "yes{sid}; register {}/auth/backchannel-logout/{}",
                config.public_origin(),
                provider.id
            )
        } else {
            "no".into()
        },
    );
    report.line(
        "userinfo",
        endpoint("userinfo_endpoint").as_deref().unwrap_or("no"),
    );
    let algs = list("id_token_signing_alg_values_supported");
    report.line("ID token signing algorithms", shown(&algs, "not listed"));
    let scopes_supported = list("scopes_supported");
    report.line(
        "scopes",
        shown(&scopes_supported, "not listed (any may work)"),
    );
    let auth_methods = list("token_endpoint_auth_methods_supported");
    report.line(
        "token endpoint auth",
        shown(&auth_methods, "not listed (by default client_secret_basic)"),
    );

    // What does not fit the configuration.
    let scopes = requested_scopes(config, provider);
    if let Some(supported) = &scopes_supported {
        for scope in scopes.iter().filter(|s| !supported.contains(s)) {
            report.warn(format!(
                "scope `{scope}` is asked for but not in the provider's scopes_supported"
            ));
        }
    }
    if !supports_grant("authorization_code") {
        report.warn(
            "grant_types_supported lacks authorization_code: logins and connections will fail",
        );
    }
    if scopes.iter().any(|s| s == "offline_access") && !supports_grant("refresh_token") {
        report.warn(
            "`offline_access` is asked for but grant_types_supported lacks refresh_token: \
             sessions will end when their first access token expires",
        );
    }
    let client_services: Vec<&str> = config
        .services
        .iter()
        .filter(|s| {
            s.token == TokenMode::Client && s.provider.as_deref() == Some(provider.id.as_str())
        })
        .map(|s| s.name.as_str())
        .collect();
    if !client_services.is_empty() && !supports_grant("client_credentials") {
        report.warn(format!(
            "services {} use client tokens but grant_types_supported lacks client_credentials",
            client_services.join(", ")
        ));
    }
    let exchange_services: Vec<&str> = config
        .services
        .iter()
        .filter(|s| {
            s.token == TokenMode::Exchange && s.provider.as_deref() == Some(provider.id.as_str())
        })
        .map(|s| s.name.as_str())
        .collect();
    if !exchange_services.is_empty() && !supports_grant(crate::oidc::grants::TOKEN_EXCHANGE) {
        report.warn(format!(
            "services {} exchange tokens but grant_types_supported lacks {} (RFC 8693)",
            exchange_services.join(", "),
            crate::oidc::grants::TOKEN_EXCHANGE
        ));
    }
    if list("response_types_supported").is_some_and(|r| !r.iter().any(|t| t == "code")) {
        report.warn("response_types_supported lacks `code`: courier uses the code flow");
    }
    if pkce
        .as_ref()
        .is_some_and(|methods| !methods.iter().any(|m| m == "S256"))
    {
        report.warn("code_challenge_methods_supported lacks S256, which courier always sends");
    }
    match (&par, par_required, par_mode) {
        (None, _, ParMode::Required) => report.error(
            "par = \"required\", but the metadata has no pushed_authorization_request_endpoint: \
             no login can start",
        ),
        (Some(_), true, ParMode::Off) => report.error(
            "the provider requires pushed authorization requests, but par = \"off\": logins \
             will be refused",
        ),
        _ => {}
    }
    let client_auth = provider.client_auth(true);
    let method = match client_auth {
        ClientAuth::ClientSecretBasic => "client_secret_basic",
        ClientAuth::ClientSecretPost => "client_secret_post",
        ClientAuth::PrivateKeyJwt => "private_key_jwt",
    };
    if (provider.client_secret.is_some() || client_auth == ClientAuth::PrivateKeyJwt)
        && auth_methods
            .as_ref()
            .is_some_and(|m| !m.iter().any(|x| x == method))
    {
        report.warn(format!(
            "token_endpoint_auth_methods_supported lacks {method}, which courier uses for this \
             provider (client_auth)"
        ));
    }
    if provider.fapi2 {
        // What the FAPI 2.0 profile needs of the provider beyond PAR (checked above).
        if !iss_parameter {
            report.error(
                "profile fapi2: the metadata does not promise `iss` in authorization responses \
                 (authorization_response_iss_parameter_supported), which the profile requires",
            );
        }
        if !algs
            .as_ref()
            .is_some_and(|a| a.iter().any(|x| x == "PS256" || x == "ES256"))
        {
            report.error(
                "profile fapi2: id_token_signing_alg_values_supported lists neither PS256 nor \
                 ES256, the only ID token algorithms the profile allows",
            );
        }
        if auth_methods
            .as_ref()
            .is_some_and(|m| !m.iter().any(|x| x == "private_key_jwt"))
        {
            report.error(
                "profile fapi2: token_endpoint_auth_methods_supported lacks private_key_jwt",
            );
        }
    }
    if let Some(key) = provider.signing_key() {
        let ps256 = list("token_endpoint_auth_signing_alg_values_supported")
            .is_some_and(|a| a.iter().any(|x| x == "PS256"));
        report.line(
            "client assertions (private_key_jwt)",
            format!(
                "{:?}, kid {}; keys at {}/.well-known/jwks.json",
                key.algorithm(ps256),
                key.kid(),
                config.public_origin()
            ),
        );
    }
    const ASYMMETRIC: &[&str] = &[
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ];
    if algs
        .as_ref()
        .is_some_and(|a| !a.iter().any(|x| ASYMMETRIC.contains(&x.as_str())))
    {
        report.warn(
            "no asymmetric ID token signing algorithm is advertised; courier accepts only \
             asymmetric ones and will expect RS256",
        );
    }

    match endpoint("jwks_uri") {
        Some(jwks_uri) => check_keys(http, &jwks_uri, &mut report).await,
        None => report.error("the metadata has no jwks_uri"),
    }
    report
}

async fn check_keys(http: &reqwest::Client, jwks_uri: &str, report: &mut ProviderReport) {
    let jwks = match fetch_json(http, jwks_uri).await {
        Ok(jwks) => jwks,
        Err(why) => {
            report.error(format!("the keys ({jwks_uri}) cannot be fetched: {why}"));
            return;
        }
    };
    if let Err(e) = serde_json::from_value::<JsonWebKeySet<CoreJsonWebKey>>(jwks.clone()) {
        report.error(format!("the keys ({jwks_uri}) are not a JWK set: {e}"));
        return;
    }
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let described: Vec<String> = keys
        .iter()
        .map(|k| {
            let field = |name: &str| k.get(name).and_then(Value::as_str).unwrap_or("-");
            format!(
                "{} {} (kid {}, use {})",
                field("kty"),
                field("alg"),
                field("kid"),
                field("use")
            )
        })
        .collect();
    report.line(
        "keys",
        if described.is_empty() {
            "none".to_owned()
        } else {
            described.join("; ")
        },
    );
    let signing = keys.iter().filter(|k| {
        k.get("use")
            .and_then(Value::as_str)
            .is_none_or(|u| u == "sig")
            && k.get("kty").and_then(Value::as_str) != Some("oct")
    });
    if signing.count() == 0 {
        report.warn("the key set holds no public signing key: ID tokens cannot be verified");
    }
}

/// A provider configured by its endpoints: nothing to discover; what it has is what is set.
fn plain_oauth(provider: &ProviderConfig, report: &mut ProviderReport) {
    report.line(
        "kind",
        "plain OAuth 2.0 (endpoints configured, no discovery)",
    );
    let shown = |url: &Option<url::Url>| url.as_ref().map_or("no".to_owned(), |u| u.to_string());
    report.line("authorization", shown(&provider.authorization_endpoint));
    report.line("token", shown(&provider.token_endpoint));
    report.line("userinfo", shown(&provider.userinfo_endpoint));
    report.line(
        "revocation (RFC 7009)",
        shown(&provider.revocation_endpoint),
    );
}

/// GETs `url` as courier's provider client does (no redirects, timeouts) and parses JSON.
/// A connection error, with the likely mistake named where the error text alone would not tell
/// it (TLS spoken to a plain-HTTP port, or the other way round).
fn with_hint(error: String, url: &str) -> String {
    let hint = if error.contains("InvalidContentType") || error.contains("corrupt message") {
        Some("the server there does not speak TLS: is it `http://`, or the wrong port?")
    } else if url.starts_with("http://")
        && error.contains("connection closed before message completed")
    {
        Some("the server there may speak TLS only: is it `https://`?")
    } else if error.contains("Connection refused") {
        Some("nothing listens there: is the provider running, and is the port right?")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{error} ({hint})"),
        None => error,
    }
}

async fn fetch_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| with_hint(error_chain(&e), url))?;
    let status = response.status();
    if status.is_redirection() {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        return Err(format!(
            "answered {status} with a redirect to {to}; courier does not follow redirects"
        ));
    }
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err("the document is too large".into());
    }
    let body = response.bytes().await.map_err(|e| error_chain(&e))?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err("the document is too large".into());
    }
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}
