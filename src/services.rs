//! The configured dependent services and the rules a proxied call must pass: which methods and
//! paths are allowed, and how a request path maps onto `base_url` without escaping it.

use std::collections::HashMap;

use globset::{GlobSet, GlobSetBuilder};
use percent_encoding::percent_decode_str;
use url::Url;

use crate::config::{Config, ServiceConfig, TokenMode, path_glob};

/// Why a proxied call is refused before it is sent; the routes answer it as a problem
/// document (`bad_request`, `not_allowed`).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The path cannot be mapped safely onto the service's `base_url`.
    #[error("{0}")]
    BadRequest(String),
    /// The service's `allowed_methods` or `allowed_paths` do not admit it.
    #[error("{0}")]
    NotAllowed(String),
}

pub struct Service {
    pub config: ServiceConfig,
    /// `base_url` with a trailing slash, so that joining keeps its path.
    pub base: Url,
    /// The token a call carries, resolved once from the configuration.
    pub token: TokenSource,
    allowed_paths: Option<GlobSet>,
    /// The last DPoP nonce the service sent (RFC 9449 §9), sent up front with the next proof.
    dpop_nonce: std::sync::Mutex<Option<String>>,
}

/// Which token a call to a service carries, as the configuration says. The provider is part
/// of the variants that need one, so that no request path has to ask "which provider?" and
/// cope with "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `token = "none"`: the call carries no `Authorization`.
    None,
    /// courier's own token at `provider` (client credentials).
    Client { provider: String },
    /// The user's token at `provider`: the session's own when the session logged in with
    /// `provider`, else the user's linked account there.
    User { provider: String },
    /// The user's token at `provider`, as for `User`, exchanged there for one made for this
    /// service (RFC 8693).
    Exchange { provider: String },
}

