//! `courier check-config --online`, run as the real binary against node-oidc-provider and a
//! wiremock provider whose metadata does not fit the configuration.

use std::io::Write;

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::NodeProvider;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A configuration whose login provider has `issuer`, with `extra` TOML appended.
fn config(issuer: &str, scopes: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
[database]
url = "postgres://127.0.0.1:1/none"
[security]
encryption_keys = ["{key}"]
[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "courier"
client_secret = "courier-secret"
scopes = [{scopes}]
login = true
{extra}
"#,
        key = courier::crypto::generate_key(),
    )
}

async fn check_online(text: &str) -> Outcome {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["check-config", "--online", "--config"])
        .arg(file.path())
        .env_remove("COURIER_CONFIG")
        .output()
        .await
        .expect("run courier");
    let outcome = Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !outcome.stdout.contains("courier-secret") && !outcome.stderr.contains("courier-secret"),
        "a secret was printed"
    );
    outcome
}

const GITHUB: &str = r#"
[[providers]]
id = "github"
authorization_endpoint = "https://github.com/login/oauth/authorize"
token_endpoint = "https://github.com/login/oauth/access_token"
client_id = "gh"
client_secret = "courier-secret"
scopes = ["read:user"]
"#;

#[tokio::test]
async fn check_config_online_reports_what_a_real_provider_supports() {
    let provider = NodeProvider::start(json!({})).await;
    let scopes = r#""openid", "offline_access""#;
    let out = check_online(&config(&provider.issuer, scopes, GITHUB)).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for expected in [
        "provider main (login provider, the default)",
        "authorization_code",
        "refresh_token",
        "S256",
        "iss parameter (RFC 9207)",
        "yes (callbacks without `iss` are refused)",
        "DPoP (RFC 9449)",
        "ES256",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "revocation (RFC 7009)",
        "/token/revocation",
        "end-session",
        "RS256",
        "provider github (linked-account provider)",
        "plain OAuth 2.0",
        "https://github.com/login/oauth/access_token",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected} in:\n{}",
            out.stdout
        );
    }
    assert!(!out.stderr.contains("error:"), "{}", out.stderr);
}

