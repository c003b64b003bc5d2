//! The authorization-code flow with PKCE: starting a login (authorization URL plus the pending
//! login the browser keeps in a sealed cookie, `pending`, with the options `login_options`
//! reads) and completing it (code exchange, ID token checks, userinfo).

use chrono::{DateTime, Duration, Utc};
use openidconnect::OAuth2TokenResponse;
use openidconnect::core::CoreAuthenticationFlow;
use openidconnect::{
    AuthorizationCode, CsrfToken, Nonce, PkceCodeChallenge, PkceCodeVerifier, RequestTokenError,
    Scope, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use url::Url;

use crate::crypto::random_token;
use crate::domain::tokens::TokenSet;
use crate::dpop::DpopKey;
use crate::oidc::grants::{self, UnreadableResponse};
use crate::oidc::http::{HttpError, ProviderHttp, read_limited};
use crate::oidc::id_token::{self, IdTokenError};
use crate::oidc::registry::Provider;
use openidconnect::{AsyncHttpClient, HttpRequest as OidcRequest, HttpResponse as OidcResponse};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use crate::oidc::login_options::{InvalidLoginOption, LoginOptions, Prompt};
pub use crate::oidc::pending::{
    MAX_PENDING_LOGINS, PENDING_LOGIN_TTL, PendingLogin, Purpose, evict_oldest, find_pending,
    pending_cookie, removal_cookie,
};

/// The provider's answers to a silent login that mean "the user must interact": they send
/// the browser back to where it was, with `login_error`, so that the SPA shows its sign-in.
pub const SILENT_LOGIN_ERRORS: &[&str] = &[
    "login_required",
    "interaction_required",
    "consent_required",
    "account_selection_required",
];

/// The provider's `error` as the browser is told it (`login_error`, `connect_error`): a
/// registered OAuth error code as it is, anything else `provider_error`. The value goes into a
/// URL the SPA reads, so arbitrary text is not passed on.
pub fn provider_error_code(error: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "access_denied",
        "login_required",
        "consent_required",
        "interaction_required",
        "account_selection_required",
        "unmet_authentication_requirements",
        "invalid_request",
        "invalid_scope",
        "unauthorized_client",
        "unsupported_response_type",
        "server_error",
        "temporarily_unavailable",
    ];
    KNOWN
        .iter()
        .find(|known| **known == error)
        .copied()
        .unwrap_or("provider_error")
}

/// The `claims` authorization parameter (OpenID Connect Core §5.5) that asks for `auth_time`
/// in the ID token: without it most providers omit it, and a session would not know how old
/// its authentication is.
const CLAIMS_AUTH_TIME: &str = r#"{"id_token":{"auth_time":{"essential":true}}}"#;

