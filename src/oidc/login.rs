//! The authorization-code flow with PKCE: starting a login (authorization URL plus the pending
//! login the browser keeps in a sealed cookie) and completing it (code exchange, ID token
//! checks, userinfo).

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use openidconnect::core::CoreAuthenticationFlow;
use openidconnect::{
    AuthorizationCode, CsrfToken, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RequestTokenError, Scope, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::crypto::{KeyRing, constant_time_eq, random_token, sha256};
use crate::oidc::http::{ProviderHttp, read_limited};
use crate::oidc::id_token::{self, IdTokenError};
use crate::oidc::registry::{Metadata, Provider, error_chain};
use crate::tokens::TokenSet;

/// How long a started login may take to come back.
pub const PENDING_LOGIN_TTL: Duration = Duration::minutes(10);

/// What the browser holds, sealed, between `/auth/login` and the callback.
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    pub provider: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    pub started_at: DateTime<Utc>,
}

impl PendingLogin {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.started_at + PENDING_LOGIN_TTL || now < self.started_at - Duration::minutes(1)
    }
}

/// Starts a login at `provider`: returns the authorization URL and the pending login.
pub fn start(
    provider: &Provider,
    metadata: &Metadata,
    return_to: String,
    now: DateTime<Utc>,
) -> (Url, PendingLogin) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (state, nonce) = (random_token(), random_token());
    let client = provider.client(metadata);
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
        .set_pkce_challenge(challenge);
    // openidconnect always asks for `openid`; the rest come from the configuration.
    for scope in provider.config.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    for (name, value) in &provider.config.authorize_params {
        request = request.add_extra_param(name.clone(), value.clone());
    }
    let (url, _, _) = request.url();
    let pending = PendingLogin {
        provider: provider.id().to_owned(),
        state,
        nonce,
        pkce_verifier: verifier.secret().clone(),
        return_to,
        started_at: now,
    };
    (url, pending)
}

/// The name of the cookie that holds the pending login for `state`: one cookie per login, so
/// that logins started in two tabs both complete.
fn cookie_name(base: &str, state: &str) -> String {
    let digest = hex::encode(sha256(state.as_bytes()));
    format!("{base}-login-{}", &digest[..16])
}

fn cookie_aad(name: &str) -> Vec<u8> {
    format!("pending_login:{name}").into_bytes()
}

fn base_cookie(name: String, value: String) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .finish()
}

/// The sealed cookie that binds a pending login to this browser.
pub fn pending_cookie(keys: &KeyRing, base: &str, pending: &PendingLogin) -> Cookie<'static> {
    let name = cookie_name(base, &pending.state);
    let json = serde_json::to_vec(pending).expect("a pending login serializes");
    let value = URL_SAFE_NO_PAD.encode(keys.seal(&json, &cookie_aad(&name)));
    let mut cookie = base_cookie(name, value);
    cookie.set_max_age(CookieDuration::seconds(PENDING_LOGIN_TTL.num_seconds()));
    cookie
}

/// The cookie that clears the pending login for `state`.
pub fn removal_cookie(base: &str, state: &str) -> Cookie<'static> {
    let mut cookie = base_cookie(cookie_name(base, state), String::new());
    cookie.make_removal();
    cookie
}

/// Finds and opens this browser's pending login for `state`. `None` when the browser has no
/// such login, or the cookie was tampered with.
pub fn find_pending(
    req: &HttpRequest,
    keys: &KeyRing,
    base: &str,
    state: &str,
) -> Option<PendingLogin> {
    let name = cookie_name(base, state);
    let cookie = req.cookie(&name)?;
    let sealed = URL_SAFE_NO_PAD.decode(cookie.value()).ok()?;
    let json = keys.open(&sealed, &cookie_aad(&name)).ok()?;
    let pending: PendingLogin = serde_json::from_slice(&json).ok()?;
    constant_time_eq(pending.state.as_bytes(), state.as_bytes()).then_some(pending)
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
    #[error("the userinfo response is unusable: {0}")]
    Userinfo(String),
}

impl LoginError {
    /// The `login_error` code the browser is sent back with.
    pub fn code(&self) -> &'static str {
        match self {
            LoginError::ProviderUnavailable(_) => "provider_unavailable",
            LoginError::Exchange(_) => "token_exchange_failed",
            LoginError::MissingIdToken | LoginError::IdToken(_) => "invalid_id_token",
            LoginError::Userinfo(_) => "invalid_userinfo",
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
    let response = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| LoginError::Exchange(e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
        .request_async(http)
        .await
        .map_err(|e| match e {
            RequestTokenError::Request(e) if e.is_unreachable() => {
                LoginError::ProviderUnavailable(e.to_string())
            }
            // A parse error can quote the response, tokens included: say only that it failed.
            RequestTokenError::Parse(_, _) => {
                LoginError::Exchange("the token response does not parse".into())
            }
            other => LoginError::Exchange(error_chain(&other)),
        })?;

    let id_token = response.id_token().ok_or(LoginError::MissingIdToken)?;
    let verified = id_token::verify(
        provider,
        http,
        id_token,
        Some(&Nonce::new(pending.nonce)),
        now,
    )
    .await?;

    let access_token = SecretString::from(response.access_token().secret().clone());
    let mut claims = verified.claims;
    if let Some(endpoint) = metadata.userinfo_endpoint() {
        let userinfo = fetch_userinfo(http, endpoint.url(), &access_token).await?;
        if userinfo.get("sub").and_then(Value::as_str) != Some(verified.subject.as_str()) {
            return Err(LoginError::Userinfo(
                "its `sub` differs from the ID token's".into(),
            ));
        }
        merge_userinfo(&mut claims, userinfo);
    }

    let scopes = match response.scopes() {
        Some(granted) => granted.iter().map(|s| s.to_string()).collect(),
        None => provider.config.scopes.clone(),
    };
    let tokens = TokenSet {
        access_token,
        refresh_token: response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().clone())),
        id_token: Some(SecretString::from(id_token.to_string())),
        expires_at: response
            .expires_in()
            .and_then(|d| Duration::from_std(d).ok())
            .map(|d| now + d),
        scopes,
    };
    Ok(CompletedLogin {
        subject: verified.subject,
        sid: verified.sid,
        claims,
        tokens,
    })
}

async fn fetch_userinfo(
    http: &ProviderHttp,
    endpoint: &Url,
    access_token: &SecretString,
) -> Result<Map<String, Value>, LoginError> {
    let response = http
        .0
        .get(endpoint.clone())
        .bearer_auth(access_token.expose_secret())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                LoginError::ProviderUnavailable(e.to_string())
            } else {
                LoginError::Userinfo(e.to_string())
            }
        })?;
    if !response.status().is_success() {
        return Err(LoginError::Userinfo(format!(
            "status {}",
            response.status()
        )));
    }
    let body = read_limited(response)
        .await
        .map_err(|e| LoginError::Userinfo(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|_| LoginError::Userinfo("not a JSON object".into()))
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
