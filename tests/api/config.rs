//! The `courier` binary's configuration commands.

use std::io::Write;
use std::process::Command;

fn courier(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    command.args(args).env_remove("COURIER_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run courier")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
[database]
url = "${TEST_DATABASE_URL}"
[security]
encryption_keys = ["${TEST_KEY}"]
[[providers]]
id = "main"
issuer = "http://127.0.0.1:9000"
client_id = "courier"
client_secret = "${TEST_SECRET}"
scopes = ["openid", "profile", "email", "offline_access"]
authorize_params = { prompt = "consent" }
login = true
[[providers]]
id = "github"
authorization_endpoint = "https://github.com/login/oauth/authorize"
token_endpoint = "https://github.com/login/oauth/access_token"
client_id = "gh"
client_secret = "${TEST_SECRET}"
scopes = ["read:user"]
[[services]]
name = "orders"
base_url = "http://127.0.0.1:9100/"
provider = "main"
token = "user"
scopes = ["orders:read"]
allowed_methods = ["GET", "POST"]
allowed_paths = ["/v1/**"]
timeout_secs = 30
[[services]]
name = "github"
base_url = "https://api.github.com/"
provider = "github"
"#;

fn env() -> Vec<(&'static str, String)> {
    vec![
        ("TEST_DATABASE_URL", "postgres://localhost/x".to_owned()),
        ("TEST_KEY", courier::crypto::generate_key()),
        ("TEST_SECRET", "very-secret-value".to_owned()),
    ]
}

fn check(text: &str, env: &[(&str, String)]) -> (bool, String) {
    let file = config_file(text);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = courier(
        &["check-config", "--config", file.path().to_str().unwrap()],
        &env,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("very-secret-value"),
        "a secret was printed: {text}"
    );
    (out.status.success(), text)
}

#[test]
fn check_config_accepts_the_spec_example() {
    let (ok, out) = check(VALID, &env());
    assert!(ok, "{out}");
}

#[test]
fn check_config_names_the_file_and_the_key() {
    let cases = [
        (
            VALID.replace("[database]", "[database]\npool = 4"),
            "database.pool: unknown field `pool`",
        ),
        (
            VALID.replace("token = \"user\"", "token = \"sometimes\""),
            "services[0].token",
        ),
        (
            VALID.replace("provider = \"github\"", "provider = \"gitlab\""),
            "services[1].provider",
        ),
        (VALID.replace("login = true", ""), "login = true"),
        (
            VALID.replace("127.0.0.1:8080\"\npublic", "nowhere\"\npublic"),
            "server.listen",
        ),
    ];
    for (text, expected) in cases {
        let (ok, out) = check(&text, &env());
        assert!(!ok, "accepted: {expected}");
        assert!(out.contains(expected), "{expected} not in: {out}");
        assert!(
            out.contains(".toml") || out.contains("tmp"),
            "the file is named: {out}"
        );
    }
}

#[test]
fn a_missing_environment_variable_is_named() {
    let env: Vec<_> = env()
        .into_iter()
        .filter(|(k, _)| *k != "TEST_SECRET")
        .collect();
    let (ok, out) = check(VALID, &env);
    assert!(!ok);
    assert!(out.contains("TEST_SECRET"), "{out}");
    assert!(out.contains("providers[0].client_secret"), "{out}");
}

#[test]
fn a_missing_file_is_reported() {
    let out = courier(
        &["check-config", "--config", "/nonexistent/courier.toml"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/courier.toml"));
}

#[test]
fn gen_key_prints_a_usable_key() {
    let out = courier(&["gen-key"], &[]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    let mut env = env();
    env[1].1 = key.trim().to_owned();
    let (ok, out) = check(VALID, &env);
    assert!(ok, "{out}");
}

/// Runs `args` + `--config <text>` and returns (exit code, stdout, stderr).
fn run_with(args: &[&str], text: &str, env: &[(&str, String)]) -> (Option<i32>, String, String) {
    let file = config_file(text);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", file.path().to_str().unwrap()]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = courier(&all, &env);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stdout.contains("very-secret-value") && !stderr.contains("very-secret-value"),
        "a secret was printed"
    );
    (out.status.code(), stdout, stderr)
}

/// A configuration, its environment, and the key its error must name.
type UnsafeCase = (String, Vec<(&'static str, String)>, &'static str);

/// What cannot work or is unsafe, each with the key it names.
fn unsafe_cases() -> Vec<UnsafeCase> {
    let zero_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
    let with_env = |name: &'static str, value: &str| {
        let mut env = env();
        env.retain(|(k, _)| *k != name);
        env.push((name, value.to_owned()));
        env
    };
    vec![
        (
            VALID.replace("http://127.0.0.1:8080", "http://app.example.com"),
            env(),
            "server.public_url",
        ),
        (
            VALID.replace("http://127.0.0.1:8080", "http://10.0.0.5:8080"),
            env(),
            "server.public_url",
        ),
        (
            VALID.replacen(
                "client_secret = \"${TEST_SECRET}\"",
                "client_secret = \"\"",
                1,
            ),
            env(),
            "providers[0].client_secret",
        ),
        (
            VALID.to_owned(),
            with_env("TEST_SECRET", ""),
            "providers[0].client_secret",
        ),
        (
            VALID.to_owned(),
            with_env("TEST_KEY", &zero_key),
            "security.encryption_keys[0]",
        ),
        (
            VALID.to_owned(),
            with_env("TEST_KEY", "c2hvcnQta2V5"),
            "security.encryption_keys[0]",
        ),
        (
            VALID.replace(
                "public_url = \"http://127.0.0.1:8080\"",
                "public_url = \"http://127.0.0.1:8080\"\nstatic_dir = \"/nonexistent/spa\"",
            ),
            env(),
            "server.static_dir",
        ),
        (
            VALID.replace(
                "[security]",
                "[session]\nidle_timeout_secs = 7200\nabsolute_timeout_secs = 3600\n[security]",
            ),
            env(),
            "session.idle_timeout_secs",
        ),
    ]
}

#[test]
fn check_config_refuses_unsafe_settings_and_names_the_key() {
    for (text, env, key) in unsafe_cases() {
        let (code, _, stderr) = run_with(&["check-config"], &text, &env);
        assert_eq!(code, Some(2), "{key} accepted: {stderr}");
        assert!(stderr.contains(key), "{key} not in: {stderr}");
    }
}

#[test]
fn serve_refuses_what_check_config_refuses() {
    // Refused while loading the file: nothing is bound and no database is reached.
    for (text, env, key) in unsafe_cases() {
        let (code, _, stderr) = run_with(&["serve"], &text, &env);
        assert_eq!(code, Some(2), "{key} served: {stderr}");
        assert!(stderr.contains(key), "{key} not in: {stderr}");
    }
}

#[test]
fn check_config_warns_about_risky_settings_but_accepts_them() {
    let text = VALID
        .replace("http://127.0.0.1:9000", "http://login.example.com")
        .replace(
            "[security]",
            "[session]\ncookie_name = \"courier\"\nidle_timeout_secs = 172800\nabsolute_timeout_secs = 604800\n[security]",
        );
    let (code, stdout, stderr) = run_with(&["check-config"], &text, &env());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    for key in [
        "providers[0].issuer",
        "session.idle_timeout_secs",
        "session.cookie_name",
    ] {
        assert!(
            stderr.contains("warning:") && stderr.contains(key),
            "{key} not warned about: {stderr}"
        );
    }
    // The spec's example warns about nothing.
    let (code, _, stderr) = run_with(&["check-config"], VALID, &env());
    assert_eq!(code, Some(0));
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn loopback_http_urls_stay_allowed() {
    for origin in [
        "http://localhost:8080",
        "http://127.0.0.2:8080",
        "http://[::1]:8080",
    ] {
        let text = VALID
            .replace("http://127.0.0.1:8080", origin)
            .replace("http://127.0.0.1:9000", &origin.replace("8080", "9000"));
        let (code, _, stderr) = run_with(&["check-config"], &text, &env());
        assert_eq!(code, Some(0), "{origin}: {stderr}");
        assert!(!stderr.contains("warning"), "{origin}: {stderr}");
    }
}

#[test]
fn toml_syntax_errors_give_the_line_and_column() {
    let text = VALID.replace("client_id = \"gh\"", "client_id = gh");
    let line = text.lines().position(|l| l == "client_id = gh").unwrap() + 1;
    let (code, _, stderr) = run_with(&["check-config"], &text, &env());
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("line {line}, column 13")),
        "line {line} not in: {stderr}"
    );
}

#[tokio::test]
async fn serve_logs_the_warnings_check_config_prints() {
    use tokio::io::AsyncBufReadExt;

    let db = crate::helpers::TestDb::new().await;
    let text = VALID
        .replace("127.0.0.1:8080\"\npublic", "127.0.0.1:0\"\npublic")
        .replace(
            "[security]",
            "[session]\ncookie_name = \"courier\"\n[security]",
        );
    let file = config_file(&text);
    let mut env = env();
    env[0].1 = db.url.clone();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--config", file.path().to_str().unwrap()])
        .env_remove("COURIER_CONFIG")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start courier");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("session.cookie_name") && line.contains("__Host-") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    child.kill().await.ok();
    assert!(warned, "serve logged the cookie-name warning");
}

/// The configuration block of the SPEC as it stands, keys for features still being built
/// included (`${VAR}`s set).
const SPEC_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
post_logout_redirect = "/"
[database]
url = "${TEST_DATABASE_URL}"
max_connections = 16
[session]
cookie_name = "__Host-courier"
idle_timeout_secs = 28800
absolute_timeout_secs = 604800
[security]
encryption_keys = ["${TEST_KEY}"]
[[providers]]
id = "main"
issuer = "http://127.0.0.1:9000"
client_id = "courier"
client_secret = "${TEST_SECRET}"
scopes = ["openid", "profile", "email", "offline_access"]
authorize_params = { prompt = "consent" }
login = true
display_name = "Example ID"
client_auth = "client_secret_basic"
par = "auto"
dpop = false
[[providers]]
id = "github"
authorization_endpoint = "https://github.com/login/oauth/authorize"
token_endpoint = "https://github.com/login/oauth/access_token"
client_id = "gh"
client_secret = "${TEST_SECRET}"
scopes = ["read:user"]
[[services]]
name = "orders"
base_url = "http://127.0.0.1:9100/"
provider = "main"
token = "user"
audience = "orders-api"
resource = "https://orders.example/"
scopes = ["orders:read"]
allowed_methods = ["GET", "POST"]
allowed_paths = ["/v1/**"]
timeout_secs = 30
websocket = false
stream_idle_timeout_secs = 300
[[services]]
name = "github"
base_url = "https://api.github.com/"
provider = "github"
"#;

#[test]
fn the_specs_whole_example_loads_and_only_what_is_ignored_is_named() {
    let (ok, out) = check(SPEC_EXAMPLE, &env());
    assert!(ok, "{out}");
    // Live connections are built: their keys are used, not warned about.
    assert!(!out.contains("stream_idle_timeout_secs"), "{out}");
    assert!(!out.contains("websocket"), "{out}");
    // PAR and private_key_jwt are built: `par = "auto"` is used, not warned about.
    assert!(!out.contains("providers[0].par"), "{out}");
    // Resource indicators are built: the key is used, not warned about. The example's
    // `audience` is warned about as ignored: its service does not exchange tokens.
    assert!(!out.contains("services[0].resource"), "{out}");
    assert!(
        out.contains(
            "services[0].audience (service \"orders\"): applies only to token = \"exchange\""
        ),
        "{out}"
    );
    let exchange = SPEC_EXAMPLE.replace("token = \"user\"", "token = \"exchange\"");
    let (ok, out) = check(&exchange, &env());
    assert!(ok && !out.contains("services[0].audience"), "{out}");
}

#[test]
fn an_exchange_service_must_name_an_audience_or_a_resource() {
    let cases = [(
        SPEC_EXAMPLE
            .replace("token = \"user\"", "token = \"exchange\"")
            .replace("audience = \"orders-api\"\n", "")
            .replace("resource = \"https://orders.example/\"\n", ""),
        "services[0].token",
    )];
    for (text, key) in cases {
        let (ok, out) = check(&text, &env());
        assert!(!ok, "{key}: {out}");
        assert!(out.contains(key), "{key}: {out}");
    }
    let exchange = SPEC_EXAMPLE.replace("token = \"user\"", "token = \"exchange\"");
    let (ok, out) = check(&exchange, &env());
    assert!(ok, "{out}");
}

#[test]
fn a_resource_must_be_an_absolute_uri_for_a_service_with_a_token() {
    for (resource, token) in [
        ("orders-api", "user"),
        ("https://orders.example/#x", "user"),
        ("https://orders.example/", "none"),
    ] {
        let text = SPEC_EXAMPLE
            .replace(
                "resource = \"https://orders.example/\"",
                &format!("resource = \"{resource}\""),
            )
            .replace("token = \"user\"", &format!("token = \"{token}\""));
        let (ok, out) = check(&text, &env());
        assert!(!ok, "{resource} with token {token} is refused: {out}");
        assert!(out.contains("services[0].resource"), "{out}");
    }
}

#[test]
fn live_connection_settings_load_and_zero_bounds_are_refused() {
    let live = SPEC_EXAMPLE
        .replace("websocket = false", "websocket = true")
        .replace("[session]\n", "[session]\nmax_live_connections = 4\n")
        .replacen("[server]\n", "[server]\nmax_live_connections = 100\n", 1);
    let (ok, out) = check(&live, &env());
    assert!(ok, "{out}");
    for (text, key) in [
        (
            live.replace(
                "stream_idle_timeout_secs = 300",
                "stream_idle_timeout_secs = 0",
            ),
            "services[0].stream_idle_timeout_secs",
        ),
        (
            live.replace("max_live_connections = 4", "max_live_connections = 0"),
            "session.max_live_connections",
        ),
        (
            live.replace("max_live_connections = 100", "max_live_connections = 0"),
            "server.max_live_connections",
        ),
        (
            live.replace("websocket = true", "websocket = \"yes\""),
            "websocket",
        ),
    ] {
        let (ok, out) = check(&text, &env());
        assert!(!ok, "{key} was accepted: {out}");
        assert!(out.contains(key), "{key}: {out}");
    }
}

fn key_file(name: &str) -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/api/keys")
        .join(name)
        .display()
        .to_string()
}

/// `VALID` with the first provider authenticating by `private_key_jwt` with `client_key`
/// (a TOML value), and without a secret.
fn with_client_key(client_key: &str) -> String {
    VALID.replacen(
        "client_secret = \"${TEST_SECRET}\"",
        &format!("client_auth = \"private_key_jwt\"\nclient_key = {client_key}"),
        1,
    )
}

#[test]
fn a_client_key_is_read_from_a_path_inline_pem_or_an_array_without_a_secret() {
    let pem = std::fs::read_to_string(key_file("client_p256.pem")).unwrap();
    for client_key in [
        format!("\"{}\"", key_file("client_rsa.pem")),
        format!("'''\n{pem}'''"),
        format!(
            "[\"{}\", \"{}\"]",
            key_file("client_rsa_next.pem"),
            key_file("client_p256.pem")
        ),
    ] {
        let (ok, out) = check(&with_client_key(&client_key), &env());
        assert!(ok, "{client_key}: {out}");
    }
}

#[test]
fn a_bad_client_key_is_refused_naming_the_key_and_never_printing_it() {
    let cases = [
        (
            with_client_key(
                "'''-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----'''",
            ),
            "providers[0].client_key",
        ),
        (
            with_client_key(&format!(
                "[\"{}\", \"/nonexistent/courier.pem\"]",
                key_file("client_rsa.pem")
            )),
            "providers[0].client_key[1]",
        ),
        (with_client_key("[]"), "providers[0].client_key"),
        (with_client_key("42"), "providers[0].client_key"),
        // A public key cannot sign.
        (
            with_client_key(&format!("\"{}\"", key_file("signing.pub.pem"))),
            "providers[0].client_key",
        ),
    ];
    for (text, key) in cases {
        let (ok, out) = check(&text, &env());
        assert!(!ok, "{key} was accepted: {out}");
        assert!(out.contains(key), "{key}: {out}");
        assert!(!out.contains("c2VjcmV0"), "the key was printed: {out}");
    }
}

#[test]
fn private_key_jwt_without_a_client_key_is_refused() {
    let text = VALID.replacen(
        "client_secret = \"${TEST_SECRET}\"",
        "client_auth = \"private_key_jwt\"",
        1,
    );
    let (ok, out) = check(&text, &env());
    assert!(!ok, "{out}");
    assert!(out.contains("providers[0].client_auth"), "{out}");
    assert!(out.contains("client_key"), "{out}");
    // And a key next to a secret method is a mistake, not silently unused.
    let text = VALID.replacen(
        "client_secret = \"${TEST_SECRET}\"",
        &format!(
            "client_secret = \"${{TEST_SECRET}}\"\nclient_auth = \"client_secret_post\"\nclient_key = \"{}\"",
            key_file("client_rsa.pem")
        ),
        1,
    );
    let (ok, out) = check(&text, &env());
    assert!(!ok, "{out}");
    assert!(out.contains("providers[0].client_key"), "{out}");
}

/// The SPEC's example under `[security] profile = "fapi2"`, its login provider turned into a
/// `private_key_jwt` client without a secret, and GitHub kept out of the profile.
fn fapi2_example() -> String {
    SPEC_EXAMPLE
        .replace(
            "encryption_keys = [\"${TEST_KEY}\"]",
            "encryption_keys = [\"${TEST_KEY}\"]\nprofile = \"fapi2\"",
        )
        .replacen(
            "client_secret = \"${TEST_SECRET}\"",
            &format!("client_key = \"{}\"", key_file("client_rsa.pem")),
            1,
        )
        .replace("client_auth = \"client_secret_basic\"\n", "")
        .replace(
            "client_id = \"gh\"",
            "client_id = \"gh\"\nprofile = \"none\"",
        )
}

#[test]
fn the_fapi2_profile_loads_for_a_config_that_meets_it() {
    let (ok, out) = check(&fapi2_example(), &env());
    assert!(ok, "{out}");
}

#[test]
fn the_fapi2_profile_refuses_what_cannot_meet_it_naming_the_key() {
    let example = fapi2_example();
    let cases = [
        // A secret anywhere under the profile.
        (
            example.replacen(
                "client_id = \"courier\"",
                "client_id = \"courier\"\nclient_secret = \"${TEST_SECRET}\"",
                1,
            ),
            "providers[0].client_secret",
        ),
        // No key to sign with.
        (
            example.replacen(
                &format!("client_key = \"{}\"\n", key_file("client_rsa.pem")),
                "",
                1,
            ),
            "providers[0].client_key",
        ),
        // PAR turned off.
        (
            example.replace("par = \"auto\"", "par = \"off\""),
            "providers[0].par",
        ),
        // A plain OAuth 2.0 provider that does not opt out.
        (
            example.replace("profile = \"none\"\n", ""),
            "providers[1].profile",
        ),
        // The per-provider switch, without the [security] one.
        (
            SPEC_EXAMPLE.replace("dpop = false", "dpop = false\nprofile = \"fapi2\""),
            "providers[0].client_secret",
        ),
        // An unknown profile.
        (
            example.replace("profile = \"fapi2\"", "profile = \"fapi3\""),
            "security.profile",
        ),
    ];
    for (text, key) in cases {
        let (ok, out) = check(&text, &env());
        assert!(!ok, "{key} was accepted: {out}");
        assert!(out.contains(key), "{key}: {out}");
    }
}