/// Starts a login or a connection at `provider`, asking for `scopes` (plus `openid`, which
/// OpenID Connect providers always get) with the provider's `authorize_params`, `options`
/// replacing those it names, and, with RFC 8707 resource indicators, for tokens usable at
/// `resources`: returns the authorization URL and the pending login. An OpenID Connect provider
/// that supports the `claims` parameter is asked for `auth_time` as an essential claim, unless
/// its `authorize_params` set `claims` themselves. `None` when the provider's metadata is not
/// loaded yet.
pub fn start(
    provider: &Provider,
    scopes: &[String],
    resources: &[String],
    purpose: Purpose,
    options: &LoginOptions,
    return_to: String,
    now: DateTime<Utc>,
) -> Option<(Url, PendingLogin)> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = random_token();
    let scopes = scopes
        .iter()
        .filter(|s| *s != "openid")
        .map(|s| Scope::new(s.clone()));
    let requested = options.params();
    // The `max_age` sent, whether the request or the configuration set it: what comes back is
    // checked against it.
    let max_age = options.max_age.or_else(|| {
        provider
            .config
            .authorize_params
            .get("max_age")
            .and_then(|age| age.parse().ok())
    });
    let extra: Vec<(String, String)> = provider
        .config
        .authorize_params
        .iter()
        .filter(|(name, _)| !requested.iter().any(|(r, _)| r == name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .chain(requested.iter().map(|(n, v)| ((*n).to_owned(), v.clone())))
        // `resource` once per indicator.
        .chain(resources.iter().map(|r| ("resource".to_owned(), r.clone())))
        .collect();
    let extra = extra.into_iter();
    let (url, nonce) = if let Some(client) = provider.plain_client() {
        let state = state.clone();
        let mut request = client
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(scopes)
            .set_pkce_challenge(challenge);
        for (name, value) in extra {
            request = request.add_extra_param(name, value);
        }
        (request.url().0, None)
    } else {
        let metadata = provider.metadata()?;
        let client = provider.client(&metadata);
        let nonce = random_token();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                {
                    let state = state.clone();
                    move || CsrfToken::new(state)
                },
                {
                    let nonce = nonce.clone();
                    move || Nonce::new(nonce)
                },
            )
            .add_scopes(scopes)
            .set_pkce_challenge(challenge);
        for (name, value) in extra {
            request = request.add_extra_param(name, value);
        }
        let claims_supported = metadata.claims_parameter_supported() == Some(true);
        if claims_supported && !provider.config.authorize_params.contains_key("claims") {
            request = request.add_extra_param("claims", CLAIMS_AUTH_TIME);
        }
        (request.url().0, Some(nonce))
    };
    let pending = PendingLogin {
        provider: provider.id().to_owned(),
        state,
        nonce,
        pkce_verifier: verifier.secret().clone(),
        return_to,
        started_at: now,
        purpose,
        silent: options.is_silent(),
        max_age,
    };
    Some((url, pending))
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the provider could not be reached: {0}")]
    ProviderUnavailable(String),
    #[error("the code exchange failed: {0}")]
    Exchange(String),
    #[error("the token response has no ID token")]
    MissingIdToken,
    #[error(transparent)]
    IdToken(#[from] IdTokenError),
    /// The token response carried an ID token openidconnect cannot read (a required claim
    /// missing, say): the sentence names what is wrong, never a claim's value.
    #[error("the ID token {0}")]
    MalformedIdToken(String),
    #[error("the userinfo response is unusable: {0}")]
    Userinfo(String),
    /// The login asked for an authentication at most `max_age` old, and the ID token does not
    /// show one (OpenID Connect Core §3.1.2.1: with `max_age`, `auth_time` is required).
    #[error("the authentication does not meet the request: {0}")]
    UnmetAuthenticationRequirements(&'static str),
}

impl LoginError {
    /// The `login_error` code the browser is sent back with.
    pub fn code(&self) -> &'static str {
        match self {
            LoginError::ProviderUnavailable(_) => "provider_unavailable",
            LoginError::Exchange(_) => "token_exchange_failed",
            LoginError::MissingIdToken
            | LoginError::IdToken(_)
            | LoginError::MalformedIdToken(_) => "invalid_id_token",
            LoginError::Userinfo(_) => "invalid_userinfo",
            LoginError::UnmetAuthenticationRequirements(_) => "unmet_authentication_requirements",
        }
    }
}

/// A login the provider vouched for.
#[derive(Debug)]
pub struct CompletedLogin {
    pub subject: String,
    pub sid: Option<String>,
    pub claims: Map<String, Value>,
    pub tokens: TokenSet,
    /// The DPoP key the tokens are bound to (providers with `dpop = true`): made for this
    /// login, stored with its tokens.
    pub dpop_key: Option<Arc<DpopKey>>,
}

/// A new DPoP key for a login or connection at `provider`, when it uses DPoP.
fn new_dpop_key(provider: &Provider) -> Result<Option<Arc<DpopKey>>, LoginError> {
    if !provider.config.dpop {
        return Ok(None);
    }
    DpopKey::generate()
        .map(|k| Some(Arc::new(k)))
        .map_err(|e| LoginError::Exchange(e.to_string()))
}

/// The key the tokens are bound to: `None` when the provider answered a DPoP request with a
/// bearer token (it does not do DPoP; its tokens are then used as bearer tokens).
fn bound_key(
    provider: &Provider,
    key: Option<Arc<DpopKey>>,
    token_type: &str,
) -> Option<Arc<DpopKey>> {
    let key = key?;
    if token_type.eq_ignore_ascii_case("dpop") {
        return Some(key);
    }
    tracing::warn!(
        provider = %provider.id(),
        "the provider answered a DPoP request with a bearer token; its tokens are used as bearer tokens"
    );
    None
}

/// openidconnect's HTTP client for a code exchange at a provider that binds tokens with DPoP
/// (RFC 9449 §5): each request carries a proof with the provider's last nonce, and a
/// `use_dpop_nonce` answer is sent again once with the nonce it brought.
struct DpopHttp<'a> {
    http: &'a ProviderHttp,
    key: &'a DpopKey,
    provider: &'a Provider,
}