/// The token of one call: the service's `TokenSource` for the session that makes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallToken<'a> {
    /// No `Authorization`.
    None,
    /// courier's own token at `provider` (client credentials).
    Client { provider: &'a str },
    /// The session's own token: the service's provider is the one the session logged in with.
    Session,
    /// The user's linked account at `provider`, connected with `/auth/connect/{service}`.
    Linked { provider: &'a str },
    /// The user's token at `provider` (the session's own when `linked` is false, else the
    /// linked account's) exchanged there for one made for this service (RFC 8693).
    Exchange { provider: &'a str, linked: bool },
}

/// Whether the session user can call a service now, as `GET /api/services` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Connected,
    /// The linked account's grant was refused: connect again.
    ReauthRequired,
    /// No account is linked at the service's provider.
    NotConnected,
}

impl Service {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The DPoP nonce to put in the next proof to this service, if it gave one.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.dpop_nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps the `DPoP-Nonce` a service's answer carried, if any; true when it was one.
    pub fn keep_dpop_nonce(&self, nonce: Option<&str>) -> bool {
        let Some(nonce) = nonce.filter(|n| !n.is_empty() && n.len() <= 512) else {
            return false;
        };
        *self
            .dpop_nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(nonce.to_owned());
        true
    }

    /// The RFC 8707 resource indicator its tokens are restricted to, if any.
    pub fn resource(&self) -> Option<&str> {
        self.config.resource.as_deref()
    }

    /// The resource its connection asks the provider for: a `user` service's (an exchange
    /// names its own at the exchange).
    pub fn connect_resource(&self) -> Option<&str> {
        (self.config.token == TokenMode::User)
            .then_some(self.resource())
            .flatten()
    }

    /// The provider whose user token the service takes (`token = "user"` or `"exchange"`),
    /// `None` for others.
    pub fn user_provider(&self) -> Option<&str> {
        match &self.token {
            TokenSource::User { provider } | TokenSource::Exchange { provider } => Some(provider),
            _ => None,
        }
    }

    /// The token a call carries for a session that logged in with `session_provider`.
    pub fn call_token(&self, session_provider: &str) -> CallToken<'_> {
        match &self.token {
            TokenSource::None => CallToken::None,
            TokenSource::Client { provider } => CallToken::Client { provider },
            TokenSource::User { provider } if provider == session_provider => CallToken::Session,
            TokenSource::User { provider } => CallToken::Linked { provider },
            TokenSource::Exchange { provider } => CallToken::Exchange {
                provider,
                linked: provider != session_provider,
            },
        }
    }

    /// The provider of the linked account the service needs in a session that logged in with
    /// `session_provider`; `None` when it needs none there (no user token, or the session's).
    pub fn linked_provider(&self, session_provider: &str) -> Option<&str> {
        match self.call_token(session_provider) {
            CallToken::Linked { provider }
            | CallToken::Exchange {
                provider,
                linked: true,
            } => Some(provider),
            _ => None,
        }
    }

    pub fn check_method(&self, method: &str) -> Result<(), Refused> {
        let allowed = match &self.config.allowed_methods {
            Some(methods) => methods.iter().any(|m| m == method),
            // Methods are case-sensitive (RFC 9110 §9.1), but a service's server may not be:
            // `trace` or `Connect` must not slip past the rule that keeps TRACE and CONNECT out.
            None => {
                !method.eq_ignore_ascii_case("CONNECT") && !method.eq_ignore_ascii_case("TRACE")
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refused::NotAllowed(format!(
                "{method} is not allowed for service `{}`",
                self.name()
            )))
        }
    }

    /// Maps the raw (still percent-encoded) path after `/api/services/{name}/` onto the
    /// service's URL, refusing anything that could leave `base_url`: dot segments (plain or
    /// encoded, also with path parameters: `..;`, `%2e%2e%3bx`), encoded slashes and
    /// backslashes, backslashes, empty segments, `@`, a scheme, and `?` or `#` (a request's
    /// path never has them; the join would read them as query or fragment). Then checks the
    /// path against `allowed_paths`, with and without path parameters.
    pub fn target(&self, raw_path: &str, query: &str) -> Result<Url, Refused> {
        let hostile = || Refused::BadRequest("the service path is not allowed".into());
        if raw_path
            .chars()
            .any(|c| "\\@?#".contains(c) || c.is_control() || c.is_whitespace())
        {
            return Err(hostile());
        }
        let lower = raw_path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
            return Err(hostile());
        }
        let decoded = percent_decode_str(raw_path)
            .decode_utf8()
            .map_err(|_| hostile())?;
        let decoded_lower = decoded.to_ascii_lowercase();
        // Encoded twice: what a second decoder would see.
        if ["%2e", "%2f", "%5c", "%25"]
            .iter()
            .any(|s| decoded_lower.contains(s))
            || decoded.contains('\\')
            || decoded.chars().any(char::is_control)
        {
            return Err(hostile());
        }
        let segments: Vec<&str> = decoded.split('/').collect();
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            // Tomcat, Jetty and Spring drop a segment's `;parameters` before they resolve dot
            // segments, so `..;x` is `..` to them, and `;x` an empty segment.
            let name = without_parameters(segment);
            if name == "." || name == ".." || (name.is_empty() && i != last) {
                return Err(hostile());
            }
        }
        if segments[0].contains(':') {
            return Err(hostile());
        }

        let mut url = self.base.join(raw_path).map_err(|_| hostile())?;
        let same_origin = url.scheme() == self.base.scheme()
            && url.host() == self.base.host()
            && url.port_or_known_default() == self.base.port_or_known_default();
        if !same_origin || !url.path().starts_with(self.base.path()) {
            return Err(hostile());
        }
        url.set_query((!query.is_empty()).then_some(query));

        if let Some(allowed) = &self.allowed_paths {
            let path = format!("/{decoded}");
            // Both as sent and as a server that drops `;parameters` sees it: `/v1/a;.json`
            // must not pass `/v1/*.json` when the service serves it as `/v1/a`.
            let bare: Vec<&str> = decoded.split('/').map(without_parameters).collect();
            let bare = format!("/{}", bare.join("/"));
            if !allowed.is_match(&path) || !allowed.is_match(&bare) {
                return Err(Refused::NotAllowed(format!(
                    "path {path} is not allowed for service `{}`",
                    self.name()
                )));
            }
        }
        Ok(url)
    }
}

