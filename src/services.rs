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
            None => method != "CONNECT" && method != "TRACE",
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
    /// encoded), encoded slashes and backslashes, backslashes, empty segments, `@`, a scheme.
    /// Then checks the path against `allowed_paths`.
    pub fn target(&self, raw_path: &str, query: &str) -> Result<Url, ApiError> {
        let hostile = || ApiError::BadRequest("the service path is not allowed".into());
        if raw_path
            .chars()
            .any(|c| c == '\\' || c == '@' || c.is_control() || c.is_whitespace())
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
            if *segment == "." || *segment == ".." || (segment.is_empty() && i != last) {
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
            if !allowed.is_match(&path) {
                return Err(ApiError::NotAllowed(format!(
                    "path {path} is not allowed for service `{}`",
                    self.name()
                )));
            }
        }
        Ok(url)
    }
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
        ] {
            assert!(s.target(hostile, "").is_err(), "{hostile} was accepted");
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
}