impl<'c> AsyncHttpClient<'c> for DpopHttp<'_> {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<OidcResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: OidcRequest) -> Self::Future {
        Box::pin(async move {
            let url = Url::parse(&request.uri().to_string())
                .map_err(|e| HttpError::Malformed(e.to_string()))?;
            let mut retried = false;
            loop {
                let proof = self
                    .key
                    .proof(
                        request.method().as_str(),
                        &url,
                        None,
                        self.provider.dpop_nonce().as_deref(),
                        chrono::Utc::now().timestamp(),
                    )
                    .map_err(|e| HttpError::Malformed(e.to_string()))?;
                let mut builder = openidconnect::http::Request::builder()
                    .method(request.method().clone())
                    .uri(request.uri().clone());
                for (name, value) in request.headers() {
                    builder = builder.header(name, value);
                }
                let copy = builder
                    .header("dpop", proof)
                    .body(request.body().clone())
                    .map_err(|e| HttpError::Malformed(e.to_string()))?;
                let response = self.http.call(copy).await?;
                let new_nonce = self.provider.keep_dpop_nonce(response.headers());
                let asks_for_nonce = serde_json::from_slice::<Value>(response.body())
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                    .is_some_and(|e| e == "use_dpop_nonce");
                if new_nonce && asks_for_nonce && !retried {
                    retried = true;
                    continue;
                }
                return Ok(response);
            }
        })
    }
}

fn exchange_error<T: openidconnect::ErrorResponseType + std::fmt::Display>(
    e: RequestTokenError<crate::oidc::http::HttpError, openidconnect::StandardErrorResponse<T>>,
) -> LoginError {
    match e {
        RequestTokenError::Request(e) if e.is_unreachable() => {
            LoginError::ProviderUnavailable(e.to_string())
        }
        // The provider answered: what it sent is at fault, not its availability.
        RequestTokenError::Parse(error, body) => match grants::unreadable(error.path(), &body) {
            UnreadableResponse::IdToken(defect) => LoginError::MalformedIdToken(defect),
            UnreadableResponse::Response(detail) => LoginError::Exchange(detail),
        },
        other => LoginError::Exchange(grants::classify(other).to_string()),
    }
}

/// The `private_key_jwt` assertion for a code exchange (none under other methods):
/// openidconnect/oauth2 send only `client_id` then, and these beside it.
fn client_assertion(provider: &Provider) -> Result<Vec<(&'static str, String)>, LoginError> {
    crate::oidc::client_auth::assertion_params(provider)
        .map_err(|e| LoginError::Exchange(e.to_string()))
}

/// Exchanges the code, checks the ID token and merges userinfo.
pub async fn complete(
    provider: &Provider,
    http: &ProviderHttp,
    pending: PendingLogin,
    code: String,
    now: DateTime<Utc>,
) -> Result<CompletedLogin, LoginError> {
    let metadata = provider
        .metadata()
        .ok_or_else(|| LoginError::ProviderUnavailable("metadata not loaded".into()))?;
    let client = provider.client(&metadata);
    let dpop_key = new_dpop_key(provider)?;
    let mut request = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| LoginError::Exchange(e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier));
    for (name, value) in client_assertion(provider)? {
        request = request.add_extra_param(name, value);
    }
    let response = match &dpop_key {
        Some(key) => {
            request
                .request_async(&DpopHttp {
                    http,
                    key,
                    provider,
                })
                .await
        }
        None => request.request_async(http).await,
    }
    .map_err(exchange_error)?;

    let id_token = response.id_token().ok_or(LoginError::MissingIdToken)?;
    let nonce = pending
        .nonce
        .map(Nonce::new)
        .ok_or(LoginError::MissingIdToken)?;
    let verified = id_token::verify(provider, http, id_token, Some(&nonce), now).await?;
    if let Some(max_age) = pending.max_age {
        check_max_age(&verified.claims, max_age, now)?;
    }

    let dpop_key = bound_key(provider, dpop_key, response.token_type().as_ref());
    let tokens = grants::token_set(
        &response,
        Some(SecretString::from(id_token.to_string())),
        None,
        &provider.config.scopes,
        now,
    );
    let mut claims = verified.claims;
    if let Some(endpoint) = provider.userinfo_endpoint() {
        let answer = fetch_userinfo(
            http,
            provider,
            &endpoint,
            &tokens.access_token,
            dpop_key.as_deref(),
        )
        .await?;
        match answer {
            Userinfo::Claims(userinfo) => {
                if userinfo.get("sub").and_then(Value::as_str) != Some(verified.subject.as_str()) {
                    return Err(LoginError::Userinfo(
                        "its `sub` differs from the ID token's".into(),
                    ));
                }
                merge_userinfo(&mut claims, userinfo);
            }
            Userinfo::Refused(status) => tracing::warn!(
                provider = %provider.id(),
                %status,
                "userinfo refused the login's access token (one made for another resource?); \
                 the ID token's claims are used"
            ),
        }
    }
    Ok(CompletedLogin {
        subject: verified.subject,
        sid: verified.sid,
        claims,
        tokens,
        dpop_key,
    })
}

