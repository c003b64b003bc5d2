//! Browser navigations: `/auth/login` and `/auth/callback/{provider}`. These answer with
//! redirects, never JSON and never a 500: a failed login goes back to `/?login_error=<code>`
//! (a silent one to its `return_to`). And `/auth/providers`, the login providers as JSON for
//! the SPA's sign-in buttons.

use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use url::form_urlencoded;

use actix_web::FromRequest;

use crate::connections::{self, ConnectError};
use crate::error::ApiError;
use crate::oidc::Provider;
use crate::oidc::login::{self, LoginOptions, Purpose};
use crate::oidc::par;
use crate::services::Service;
use crate::session::{self, CurrentSession};
use crate::state::AppState;

/// The first value of each query parameter.
fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Every value of a query parameter.
fn query_values(req: &HttpRequest, name: &str) -> Vec<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// `return_to` when it is a path on this origin; `/` otherwise.
pub fn safe_return_to(candidate: Option<&str>) -> String {
    let Some(path) = candidate else {
        return "/".into();
    };
    let decoded: String = percent_decode(path);
    let stays_on_origin = |p: &str| {
        p.starts_with('/')
            && !p.starts_with("//")
            && !p.contains('\\')
            && !p.chars().any(|c| c.is_control())
    };
    if path.len() <= 1024 && stays_on_origin(path) && stays_on_origin(&decoded) {
        path.to_owned()
    } else {
        "/".into()
    }
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn redirect(location: &str) -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::Found();
    builder.insert_header((LOCATION, location.to_owned()));
    builder
}

fn login_error(code: &str) -> String {
    format!("/?login_error={code}")
}

/// `return_to` with `login_error=<code>` added to its query (before any fragment), replacing a
/// `login_error` it carried already. `code` is one of courier's codes: no encoding needed.
fn with_login_error(return_to: &str, code: &str) -> String {
    let (rest, fragment) = match return_to.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (return_to, None),
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split('=').next() != Some("login_error"))
        .collect();
    let error = format!("login_error={code}");
    pairs.push(&error);
    let mut location = format!("{path}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        location.push('#');
        location.push_str(fragment);
    }
    location
}

fn connect_error(service: &str, code: &str) -> String {
    format!("/?connect_error={code}&service={service}")
}

/// Puts the pending login in its cookie and sends the browser to the provider. The browser's
/// oldest pending logins are dropped beyond `login::MAX_PENDING_LOGINS`, so that abandoned
/// ones cannot pile up into a request head too large to be served.
fn to_provider(
    req: &HttpRequest,
    state: &AppState,
    url: url::Url,
    pending: &login::PendingLogin,
) -> HttpResponse {
    let base = &state.config.session.cookie_name;
    let mut response = redirect(url.as_str());
    for removal in login::evict_oldest(req, &state.keys, base) {
        response.cookie(removal);
    }
    response
        .cookie(login::pending_cookie(&state.keys, base, pending))
        .finish()
}

fn provider_not_ready(provider: &str) -> ApiError {
    ApiError::UpstreamUnavailable(format!("the provider `{provider}` is not available yet"))
}

/// `GET /auth/login?return_to=/path[&provider=ID][&prompt=…][&login_hint=…][&max_age=…]
/// [&acr_values=…]` → 302 to the login provider (the default one without `provider`); 400
/// for a provider users cannot sign in with, or a malformed option.
pub async fn login(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let requested = query_values(&req, "provider");
    let provider = match requested.as_slice() {
        [] => state.providers.login(None),
        [id] => state.providers.login(Some(id)),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::BadRequest("`provider` must name one login provider (see /auth/providers)".into())
    })?;
    let options = LoginOptions::parse(|name| query_values(&req, name))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let return_to = safe_return_to(query_param(&req, "return_to").as_deref());
    let (url, pending) = login::start(
        provider,
        &provider.config.scopes,
        &state.services.user_resources(provider.id()),
        Purpose::Login,
        &options,
        return_to,
        state.clock.now(),
    )
    .ok_or_else(|| provider_not_ready(provider.id()))?;
    Ok(push_and_go(&req, &state, provider, url, &pending).await)
}

