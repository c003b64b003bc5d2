//! Checks a parsed configuration: what cannot work or is unsafe is refused with the key that
//! has to change (`serve` and `check-config` both load through here).

use std::collections::HashSet;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;
use url::Url;

use super::*;
use crate::crypto::KeyRing;

impl Config {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));

        if self.server.listen.parse::<SocketAddr>().is_err() {
            return fail("server.listen", "must be an address like 127.0.0.1:8080");
        }
        check_base_url(&self.server.public_url, "server.public_url")?;
        if self.server.public_url.path() != "/" {
            return fail(
                "server.public_url",
                "must be an origin without a path (courier serves at the root)",
            );
        }
        if !self.server.post_logout_redirect.starts_with('/')
            && Url::parse(&self.server.post_logout_redirect).is_err()
        {
            return fail(
                "server.post_logout_redirect",
                "must be a path starting with / or an absolute URL",
            );
        }
        if self.database.max_connections == 0 {
            return fail("database.max_connections", "must be at least 1");
        }
        let name = &self.session.cookie_name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return fail(
                "session.cookie_name",
                "must be a cookie name of letters, digits, '-', '_' and '.'",
            );
        }
        if self.session.idle_timeout_secs == 0 {
            return fail("session.idle_timeout_secs", "must be at least 1");
        }
        if self.session.absolute_timeout_secs < self.session.idle_timeout_secs {
            return fail(
                "session.idle_timeout_secs",
                "must not be longer than session.absolute_timeout_secs",
            );
        }
        KeyRing::from_config(&self.security.encryption_keys)
            .map_err(|(i, m)| (format!("security.encryption_keys[{i}]"), m))?;
        self.refuse_unsafe()?;

        if self.server.max_header_bytes < 1024 || self.server.max_cookies == 0 {
            return fail(
                "server.max_header_bytes",
                "limits must allow at least 1024 header bytes and one cookie",
            );
        }
        if self.server.body_timeout_secs == 0 {
            return fail("server.body_timeout_secs", "must be at least 1");
        }
        if self.server.max_live_connections == 0 {
            return fail("server.max_live_connections", "must be at least 1");
        }
        if self.session.max_live_connections == 0 {
            return fail("session.max_live_connections", "must be at least 1");
        }
        if !(1024..=MAX_WEBSOCKET_MESSAGE).contains(&self.server.websocket_max_message_bytes) {
            return fail(
                "server.websocket_max_message_bytes",
                "must be between 1024 and 67108864 (64 MiB)",
            );
        }
        if self.rate_limit.requests_per_minute == 0 || self.rate_limit.burst == 0 {
            return fail(
                "rate_limit",
                "requests_per_minute and burst must be at least 1",
            );
        }
        for (i, proxy) in self.rate_limit.trusted_proxies.iter().enumerate() {
            if parse_net(proxy).is_none() {
                return fail(
                    &format!("rate_limit.trusted_proxies[{i}]"),
                    "must be an IP address or a CIDR range",
                );
            }
        }

        self.validate_providers()?;
        self.validate_services()
    }

    /// Settings that parse but cannot work or are unsafe (the SPEC's "Command line" list).
    /// `serve` and `check-config` both refuse them, as both load the file through here.
    pub(super) fn refuse_unsafe(&self) -> Result<(), (String, String)> {
        let public_url = &self.server.public_url;
        if public_url.scheme() == "http" && !is_loopback(public_url) {
            return Err((
                "server.public_url".into(),
                "must be https:// unless it is a loopback address: the session cookie is \
                 `Secure` and tokens pass through this origin"
                    .into(),
            ));
        }
        if let Some(dir) = &self.server.static_dir
            && !dir.is_dir()
        {
            return Err((
                "server.static_dir".into(),
                format!("`{}` is not a directory", dir.display()),
            ));
        }
        if self.database.url.expose_secret().trim().is_empty() {
            return Err(("database.url".into(), "must not be empty".into()));
        }
        for (i, key) in self.security.encryption_keys.iter().enumerate() {
            // Decodes (checked by the key ring above); a key of one repeated byte (all zeros,
            // say) is a placeholder, not a random key.
            let bytes = STANDARD
                .decode(key.expose_secret().trim())
                .unwrap_or_default();
            if bytes.windows(2).all(|w| w[0] == w[1]) {
                return Err((
                    format!("security.encryption_keys[{i}]"),
                    "is not a random key (every byte is the same); make one with \
                     `courier gen-key`"
                        .into(),
                ));
            }
        }
        for (i, p) in self.providers.iter().enumerate() {
            if let Some(secret) = &p.client_secret
                && secret.expose_secret().trim().is_empty()
            {
                return Err((
                    entry_key("providers", i, &p.id, "client_secret"),
                    "is empty (an unset or empty `${VAR}`?); leave the key out for a \
                     client without a secret"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Applies the FAPI 2.0 profile to each provider under it (its own `profile`, else
    /// `[security] profile`): PAR becomes required and DPoP on, and what cannot meet the
    /// profile is refused with the key that has to change. A provider that cannot meet it
    /// (GitHub-style plain OAuth 2.0) sets `profile = "none"`.
    pub(super) fn apply_profiles(&mut self) -> Result<(), (String, String)> {
        let default = self.security.profile.unwrap_or(Profile::None);
        for (i, p) in self.providers.iter_mut().enumerate() {
            if p.profile.unwrap_or(default) != Profile::Fapi2 {
                continue;
            }
            let key = |field: &str| entry_key("providers", i, &p.id, field);
            let why = if p.profile.is_some() {
                "profile = \"fapi2\""
            } else {
                "[security] profile = \"fapi2\""
            };
            if p.issuer.is_none() {
                return Err((
                    key("profile"),
                    format!(
                        "{why} needs an OpenID Connect provider (`issuer`); give this one \
                         profile = \"none\""
                    ),
                ));
            }
            if p.client_secret.is_some() {
                return Err((
                    key("client_secret"),
                    format!(
                        "must not be set under {why}: the client authenticates with private_key_jwt (client_key)"
                    ),
                ));
            }
            if p.client_keys.is_empty() {
                return Err((
                    key("client_key"),
                    format!("is required under {why} (private_key_jwt client authentication)"),
                ));
            }
            if p.client_auth(true) != ClientAuth::PrivateKeyJwt {
                return Err((
                    key("client_auth"),
                    format!("must be \"private_key_jwt\" under {why}"),
                ));
            }
            if matches!(p.par, Some(ParMode::Off)) {
                return Err((
                    key("par"),
                    format!(
                        "cannot be \"off\" under {why}: pushed authorization requests are required"
                    ),
                ));
            }
            p.par = Some(ParMode::Required);
            p.dpop = true;
            p.fapi2 = true;
        }
        Ok(())
    }

    /// Reads each provider's `client_key` (PEM text, a path to a PEM file, or an array of
    /// them) into `client_keys`, and checks that it goes with `client_auth`. A relative path is
    /// taken from the working directory, as `static_dir` is.
    pub(super) fn read_client_keys(&mut self) -> Result<(), (String, String)> {
        for (i, p) in self.providers.iter_mut().enumerate() {
            let base = entry_key("providers", i, &p.id, "client_key");
            let entries: Vec<(String, &toml::Value)> = match &p.client_key {
                None => Vec::new(),
                Some(toml::Value::Array(values)) if values.is_empty() => {
                    return Err((base, "must name at least one key".into()));
                }
                Some(toml::Value::Array(values)) => values
                    .iter()
                    .enumerate()
                    .map(|(j, v)| {
                        (
                            entry_key("providers", i, &p.id, &format!("client_key[{j}]")),
                            v,
                        )
                    })
                    .collect(),
                Some(value) => vec![(base.clone(), value)],
            };
            let mut keys = Vec::new();
            for (key, value) in entries {
                let Some(text) = value.as_str() else {
                    return Err((key, "must be a PEM private key or a path to one".into()));
                };
                let pem = if text.contains("-----BEGIN") {
                    text.to_owned()
                } else {
                    std::fs::read_to_string(text.trim())
                        .map_err(|e| (key.clone(), format!("cannot read `{}`: {e}", text.trim())))?
                };
                keys.push(ClientKey::from_pem(&pem).map_err(|m| (key, m))?);
            }
            p.client_keys = keys;
            let key = |field: &str| entry_key("providers", i, &p.id, field);
            match p.client_auth {
                Some(ClientAuth::PrivateKeyJwt) if p.client_keys.is_empty() => {
                    return Err((
                        key("client_auth"),
                        "is \"private_key_jwt\", which needs `client_key` (a PEM private key \
                         or a path to one)"
                            .into(),
                    ));
                }
                Some(ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost)
                    if !p.client_keys.is_empty() =>
                {
                    return Err((
                        key("client_key"),
                        "is only used with client_auth = \"private_key_jwt\"".into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn validate_providers(&self) -> Result<(), (String, String)> {
        if self.providers.is_empty() {
            return Err(("providers".into(), "at least one provider is needed".into()));
        }
        let mut ids = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let key = |field: &str| entry_key("providers", i, &p.id, field);
            if let Some(alg) = p.id_token_signed_response_alg {
                check_id_token_alg(p, alg).map_err(|m| (key("id_token_signed_response_alg"), m))?;
            }
            if !is_identifier(&p.id) {
                return Err((
                    key("id"),
                    "must be lowercase letters, digits, '-' or '_'".into(),
                ));
            }
            if !ids.insert(p.id.as_str()) {
                return Err((key("id"), format!("`{}` is used twice", p.id)));
            }
            match (&p.issuer, &p.authorization_endpoint, &p.token_endpoint) {
                (Some(issuer), None, None) => {
                    check_base_url(issuer, &key("issuer"))?;
                    // Discovery appends this itself: given here, every fetch would miss.
                    if issuer.path().contains("/.well-known/") {
                        return Err((
                            key("issuer"),
                            "is a discovery URL; give the issuer itself (the part before \
                             `/.well-known/`)"
                                .into(),
                        ));
                    }
                }
                (None, Some(auth), Some(token)) => {
                    check_base_url(auth, &key("authorization_endpoint"))?;
                    check_base_url(token, &key("token_endpoint"))?;
                }
                (Some(_), _, _) => {
                    return Err((
                        key("issuer"),
                        "give either `issuer` (discovery) or explicit endpoints, not both".into(),
                    ));
                }
                _ => {
                    return Err((
                        key("issuer"),
                        "give `issuer`, or both `authorization_endpoint` and `token_endpoint`"
                            .into(),
                    ));
                }
            }
            if let Some(url) = &p.userinfo_endpoint {
                if p.issuer.is_some() {
                    return Err((
                        key("userinfo_endpoint"),
                        "comes from discovery when `issuer` is set".into(),
                    ));
                }
                check_base_url(url, &key("userinfo_endpoint"))?;
            }
            // Allowed with `issuer` too: some providers (django-oauth-toolkit) leave the
            // revocation endpoint out of their OpenID discovery document.
            if let Some(url) = &p.revocation_endpoint {
                check_base_url(url, &key("revocation_endpoint"))?;
            }
            if p.client_id.is_empty() {
                return Err((key("client_id"), "must not be empty".into()));
            }
            if let Some((k, _)) = p
                .authorize_params
                .iter()
                .find(|(k, _)| RESERVED_AUTHORIZE_PARAMS.contains(&k.as_str()))
            {
                return Err((
                    key("authorize_params"),
                    format!("`{k}` is set by courier and cannot be overridden"),
                ));
            }
            if p.login && p.issuer.is_none() {
                return Err((
                    key("login"),
                    "a login provider must speak OpenID Connect (set `issuer`)".into(),
                ));
            }
        }
        if self.providers.iter().any(|p| p.login) {
            Ok(())
        } else {
            Err((
                "providers".into(),
                "at least one provider must have login = true; none has".into(),
            ))
        }
    }

    pub(super) fn validate_services(&self) -> Result<(), (String, String)> {
        let mut names = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = |field: &str| entry_key("services", i, &s.name, field);
            if !is_identifier(&s.name) {
                return Err((
                    key("name"),
                    "must be lowercase letters, digits, '-' or '_'".into(),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err((key("name"), format!("`{}` is used twice", s.name)));
            }
            check_base_url(&s.base_url, &key("base_url"))?;
            match (&s.provider, s.token) {
                (Some(p), _) if !self.providers.iter().any(|q| &q.id == p) => {
                    return Err((key("provider"), format!("no provider has id `{p}`")));
                }
                (None, TokenMode::User | TokenMode::Client | TokenMode::Exchange) => {
                    return Err((
                        key("provider"),
                        "is required unless token = \"none\"".into(),
                    ));
                }
                _ => {}
            }
            if let Some(methods) = &s.allowed_methods {
                for (j, m) in methods.iter().enumerate() {
                    let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                    if !valid || m == "CONNECT" || m == "TRACE" {
                        return Err((
                            entry_key("services", i, &s.name, &format!("allowed_methods[{j}]")),
                            "must be an uppercase HTTP method other than CONNECT and TRACE".into(),
                        ));
                    }
                }
            }
            if let Some(paths) = &s.allowed_paths {
                for (j, p) in paths.iter().enumerate() {
                    let key = entry_key("services", i, &s.name, &format!("allowed_paths[{j}]"));
                    if !p.starts_with('/') {
                        return Err((key, "must start with /".into()));
                    }
                    if let Err(e) = path_glob(p) {
                        return Err((key, format!("is not a valid glob: {e}")));
                    }
                }
            }
            if s.timeout_secs == 0 {
                return Err((key("timeout_secs"), "must be at least 1".into()));
            }
            if s.stream_idle_timeout_secs == 0 {
                return Err((key("stream_idle_timeout_secs"), "must be at least 1".into()));
            }
            if s.token == TokenMode::Exchange && s.audience.is_none() && s.resource.is_none() {
                return Err((
                    key("token"),
                    "\"exchange\" needs `audience` or `resource`: the token to exchange for".into(),
                ));
            }
            if let Some(resource) = &s.resource {
                // RFC 8707 §2: an absolute URI without a fragment.
                let valid = Url::parse(resource).is_ok_and(|u| u.fragment().is_none());
                if !valid {
                    return Err((
                        key("resource"),
                        "must be an absolute URI without a fragment (RFC 8707)".into(),
                    ));
                }
                if s.token == TokenMode::None {
                    return Err((
                        key("resource"),
                        "needs a token: a service with token = \"none\" gets none to restrict"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where a provider's `id_token_signed_response_alg` cannot hold: `none` for a provider
/// without ID tokens, off TLS (off loopback), or under FAPI 2.0; anything but PS256 and ES256
/// under FAPI 2.0.
pub(super) fn check_id_token_alg(p: &ProviderConfig, alg: IdTokenAlg) -> Result<(), String> {
    if p.fapi2 && !matches!(alg, IdTokenAlg::Ps256 | IdTokenAlg::Es256) {
        return Err("must be PS256 or ES256 under the FAPI 2.0 profile".into());
    }
    if alg != IdTokenAlg::None {
        return Ok(());
    }
    // The token endpoint is the issuer's (its metadata's), or the configured one.
    let Some(endpoint) = p.issuer.as_ref().or(p.token_endpoint.as_ref()) else {
        return Err("needs an issuer or a token endpoint".into());
    };
    if p.issuer.is_none() {
        return Err("applies to OpenID Connect providers (`issuer`) only".into());
    }
    if endpoint.scheme() != "https" && !is_loopback(endpoint) {
        return Err(
            "\"none\" (unsigned ID tokens) needs a provider reached over https, or on loopback: \
             the token endpoint's TLS is then what vouches for the ID token"
                .into(),
        );
    }
    Ok(())
}

/// The key of `field` in the `i`th entry of the array of tables `table`, followed by the
/// entry's own name (a provider's `id`, a service's `name`), so that an error points at it
/// both ways: `providers[1].client_secret (provider "github")`.
pub(super) fn entry_key(table: &str, i: usize, name: &str, field: &str) -> String {
    let kind = table.strip_suffix('s').unwrap_or(table);
    if name.is_empty() {
        format!("{table}[{i}].{field}")
    } else {
        format!("{table}[{i}].{field} ({kind} \"{name}\")")
    }
}

/// Parameters courier sets itself on every authorization request.
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    // From the services' `resource` (RFC 8707).
    "resource",
];

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_base_url(url: &Url, key: &str) -> Result<(), (String, String)> {
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err((key.to_owned(), "must be an http or https URL".into()));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err((
            key.to_owned(),
            "must not have a query, a fragment or credentials".into(),
        ));
    }
    Ok(())
}