/// A login sent with `max_age` must come back with an `auth_time` at most that old (plus clock
/// skew): else the provider let an older authentication through, as a silent single sign-on
/// would, and the session must not count as freshly authenticated.
fn check_max_age(
    claims: &Map<String, Value>,
    max_age: u32,
    now: DateTime<Utc>,
) -> Result<(), LoginError> {
    let auth_time =
        id_token::auth_time(claims).ok_or(LoginError::UnmetAuthenticationRequirements(
            "max_age was sent, and the ID token has no auth_time",
        ))?;
    if now - auth_time > Duration::seconds(i64::from(max_age)) + id_token::CLOCK_SKEW {
        return Err(LoginError::UnmetAuthenticationRequirements(
            "the ID token's auth_time is older than max_age",
        ));
    }
    Ok(())
}

/// Completes a connection: exchanges the code and finds who the account is — the ID token's
/// subject at an OpenID Connect provider, else userinfo's `sub` or `id`. A provider without
/// either names no subject: the account is then recorded as `user:<courier user id>`.
pub async fn complete_connect(
    provider: &Provider,
    http: &ProviderHttp,
    pending: PendingLogin,
    code: String,
    requested_scopes: &[String],
    now: DateTime<Utc>,
) -> Result<CompletedLogin, LoginError> {
    let code = AuthorizationCode::new(code);
    let verifier = PkceCodeVerifier::new(pending.pkce_verifier);
    let dpop_key = new_dpop_key(provider)?;
    let (tokens, verified, token_type) = if let Some(client) = provider.plain_client() {
        let mut request = client.exchange_code(code).set_pkce_verifier(verifier);
        for (name, value) in client_assertion(provider)? {
            request = request.add_extra_param(name, value);
        }
        let response = match &dpop_key {
            Some(key) => {
                request
                    .request_async(&DpopHttp {
                        http,
                        key,
                        provider,
                    })
                    .await
            }
            None => request.request_async(http).await,
        }
        .map_err(exchange_error)?;
        (
            grants::token_set(&response, None, None, requested_scopes, now),
            None,
            response.token_type().as_ref().to_owned(),
        )
    } else {
        let metadata = provider
            .metadata()
            .ok_or_else(|| LoginError::ProviderUnavailable("metadata not loaded".into()))?;
        let client = provider.client(&metadata);
        let mut request = client
            .exchange_code(code)
            .map_err(|e| LoginError::Exchange(e.to_string()))?
            .set_pkce_verifier(verifier);
        for (name, value) in client_assertion(provider)? {
            request = request.add_extra_param(name, value);
        }
        let response = match &dpop_key {
            Some(key) => {
                request
                    .request_async(&DpopHttp {
                        http,
                        key,
                        provider,
                    })
                    .await
            }
            None => request.request_async(http).await,
        }
        .map_err(exchange_error)?;
        let verified = match (response.id_token(), &pending.nonce) {
            (Some(id_token), Some(nonce)) => Some(
                id_token::verify(
                    provider,
                    http,
                    id_token,
                    Some(&Nonce::new(nonce.clone())),
                    now,
                )
                .await?,
            ),
            _ => None,
        };
        (
            grants::token_set(&response, None, None, requested_scopes, now),
            verified,
            response.token_type().as_ref().to_owned(),
        )
    };
    let dpop_key = bound_key(provider, dpop_key, &token_type);

    let mut claims = verified
        .as_ref()
        .map(|v| v.claims.clone())
        .unwrap_or_default();
    if let Some(endpoint) = provider.userinfo_endpoint() {
        let answer = fetch_userinfo(
            http,
            provider,
            &endpoint,
            &tokens.access_token,
            dpop_key.as_deref(),
        )
        .await?;
        match answer {
            Userinfo::Claims(userinfo) => {
                if let Some(v) = &verified
                    && userinfo.get("sub").and_then(Value::as_str) != Some(v.subject.as_str())
                {
                    return Err(LoginError::Userinfo(
                        "its `sub` differs from the ID token's".into(),
                    ));
                }
                merge_userinfo(&mut claims, userinfo);
            }
            // Not a failed connection: the tokens are what the service needs. Without an ID
            // token the account has no subject then, and is recorded as the courier user's
            // (below), as at a provider without userinfo.
            Userinfo::Refused(status) => tracing::warn!(
                provider = %provider.id(),
                %status,
                id_token = verified.is_some(),
                "userinfo refused the connection's access token (one made for another \
                 resource?); the ID token's claims are used, if any"
            ),
        }
    }
    // An empty `sub` or `id` names no one: it would make every such account the same one.
    let subject = match (&verified, claims.get("sub"), claims.get("id")) {
        (Some(v), _, _) => v.subject.clone(),
        (None, Some(Value::String(sub)), _) if !sub.is_empty() => sub.clone(),
        (None, _, Some(Value::String(id))) if !id.is_empty() => id.clone(),
        (None, _, Some(Value::Number(id))) => id.to_string(),
        _ => match &pending.purpose {
            Purpose::Connect { user_id, .. } => format!("user:{user_id}"),
            Purpose::Login => return Err(LoginError::MissingIdToken),
        },
    };
    Ok(CompletedLogin {
        subject,
        sid: None,
        claims,
        tokens,
        dpop_key,
    })
}