/// `GET /auth/providers` → 200 `{"providers":[{"id","name"}]}`: the login providers in the
/// configuration's order (the default first), for the SPA's sign-in buttons.
pub async fn providers(state: web::Data<AppState>) -> HttpResponse {
    let providers: Vec<_> = state
        .providers
        .login_providers()
        .map(|p| serde_json::json!({ "id": p.id(), "name": p.display_name() }))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "providers": providers }))
}

/// `GET /auth/connect/{service}?return_to=/path` → 302 to the service's provider, to link the
/// session user's account there. Without a session, the browser signs in first (with the
/// default login provider) and comes back. In a session that logged in with the service's
/// provider there is nothing to link (the session's tokens serve it): straight to `return_to`.
pub async fn connect(
    req: HttpRequest,
    path: web::Path<String>,
    current: Option<CurrentSession>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let service = state
        .services
        .get(&path)
        .filter(|s| s.user_provider().is_some())
        .ok_or_else(|| ApiError::ServiceNotFound(path.clone()))?;
    let return_to = safe_return_to(query_param(&req, "return_to").as_deref());
    let Some(current) = current else {
        let here = format!(
            "/auth/connect/{}?return_to={}",
            service.name(),
            urlencoding(&return_to)
        );
        return Ok(redirect(&format!("/auth/login?return_to={}", urlencoding(&here))).finish());
    };
    let Some(linked) = service.linked_provider(&current.provider) else {
        return Ok(redirect(&return_to).finish());
    };
    let provider = state
        .providers
        .get(linked)
        .ok_or_else(|| ApiError::ServiceNotFound(path.clone()))?;
    let scopes = connect_scopes(provider, service);
    let purpose = Purpose::Connect {
        service: service.name().to_owned(),
        user_id: current.user_id,
    };
    // Only this service's resource: the connection is made for it.
    let resources: Vec<String> = service
        .connect_resource()
        .map(str::to_owned)
        .into_iter()
        .collect();
    let options = LoginOptions::default();
    let (url, pending) = login::start(
        provider,
        &scopes,
        &resources,
        purpose,
        &options,
        return_to,
        state.clock.now(),
    )
    .ok_or_else(|| provider_not_ready(provider.id()))?;
    Ok(push_and_go(&req, &state, provider, url, &pending).await)
}

/// Pushes the authorization request when the provider's `par` says so (RFC 9126), then sends
/// the browser on as `to_provider` does. A push that fails sends it back with
/// `login_error` (`connect_error`) instead: never to the front-channel request.
async fn push_and_go(
    req: &HttpRequest,
    state: &AppState,
    provider: &Provider,
    url: url::Url,
    pending: &login::PendingLogin,
) -> HttpResponse {
    match par::authorization_url(provider, &state.providers.http, url).await {
        Ok(url) => to_provider(req, state, url, pending),
        Err(e) => {
            // A request the provider refuses (a `prompt` it does not support, say) is the
            // user's or the SPA's to change; everything else needs an operator.
            if matches!(e, par::ParError::Refused { .. }) {
                tracing::warn!(provider = %provider.id(), error = %e, "login not started");
            } else {
                tracing::error!(provider = %provider.id(), error = %e, "login not started");
            }
            let location = match &pending.purpose {
                Purpose::Login if pending.silent => with_login_error(&pending.return_to, e.code()),
                Purpose::Login => login_error(e.code()),
                Purpose::Connect { service, .. } => connect_error(service, e.code()),
            };
            redirect(&location).finish()
        }
    }
}

/// The provider's scopes, then the service's that the provider's do not already include.
fn connect_scopes(provider: &Provider, service: &Service) -> Vec<String> {
    let mut scopes = provider.config.scopes.clone();
    scopes.extend(
        service
            .config
            .scopes
            .iter()
            .filter(|s| !provider.config.scopes.contains(s))
            .cloned(),
    );
    scopes
}

fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Why a callback sent the browser back with `login_error` (or `connect_error`): each variant
/// is one code on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallbackError {
    /// No pending login matches (unknown, expired, replayed, or naming a provider this
    /// instance does not have, as after a deploy that removed it).
    InvalidState,
    IssuerMismatch,
    /// The provider's own `error`, when it is a registered OAuth code (`provider_error_code`).
    Provider(&'static str),
    InvalidRequest,
    Login(&'static str),
    LoginRequired,
    AccountLinkedElsewhere,
    ServerError,
}

impl CallbackError {
    fn code(&self) -> &str {
        match self {
            CallbackError::InvalidState => "invalid_state",
            CallbackError::IssuerMismatch => "issuer_mismatch",
            CallbackError::Provider(code) => code,
            CallbackError::InvalidRequest => "invalid_request",
            CallbackError::Login(code) => code,
            CallbackError::LoginRequired => "login_required",
            CallbackError::AccountLinkedElsewhere => "account_linked_elsewhere",
            CallbackError::ServerError => "server_error",
        }
    }
}

/// `GET /auth/callback/{provider}` → 302 to `return_to`, having started a session (login) or
/// stored a linked account (connect); or back to `/?login_error=<code>`
/// (`/?connect_error=<code>&service=<name>` for a connection).
pub async fn callback(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let base = &state.config.session.cookie_name;
    let Some(returned_state) = query_param(&req, "state") else {
        return redirect(&login_error("invalid_state")).finish();
    };
    // Whatever happens next, this login's cookie is spent.
    let removal = login::removal_cookie(base, &returned_state);
    let now = state.clock.now();
    let found = login::find_pending(&req, &state.keys, base, &returned_state)
        .filter(|p| p.provider == *path && !p.is_expired(now));
    let Some(pending) = found else {
        return redirect(&login_error("invalid_state"))
            .cookie(removal)
            .finish();
    };
    let purpose = pending.purpose.clone();
    let return_to = pending.return_to.clone();
    let silent = pending.silent;
    // A deploy may have removed the provider since the login started, or (for a login) made
    // it no login provider.
    let provider = match &purpose {
        Purpose::Login => state.providers.login(Some(&pending.provider)),
        Purpose::Connect { .. } => state.providers.get(&pending.provider),
    };
    let outcome = match provider.cloned() {
        Some(provider) => complete_callback(&req, &state, &provider, pending).await,
        None => Err(CallbackError::InvalidState),
    };
    let location = match outcome {
        Ok(()) => return_to,
        Err(e) => match &purpose {
            // A silent login that needs the user goes back where it came from, told why.
            Purpose::Login if silent && login::SILENT_LOGIN_ERRORS.contains(&e.code()) => {
                with_login_error(&return_to, e.code())
            }
            Purpose::Login => login_error(e.code()),
            Purpose::Connect { service, .. } => connect_error(service, e.code()),
        },
    };
    redirect(&location).cookie(removal).finish()
}

/// RFC 9207 (mix-up defence): when the provider names itself it must be the provider this
/// login went to, and a provider that promises to name itself must have done so before a code
/// is redeemed. An error response without `iss` (django-oauth-toolkit sends none on
/// `access_denied`) carries no code to misdirect: its error is reported as it is. Plain OAuth
/// providers have no metadata and no issuer.
fn check_issuer(req: &HttpRequest, provider: &Provider) -> Result<(), CallbackError> {
    let Some(metadata) = provider.metadata() else {
        return Ok(());
    };
    let iss = query_param(req, "iss");
    let refused = match &iss {
        Some(iss) => iss != metadata.issuer().as_str(),
        // The FAPI 2.0 profile requires `iss` in every authorization response.
        None => {
            (Provider::sends_iss_in_authorization_response(&metadata) || provider.config.fapi2)
                && query_param(req, "error").is_none()
        }
    };
    if refused {
        tracing::warn!(
            provider = %provider.id(),
            iss_present = iss.is_some(),
            "authorization response refused: its issuer is missing or not this provider's"
        );
        return Err(CallbackError::IssuerMismatch);
    }
    Ok(())
}

/// Everything after the pending login was found: its state is spent once, the response is
/// checked, and the code is redeemed for a session or a linked account.
async fn complete_callback(
    req: &HttpRequest,
    state: &AppState,
    provider: &Provider,
    pending: login::PendingLogin,
) -> Result<(), CallbackError> {
    match pending.claim(&state.pool).await {
        Ok(true) => {}
        Ok(false) => return Err(CallbackError::InvalidState),
        Err(e) => {
            tracing::error!(error = %e, "recording the login state failed");
            return Err(CallbackError::ServerError);
        }
    }
    check_issuer(req, provider)?;
    if let Some(error) = query_param(req, "error") {
        return Err(CallbackError::Provider(login::provider_error_code(&error)));
    }
    let code = query_param(req, "code").ok_or(CallbackError::InvalidRequest)?;
    let (kind, outcome) = match pending.purpose.clone() {
        Purpose::Login => (
            "login",
            finish_login(req, state, provider, pending, code).await,
        ),
        Purpose::Connect { service, user_id } => (
            "connect",
            finish_connect(req, state, provider, pending, code, &service, user_id).await,
        ),
    };
    let result = match &outcome {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.code().to_owned(),
    };
    metrics::counter!(
        "courier_logins_total",
        "kind" => kind,
        "provider" => provider.id().to_owned(),
        "outcome" => result
    )
    .increment(1);
    outcome
}

async fn finish_login(
    req: &HttpRequest,
    state: &AppState,
    provider: &Provider,
    pending: login::PendingLogin,
    code: String,
) -> Result<(), CallbackError> {
    let now = state.clock.now();
    let completed = login::complete(provider, &state.providers.http, pending, code, now)
        .await
        .map_err(|e| {
            tracing::warn!(provider = %provider.id(), error = %e, "login failed");
            CallbackError::Login(e.code())
        })?;
    let session_id = session::start(
        req,
        &state.pool,
        &state.keys,
        &state.clock,
        &state.config.session,
        provider.id(),
        &completed,
    )
    .await
    .map_err(|e| {
        tracing::error!(error = format!("{e:#}"), "starting the session failed");
        CallbackError::ServerError
    })?;
    tracing::info!(provider = %provider.id(), %session_id, "login completed");
    Ok(())
}

async fn finish_connect(
    req: &HttpRequest,
    state: &AppState,
    provider: &Provider,
    pending: login::PendingLogin,
    code: String,
    service: &str,
    user_id: uuid::Uuid,
) -> Result<(), CallbackError> {
    // The account goes to the user who started the connection, and only in their session.
    let current = CurrentSession::extract(req).await.ok();
    if current.is_none_or(|c| c.user_id != user_id) {
        return Err(CallbackError::LoginRequired);
    }
    let scopes = state
        .services
        .get(service)
        .map(|s| s.config.scopes.clone())
        .unwrap_or_default();
    let completed = login::complete_connect(
        provider,
        &state.providers.http,
        pending,
        code,
        &scopes,
        state.clock.now(),
    )
    .await
    .map_err(|e| {
        tracing::warn!(provider = %provider.id(), error = %e, "connecting an account failed");
        CallbackError::Login(e.code())
    })?;
    let (pool, keys, cache) = (&state.pool, &state.keys, &state.cache);
    connections::link(pool, keys, cache, user_id, provider.id(), &completed)
        .await
        .map_err(|e| match e {
            ConnectError::LinkedElsewhere => CallbackError::AccountLinkedElsewhere,
            ConnectError::Database(e) => {
                tracing::error!(error = %e, "storing the linked account failed");
                CallbackError::ServerError
            }
        })?;
    tracing::info!(provider = %provider.id(), %service, "account connected");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{safe_return_to, with_login_error};

    #[test]
    fn a_login_error_is_added_to_the_query_before_the_fragment() {
        for (return_to, expected) in [
            ("/", "/?login_error=login_required"),
            ("/app", "/app?login_error=login_required"),
            ("/app?x=1", "/app?x=1&login_error=login_required"),
            ("/app?", "/app?login_error=login_required"),
            ("/app?x=1&", "/app?x=1&login_error=login_required"),
            ("/app#top", "/app?login_error=login_required#top"),
            ("/app?x=1#a?b", "/app?x=1&login_error=login_required#a?b"),
            (
                "/app?login_error=consent_required&y=2",
                "/app?y=2&login_error=login_required",
            ),
            (
                "/app?login_errors=1",
                "/app?login_errors=1&login_error=login_required",
            ),
        ] {
            assert_eq!(
                with_login_error(return_to, "login_required"),
                expected,
                "{return_to}"
            );
        }
    }

    #[test]
    fn return_to_stays_on_the_origin() {
        assert_eq!(safe_return_to(Some("/app?x=1#y")), "/app?x=1#y");
        for hostile in [
            "//evil.example",
            "https://evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example/..",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "javascript:alert(1)",
            "/\tevil",
            "",
        ] {
            assert_eq!(safe_return_to(Some(hostile)), "/", "{hostile}");
        }
        assert_eq!(safe_return_to(None), "/");
    }
}
