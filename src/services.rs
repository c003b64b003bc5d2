//! The configured dependent services and the rules a proxied call must pass: which methods and
//! paths are allowed, and how a request path maps onto `base_url` without escaping it.

use std::collections::HashMap;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use percent_encoding::percent_decode_str;
use url::Url;

use crate::config::{Config, ServiceConfig, TokenMode};
use crate::error::ApiError;

/// A glob over paths: `*` stays within a segment, `**` crosses segments.
pub fn path_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

pub struct Service {
    pub config: ServiceConfig,
    /// `base_url` with a trailing slash, so that joining keeps its path.
    pub base: Url,
    /// Whether the service needs a linked account (a provider other than the login one).
    pub linked: bool,
    allowed_paths: Option<GlobSet>,
}

impl Service {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn check_method(&self, method: &str) -> Result<(), ApiError> {
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
            Err(ApiError::NotAllowed(format!(
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
    pub fn target(&self, raw_path: &str, query: &str) -> Result<Url, ApiError> {
        let hostile = || ApiError::BadRequest("the service path is not allowed".into());
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
                return Err(ApiError::NotAllowed(format!(
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
    pub fn new(config: &Config) -> Self {
        let login = &config.login_provider().id;
        let services: Vec<Service> = config
            .services
            .iter()
            .map(|s| {
                let mut base = s.base_url.clone();
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                let allowed_paths = s.allowed_paths.as_ref().map(|patterns| {
                    let mut set = GlobSetBuilder::new();
                    for p in patterns {
                        set.add(path_glob(p).expect("validated with the configuration"));
                    }
                    set.build().expect("validated globs build")
                });
                Service {
                    linked: s.token == TokenMode::User
                        && s.provider.as_deref().is_some_and(|p| p != login),
                    config: s.clone(),
                    base,
                    allowed_paths,
                }
            })
            .collect();
        let by_name = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.config.name.clone(), i))
            .collect();
        ServiceRegistry { services, by_name }
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
            linked: false,
            allowed_paths,
        }
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
                matches!(s.target(raw, ""), Err(ApiError::BadRequest(_))),
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
            Err(ApiError::NotAllowed(_))
        ));
        assert!(matches!(
            s.target("healthz", ""),
            Err(ApiError::NotAllowed(_))
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
                matches!(s.target(stretched, ""), Err(ApiError::NotAllowed(_))),
                "{stretched} was allowed"
            );
        }
    }
}