/// What a userinfo endpoint made of the access token.
enum Userinfo {
    Claims(Map<String, Value>),
    /// 401 or 403: it does not take this token. A provider that issues the token for the
    /// granted resource at the code exchange (RFC 8707; node-oidc-provider's
    /// `useGrantedResource`) refuses it at userinfo, and the login stands on its ID token.
    Refused(reqwest::StatusCode),
}

/// Userinfo with the access token: `Bearer`, or `DPoP` with a proof for a DPoP-bound token
/// (sent again once with the nonce a `use_dpop_nonce` answer brought, which is no refusal). An
/// endpoint that cannot be reached, or fails (5xx, 408, 429), is the provider being
/// unavailable; any other answer that is not a JSON object is unusable.
async fn fetch_userinfo(
    http: &ProviderHttp,
    provider: &Provider,
    endpoint: &Url,
    access_token: &SecretString,
    dpop: Option<&DpopKey>,
) -> Result<Userinfo, LoginError> {
    let mut retried = false;
    let response = loop {
        let request = http
            .0
            .get(endpoint.clone())
            .header("accept", "application/json");
        let request = match dpop {
            None => request.bearer_auth(access_token.expose_secret()),
            Some(key) => {
                let proof = key
                    .proof(
                        "GET",
                        endpoint,
                        Some(access_token.expose_secret()),
                        provider.dpop_nonce().as_deref(),
                        chrono::Utc::now().timestamp(),
                    )
                    .map_err(|e| LoginError::Userinfo(e.to_string()))?;
                request
                    .header(
                        "authorization",
                        format!("DPoP {}", access_token.expose_secret()),
                    )
                    .header("dpop", proof)
            }
        };
        let response = request.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                LoginError::ProviderUnavailable(e.to_string())
            } else {
                LoginError::Userinfo(e.to_string())
            }
        })?;
        let new_nonce = dpop.is_some() && provider.keep_dpop_nonce(response.headers());
        if new_nonce && !retried && response.status() == reqwest::StatusCode::UNAUTHORIZED {
            retried = true;
            continue;
        }
        break response;
    };
    let status = response.status();
    match status.as_u16() {
        200..=299 => {}
        401 | 403 => return Ok(Userinfo::Refused(status)),
        408 | 429 | 500..=599 => {
            return Err(LoginError::ProviderUnavailable(format!(
                "userinfo answered {status}"
            )));
        }
        _ => return Err(LoginError::Userinfo(format!("status {status}"))),
    }
    let body = read_limited(response)
        .await
        .map_err(|e| LoginError::Userinfo(e.to_string()))?;
    serde_json::from_slice(&body)
        .map(Userinfo::Claims)
        .map_err(|_| LoginError::Userinfo("not a JSON object".into()))
}