/// A path segment without its `;parameters` (RFC 3986 §3.3), as servers that use them see it.
fn without_parameters(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

pub struct ServiceRegistry {
    services: Vec<Service>,
    by_name: HashMap<String, usize>,
}

impl ServiceRegistry {
    /// Fails on a service whose token needs a provider and names none (the configuration's
    /// validation refuses it first).
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let services: Vec<Service> = config
            .services
            .iter()
            .map(|s| {
                let provider = || {
                    s.provider.clone().ok_or_else(|| {
                        anyhow::anyhow!("services `{}`: token needs a provider", s.name)
                    })
                };
                let token = match s.token {
                    TokenMode::None => TokenSource::None,
                    TokenMode::Client => TokenSource::Client {
                        provider: provider()?,
                    },
                    TokenMode::User => TokenSource::User {
                        provider: provider()?,
                    },
                    TokenMode::Exchange => TokenSource::Exchange {
                        provider: provider()?,
                    },
                };
                let mut base = s.base_url.clone();
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                #[allow(
                    clippy::expect_used,
                    reason = "start-up only; `Config::load` compiled every pattern"
                )]
                let allowed_paths = s.allowed_paths.as_ref().map(|patterns| {
                    let mut set = GlobSetBuilder::new();
                    for p in patterns {
                        set.add(path_glob(p).expect("validated with the configuration"));
                    }
                    set.build().expect("validated globs build")
                });
                Ok(Service {
                    token,
                    config: s.clone(),
                    base,
                    allowed_paths,
                    dpop_nonce: std::sync::Mutex::new(None),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let by_name = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.config.name.clone(), i))
            .collect();
        Ok(ServiceRegistry { services, by_name })
    }

    /// The RFC 8707 resource indicators a login or connection at `provider` asks for: those of
    /// the services that use the user's own token from it, each once.
    pub fn user_resources(&self, provider: &str) -> Vec<String> {
        let mut resources: Vec<String> = Vec::new();
        for s in &self.services {
            if s.config.token == TokenMode::User
                && s.config.provider.as_deref() == Some(provider)
                && let Some(resource) = &s.config.resource
                && !resources.contains(resource)
            {
                resources.push(resource.clone());
            }
        }
        resources
    }

    pub fn get(&self, name: &str) -> Option<&Service> {
        self.by_name.get(name).map(|&i| &self.services[i])
    }

    pub fn all(&self) -> &[Service] {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenMode;

    fn service(base: &str, allowed_paths: Option<Vec<&str>>) -> Service {
        let config = ServiceConfig {
            name: "orders".into(),
            base_url: Url::parse(base).unwrap(),
            provider: Some("main".into()),
            token: TokenMode::User,
            scopes: vec![],
            allowed_methods: None,
            allowed_paths: allowed_paths.map(|p| p.into_iter().map(String::from).collect()),
            timeout_secs: 30,
            retry_buffer_bytes: 1024,
            audience: None,
            resource: None,
            websocket: false,
            stream_idle_timeout_secs: 300,
        };
        let allowed_paths = config.allowed_paths.as_ref().map(|ps| {
            let mut set = GlobSetBuilder::new();
            for p in ps {
                set.add(path_glob(p).unwrap());
            }
            set.build().unwrap()
        });
        Service {
            base: config.base_url.clone(),
            config,
            token: TokenSource::User {
                provider: "main".into(),
            },
            allowed_paths,
            dpop_nonce: std::sync::Mutex::new(None),
        }
    }

    #[test]
    fn a_user_token_is_the_sessions_own_only_in_a_session_of_its_provider() {
        let s = service("http://127.0.0.1:9100/", None);
        assert_eq!(s.call_token("main"), CallToken::Session);
        assert_eq!(s.linked_provider("main"), None);
        assert_eq!(
            s.call_token("other"),
            CallToken::Linked { provider: "main" }
        );
        assert_eq!(s.linked_provider("other"), Some("main"));
    }

    #[test]
    fn an_exchange_takes_the_sessions_token_at_its_provider_and_a_linked_one_elsewhere() {
        let mut s = service("http://127.0.0.1:9100/", None);
        s.token = TokenSource::Exchange {
            provider: "main".into(),
        };
        assert_eq!(
            s.call_token("main"),
            CallToken::Exchange {
                provider: "main",
                linked: false
            }
        );
        assert_eq!(s.linked_provider("main"), None);
        assert_eq!(
            s.call_token("other"),
            CallToken::Exchange {
                provider: "main",
                linked: true
            }
        );
        assert_eq!(s.linked_provider("other"), Some("main"));
        assert_eq!(s.user_provider(), Some("main"));
    }

    #[test]
    fn paths_join_below_the_base_url() {
        let s = service("http://127.0.0.1:9100/api/", None);
        assert_eq!(
            s.target("v1/orders/7", "x=1&y=%20").unwrap().as_str(),
            "http://127.0.0.1:9100/api/v1/orders/7?x=1&y=%20"
        );
        assert_eq!(
            s.target("a%20b/", "").unwrap().as_str(),
            "http://127.0.0.1:9100/api/a%20b/"
        );
        assert_eq!(
            s.target("", "").unwrap().as_str(),
            "http://127.0.0.1:9100/api/"
        );
    }

    #[test]
    fn hostile_paths_never_leave_the_base_url() {
        let s = service("http://127.0.0.1:9100/api/", None);
        for hostile in [
            "..",
            "../secret",
            "v1/../../secret",
            "%2e%2e/secret",
            "%2E%2E/secret",
            ".%2e/secret",
            "v1/%2e%2e%2f%2e%2e/secret",
            "%2fetc/passwd",
            "v1%2F..%2F..%2Fsecret",
            "%252e%252e/secret",
            "..%5csecret",
            "..\\secret",
            "\\\\evil.example/x",
            "/evil.example/x",
            "//evil.example/x",
            "http://evil.example/x",
            "http:%2f%2fevil.example",
            "@evil.example",
            "user@evil.example/x",
            "v1/./x",
            "v1//x",
            "%00",
            "a%0d%0aHost:%20evil",
            "%ff%fe",
            "v1/..;/v2",
            "v1/%2e%2e;/v2",
            "v1/..%3b/v2",
            "v1/.;/x",
            "v1/%2E%2E%3Bjsessionid=x/v2",
            "..;jsessionid=x",
            "v1/;x/y",
        ] {
            assert!(s.target(hostile, "").is_err(), "{hostile} was accepted");
        }
    }

    /// Found by `properties::a_target_never_leaves_the_base_url`: the join read `#` as the
    /// start of a fragment, which the service's URL then kept.
    #[test]
    fn a_question_mark_or_hash_in_the_path_is_refused() {
        let s = service("http://127.0.0.1:9100/api/", None);
        for raw in ["0#", "a?b", "v1/x#y", "?", "#"] {
            assert!(
                matches!(s.target(raw, ""), Err(Refused::BadRequest(_))),
                "{raw} was accepted"
            );
        }
    }

    #[test]
    fn the_default_method_rule_keeps_trace_and_connect_out_in_any_case() {
        let s = service("http://127.0.0.1:9100/", None);
        for method in ["TRACE", "trace", "Trace", "CONNECT", "connect", "cOnNeCt"] {
            assert!(s.check_method(method).is_err(), "{method} was allowed");
        }
        for method in ["GET", "PROPFIND", "get"] {
            assert!(s.check_method(method).is_ok(), "{method} was refused");
        }
    }

    #[test]
    fn allowed_paths_are_globs_over_segments() {
        let s = service("http://127.0.0.1:9100/", Some(vec!["/v1/**", "/health"]));
        assert!(s.target("v1/orders/7", "").is_ok());
        assert!(s.target("health", "").is_ok());
        assert!(matches!(
            s.target("v2/orders", ""),
            Err(Refused::NotAllowed(_))
        ));
        assert!(matches!(
            s.target("healthz", ""),
            Err(Refused::NotAllowed(_))
        ));
    }

    #[test]
    fn allowed_paths_hold_with_and_without_path_parameters() {
        let s = service(
            "http://127.0.0.1:9100/",
            Some(vec!["/v1/**", "/files/*.json"]),
        );
        assert!(s.target("files/a.json", "").is_ok());
        assert!(s.target("v1/cars;color=red/x", "").is_ok());
        for stretched in ["files/a;.json", "files/a;x=.json", "v1;x/y"] {
            assert!(
                matches!(s.target(stretched, ""), Err(Refused::NotAllowed(_))),
                "{stretched} was allowed"
            );
        }
    }

    /// Properties of the path check over generated paths (proptest; every failing case it
    /// ever found is a named test above or below).
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        const BASE: &str = "http://127.0.0.1:9100/api/";

        /// Pieces that path tricks are made of, encoded and not.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "a",
                "v1",
                "x.json",
                ".",
                "..",
                "%2e",
                "%2E",
                "%2e%2e",
                ".%2e",
                ";",
                "%3b",
                "%3B",
                ";x=1",
                "/",
                "//",
                "%2f",
                "%2F",
                "\\",
                "%5c",
                "%25",
                "%252e",
                "@",
                ":",
                "?",
                "#",
                " ",
                "%00",
                "%",
                "%ff",
                "%41",
                "~",
                "*",
                "http:",
                "..;",
                "%2e%2e%3b",
            ])
        }

        fn tricky_path() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..8).prop_map(|pieces| pieces.concat())
        }

        /// What a lenient server makes of a path: percent-decoded, `;parameters` dropped.
        fn lenient_segments(path: &str) -> Vec<String> {
            let decoded = percent_decode_str(path).decode_utf8_lossy().into_owned();
            decoded
                .split('/')
                .map(|s| without_parameters(s).to_owned())
                .collect()
        }

        proptest! {
            #![proptest_config(Config { cases: 1000, ..Config::default() })]

            #[test]
            fn a_target_never_leaves_the_base_url(
                raw in prop_oneof![tricky_path(), any::<String>()],
            ) {
                let s = service(BASE, None);
                let base = Url::parse(BASE).unwrap();
                if let Ok(url) = s.target(&raw, "") {
                    prop_assert_eq!(url.origin(), base.origin());
                    prop_assert!(url.path().starts_with(base.path()), "{}", url);
                    prop_assert!(url.query().is_none() && url.fragment().is_none(), "{}", url);
                    // A server that decodes (even twice) and drops parameters stays below.
                    let below = &url.path()[base.path().len()..];
                    for once in [below.to_owned(),
                        percent_decode_str(below).decode_utf8_lossy().into_owned()] {
                        let segments = lenient_segments(&once);
                        let last = segments.len() - 1;
                        for (i, segment) in segments.iter().enumerate() {
                            prop_assert!(segment != "." && segment != "..", "{}", url);
                            prop_assert!(!segment.is_empty() || i == last, "{}", url);
                            prop_assert!(!segment.contains('\\'), "{}", url);
                        }
                    }
                    // What was sent is what a parser reads back.
                    let reparsed = Url::parse(url.as_str()).unwrap();
                    prop_assert_eq!(reparsed.path(), url.path());
                }
            }

            #[test]
            fn a_dot_segment_in_any_disguise_is_refused(
                before in prop::collection::vec(prop::sample::select(vec!["a", "v1", "b;c"]), 0..3),
                dots in prop::sample::select(vec![".", ".."]),
                encode in any::<[bool; 2]>(),
                upper in any::<bool>(),
                parameters in prop::sample::select(vec!["", ";", ";x=1", "%3b", "%3Bjsessionid=1"]),
                after in prop::collection::vec(prop::sample::select(vec!["a", "v2", "x"]), 0..3),
            ) {
                let dot = if upper { "%2E" } else { "%2e" };
                let disguised: String = dots
                    .chars()
                    .zip(encode)
                    .map(|(c, e)| if e { dot.to_owned() } else { c.to_string() })
                    .collect();
                let mut segments: Vec<String> = before.iter().map(|s| s.to_string()).collect();
                segments.push(format!("{disguised}{parameters}"));
                segments.extend(after.iter().map(|s| s.to_string()));
                let raw = segments.join("/");
                let s = service(BASE, None);
                prop_assert!(
                    matches!(s.target(&raw, ""), Err(Refused::BadRequest(_))),
                    "{} was not refused", raw
                );
            }

            #[test]
            fn allowlist_matching_agrees_with_a_reference(
                patterns in prop::collection::vec(pattern(), 1..3),
                segments in prop::collection::vec(prop::sample::select(vec![
                    "v1", "a", "b", "x.json", "a;.json", "a;b", "v%31", "%61", "x%2Ejson",
                ]), 0..4),
                trailing_slash in any::<bool>(),
            ) {
                let mut raw = segments.join("/");
                if trailing_slash && !raw.is_empty() {
                    raw.push('/');
                }
                let s = service("http://127.0.0.1:9100/", Some(patterns.iter().map(String::as_str).collect()));
                let decoded = percent_decode_str(&raw).decode_utf8().unwrap().into_owned();
                let bare: Vec<&str> = decoded.split('/').map(without_parameters).collect();
                let allowed = |path: &str| patterns.iter().any(|p| reference_match(p, path));
                let expected = allowed(&format!("/{decoded}"))
                    && allowed(&format!("/{}", bare.join("/")));
                match s.target(&raw, "") {
                    Ok(_) => prop_assert!(expected, "{} passed {:?}", raw, patterns),
                    Err(Refused::NotAllowed(_)) => {
                        prop_assert!(!expected, "{} failed {:?}", raw, patterns)
                    }
                    Err(other) => prop_assert!(false, "{} answered {:?}", raw, other.to_string()),
                }
            }
        }

        /// Allowlist patterns: `/`-separated literals, `*` within a segment, `**` as a segment.
        fn pattern() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec!["v1", "a", "x.json", "*", "*.json", "a*", "**"]),
                1..4,
            )
            .prop_filter("no `**` twice in a row", |parts| {
                !parts.windows(2).any(|w| w[0] == "**" && w[1] == "**")
            })
            .prop_map(|parts| format!("/{}", parts.join("/")))
        }

        /// A plain reading of the glob rules: `*` is any run of characters but `/`; a `/**/`
        /// segment is `/` and then any number of whole segments; a final `/**` is `/` and
        /// then anything.
        fn reference_match(pattern: &str, path: &str) -> bool {
            #[derive(Clone, Copy)]
            enum Token {
                Char(char),
                Star,
                Rest,
                Segments,
            }
            let mut tokens = Vec::new();
            let mut rest = pattern;
            while !rest.is_empty() {
                if let Some(tail) = rest.strip_prefix("/**/") {
                    tokens.extend([Token::Char('/'), Token::Segments]);
                    rest = tail;
                } else if rest == "/**" {
                    tokens.extend([Token::Char('/'), Token::Rest]);
                    rest = "";
                } else if let Some(tail) = rest.strip_prefix('*') {
                    tokens.push(Token::Star);
                    rest = tail;
                } else {
                    let c = rest.chars().next().unwrap();
                    tokens.push(Token::Char(c));
                    rest = &rest[c.len_utf8()..];
                }
            }
            fn matches(tokens: &[Token], path: &str) -> bool {
                let Some((first, more)) = tokens.split_first() else {
                    return path.is_empty();
                };
                let splits = (0..=path.len()).filter(|&i| path.is_char_boundary(i));
                match first {
                    Token::Char(c) => path
                        .strip_prefix(*c)
                        .is_some_and(|tail| matches(more, tail)),
                    Token::Star => splits
                        .take_while(|&i| !path[..i].contains('/'))
                        .any(|i| matches(more, &path[i..])),
                    Token::Rest => splits.into_iter().any(|i| matches(more, &path[i..])),
                    Token::Segments => splits
                        .filter(|&i| i == 0 || path[..i].ends_with('/'))
                        .any(|i| matches(more, &path[i..])),
                }
            }
            matches(&tokens, path)
        }
    }
}
