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