/// Claims that describe the ID token itself, which userinfo must not overwrite.
const TOKEN_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "azp",
    "at_hash",
    "c_hash",
    "auth_time",
    "sid",
    "jti",
    "acr",
    "amr",
];

fn merge_userinfo(claims: &mut Map<String, Value>, userinfo: Map<String, Value>) {
    for (name, value) in userinfo {
        if !TOKEN_CLAIMS.contains(&name.as_str()) {
            claims.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<LoginOptions, InvalidLoginOption> {
        LoginOptions::parse(|name| {
            url::form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .collect()
        })
    }

    #[test]
    fn login_options_read_the_known_prompts_and_pass_hints_through() {
        let options = parse(
            "prompt=select_account&login_hint=a%40b.example&max_age=0&acr_values=urn:x%20gold",
        )
        .unwrap();
        assert_eq!(options.prompt, Some(Prompt::SelectAccount));
        assert_eq!(options.login_hint.as_deref(), Some("a@b.example"));
        assert_eq!(options.max_age, Some(0));
        assert_eq!(options.acr_values.as_deref(), Some("urn:x gold"));
        assert!(!options.is_silent());
        assert!(parse("prompt=none").unwrap().is_silent());
        assert_eq!(parse("").unwrap(), LoginOptions::default());
        for prompt in ["none", "login", "consent", "select_account", "create"] {
            let options = parse(&format!("prompt={prompt}")).unwrap();
            assert_eq!(options.prompt.map(Prompt::as_str), Some(prompt));
        }
    }

    #[test]
    fn a_login_sent_with_max_age_needs_an_auth_time_that_recent() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let claims = |v: Value| v.as_object().cloned().unwrap();
        let at = |seconds_ago: i64| {
            claims(serde_json::json!({"auth_time": 1_700_000_000 - seconds_ago}))
        };
        assert!(check_max_age(&at(0), 0, now).is_ok());
        assert!(
            check_max_age(&at(60), 0, now).is_ok(),
            "within the clock skew"
        );
        assert!(check_max_age(&at(61), 0, now).is_err());
        assert!(check_max_age(&at(360), 300, now).is_ok());
        assert!(check_max_age(&at(361), 300, now).is_err());
        for missing in [
            serde_json::json!({}),
            serde_json::json!({"auth_time": "now"}),
        ] {
            let error = check_max_age(&claims(missing), 300, now).unwrap_err();
            assert_eq!(error.code(), "unmet_authentication_requirements");
        }
    }

    #[test]
    fn a_pending_login_sealed_before_max_age_was_kept_still_opens() {
        let old = serde_json::json!({
            "provider": "main", "state": "s", "nonce": "n", "pkce_verifier": "v",
            "return_to": "/", "started_at": "2026-12-01T00:00:00Z", "purpose": {"kind": "login"},
        });
        let pending: PendingLogin = serde_json::from_value(old).unwrap();
        assert_eq!(pending.max_age, None);
        assert!(!pending.silent);
    }

    #[test]
    fn malformed_login_options_are_refused() {
        let long = "x".repeat(257);
        for query in [
            "prompt=bogus",
            "prompt=",
            "prompt=NONE",
            "prompt=login%20consent",
            "prompt=none&prompt=login",
            "max_age=-1",
            "max_age=%2B5",
            "max_age=1.5",
            "max_age=",
            "max_age=99999999999",
            "max_age=4294967296",
            "login_hint=",
            &format!("login_hint={long}"),
            "login_hint=a%0Ab",
            "acr_values=",
            "acr_values=a%20%20b",
            "acr_values=a%0Ab",
            &format!("acr_values={long}"),
        ] {
            assert!(parse(query).is_err(), "{query} was accepted");
        }
    }
}