#[tokio::test]
async fn check_config_online_warns_about_a_scope_the_provider_does_not_list() {
    let provider = NodeProvider::start(json!({})).await;
    let scopes = r#""openid", "offline_access", "payroll:write""#;
    let out = check_online(&config(&provider.issuer, scopes, "")).await;
    assert_eq!(out.code, Some(0), "warnings do not refuse: {}", out.stderr);
    assert!(
        out.stderr.contains("warning:")
            && out
                .stderr
                .contains("providers[0] (main): scope `payroll:write`"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("`openid`"), "{}", out.stderr);
}

/// What the wiremock provider's metadata says its issuer is.
enum IssuerInMetadata {
    /// Its own URL.
    Itself,
    /// Its own URL with a trailing slash.
    WithSlash,
    /// Someone else.
    Other(&'static str),
}

/// A provider whose metadata is served by wiremock.
async fn wiremock_provider(issuer: IssuerInMetadata, grants: &[&str]) -> MockServer {
    let server = MockServer::start().await;
    let base = server.uri();
    let issuer = match issuer {
        IssuerInMetadata::Itself => base.clone(),
        IssuerInMetadata::WithSlash => format!("{base}/"),
        IssuerInMetadata::Other(other) => other.to_owned(),
    };
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": format!("{base}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "grant_types_supported": grants,
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "keys": [] })))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn check_config_online_refuses_an_issuer_the_metadata_does_not_name() {
    let server = wiremock_provider(
        IssuerInMetadata::Other("https://login.example.com"),
        &["authorization_code", "refresh_token"],
    )
    .await;
    let out = check_online(&config(&server.uri(), r#""openid""#, "")).await;
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("error:")
            && out.stderr.contains("providers[0].issuer")
            && out.stderr.contains("https://login.example.com"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn check_config_online_warns_when_offline_access_cannot_be_had() {
    let server = wiremock_provider(IssuerInMetadata::Itself, &["authorization_code"]).await;
    let scopes = r#""openid", "offline_access""#;
    let out = check_online(&config(&server.uri(), scopes, "")).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("`offline_access` is asked for")
            && out.stderr.contains("lacks refresh_token"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("no public signing key"),
        "an empty key set is worth a warning: {}",
        out.stderr
    );
}

#[tokio::test]
async fn check_config_online_refuses_a_provider_it_cannot_reach() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = check_online(&config(
        &format!("http://127.0.0.1:{port}"),
        r#""openid""#,
        "",
    ))
    .await;
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("providers[0] (main): the discovery metadata cannot be fetched"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("nothing listens there")
            && out.stderr.contains("would start but answer 503 on /readyz"),
        "says what is likely wrong and what `serve` would really do: {}",
        out.stderr
    );
}

#[tokio::test]
async fn check_config_online_names_tls_spoken_to_a_plain_http_port() {
    let server = wiremock_provider(IssuerInMetadata::Itself, &["authorization_code"]).await;
    let issuer = server.uri().replace("http://", "https://");
    let out = check_online(&config(&issuer, r#""openid""#, "")).await;
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("does not speak TLS"), "{}", out.stderr);
}

#[tokio::test]
async fn check_config_refuses_a_discovery_url_given_as_issuer_even_offline() {
    let server = wiremock_provider(IssuerInMetadata::Itself, &["authorization_code"]).await;
    let issuer = format!("{}/.well-known/openid-configuration", server.uri());
    let out = check_online(&config(&issuer, r#""openid""#, "")).await;
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("providers[0].issuer") && out.stderr.contains("discovery URL"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn check_config_online_takes_an_issuer_with_a_trailing_slash_as_the_same() {
    // As Auth0 names itself; `serve` discovers it (issuer_param.rs).
    let server = wiremock_provider(IssuerInMetadata::WithSlash, &["authorization_code"]).await;
    let out = check_online(&config(&server.uri(), r#""openid""#, "")).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn check_config_online_refuses_par_required_at_a_provider_without_par() {
    let provider = NodeProvider::start(json!({ "par": false })).await;
    let scopes = r#""openid""#;
    let out = check_online(&config(&provider.issuer, scopes, "par = \"required\"")).await;
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("providers[0] (main)")
            && out.stderr.contains("pushed_authorization_request_endpoint"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn check_config_online_reports_par_and_the_client_assertion_algorithm() {
    let provider = NodeProvider::start(json!({})).await;
    let key =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/keys/client_rsa.pem");
    let text = config(
        &provider.issuer,
        r#""openid""#,
        &format!(
            "client_auth = \"private_key_jwt\"\nclient_key = \"{}\"",
            key.display()
        ),
    )
    .replace("client_secret = \"courier-secret\"\n", "");
    let out = check_online(&text).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for expected in [
        "PAR (RFC 9126)",
        "(logins push their requests)",
        "client assertions (private_key_jwt)",
        "PS256, kid ",
        "/.well-known/jwks.json",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected} in:\n{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn check_config_online_checks_a_fapi2_provider_for_par_and_passes_one_that_has_it() {
    let key =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/keys/client_p256.pem");
    let fapi2 = |issuer: &str| {
        config(
            issuer,
            r#""openid""#,
            &format!("profile = \"fapi2\"\nclient_key = \"{}\"", key.display()),
        )
        .replace("client_secret = \"courier-secret\"\n", "")
    };
    // The provider's key without its `alg`, so that it may sign (and lists) PS256 ID tokens.
    let mut jwks: serde_json::Value =
        serde_json::from_str(include_str!("../oidc-provider/jwks.json")).unwrap();
    for key in jwks["keys"].as_array_mut().unwrap() {
        key.as_object_mut().unwrap().remove("alg");
    }
    let with_par = NodeProvider::start(json!({ "jwks": jwks })).await;
    let out = check_online(&fapi2(&with_par.issuer)).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ES256, kid "), "{}", out.stdout);
    // Its RS256-only twin cannot sign the profile's ID tokens.
    let rs256_only = NodeProvider::start(json!({})).await;
    let out = check_online(&fapi2(&rs256_only.issuer)).await;
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("neither PS256 nor ES256"),
        "{}",
        out.stderr
    );

    let without_par = NodeProvider::start(json!({ "par": false, "jwks": jwks })).await;
    let out = check_online(&fapi2(&without_par.issuer)).await;
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("pushed_authorization_request_endpoint"),
        "{}",
        out.stderr
    );
}
