//! The configured providers and what discovery loaded for them. Discovery that fails at
//! start-up is retried in the background with backoff; until it succeeds the provider is
//! "missing" for `/readyz` and logins through it answer 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, AuthUrl, ClientId, ClientSecret, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, JsonWebKeySet, RedirectUrl, TokenUrl,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::{ClientAuth, Config, ProviderConfig};
use crate::oidc::http::{HttpError, ProviderHttp};

/// Discovery fields courier uses beyond what openidconnect's core metadata carries.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    pub end_session_endpoint: Option<url::Url>,
    pub revocation_endpoint: Option<url::Url>,
    pub introspection_endpoint: Option<url::Url>,
    /// RFC 9207: the provider names itself (`iss`) in every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// RFC 9126: where authorization requests are pushed.
    pub pushed_authorization_request_endpoint: Option<url::Url>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

pub type Metadata = openidconnect::ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A client for a discovered provider.
pub type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A client for a plain OAuth 2.0 provider configured by its endpoints.
pub type PlainClient = oauth2::basic::BasicClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The least time between two JWKS fetches caused by an unknown `kid`, so that tokens with
/// made-up key ids cannot make courier hammer the provider; short enough that two key
/// rotations in a row are each picked up at once (OIDC Core §10.1.1).
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery of {issuer} failed: {detail}")]
    Failed { issuer: String, detail: String },
}

pub struct Provider {
    pub config: ProviderConfig,
    pub redirect_uri: RedirectUrl,
    metadata: RwLock<Option<Arc<Metadata>>>,
    /// Held while the JWKS is fetched again (one fetch per provider at a time); when the last
    /// one started.
    jwks_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// How many fetches of the JWKS have started: a token that waited while one started after
    /// it asked uses that fetch's result rather than causing another.
    jwks_fetches: AtomicU64,
    /// The last DPoP nonce the provider sent (RFC 9449 §8), sent up front with the next proof.
    dpop_nonce: Mutex<Option<String>>,
}

impl Provider {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// What a sign-in button says: the configured `display_name`, else the id.
    pub fn display_name(&self) -> &str {
        self.config
            .display_name
            .as_deref()
            .unwrap_or(&self.config.id)
    }

    /// The discovered metadata, if discovery has succeeded.
    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn client(&self, metadata: &Metadata) -> OidcClient {
        CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            self.client_secret(true),
        )
        .set_redirect_uri(self.redirect_uri.clone())
        .set_auth_type(auth_type(self.config.client_auth(true)))
    }

    /// The secret openidconnect/oauth2 send on the code exchange: none under `private_key_jwt`,
    /// whose assertion the caller adds (`client_auth::assertion_params`).
    fn client_secret(&self, is_oidc: bool) -> Option<ClientSecret> {
        if self.config.client_auth(is_oidc) == ClientAuth::PrivateKeyJwt {
            return None;
        }
        self.config
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose_secret().to_owned()))
    }

    /// The DPoP nonce to send to the provider, if it gave one.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.dpop_nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps the `DPoP-Nonce` a provider's answer carried, if any; true when it was one.
    pub fn keep_dpop_nonce(&self, headers: &reqwest::header::HeaderMap) -> bool {
        let Some(nonce) = headers
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 512)
        else {
            return false;
        };
        *self
            .dpop_nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(nonce.to_owned());
        true
    }

    /// Whether the provider speaks OpenID Connect (configured by `issuer`), as opposed to plain
    /// OAuth 2.0 configured by its endpoints.
    pub fn is_oidc(&self) -> bool {
        self.config.issuer.is_some()
    }

    /// A client for a provider configured by its endpoints. Such providers (GitHub, for one)
    /// take the client's credentials in the request body.
    pub fn plain_client(&self) -> Option<PlainClient> {
        let auth = self.config.authorization_endpoint.as_ref()?;
        let token = self.config.token_endpoint.as_ref()?;
        let mut client =
            oauth2::basic::BasicClient::new(ClientId::new(self.config.client_id.clone()))
                .set_auth_uri(AuthUrl::from_url(auth.clone()))
                .set_token_uri(TokenUrl::from_url(token.clone()))
                .set_redirect_uri(self.redirect_uri.clone())
                .set_auth_type(auth_type(self.config.client_auth(false)));
        if let Some(secret) = self.client_secret(false) {
            client = client.set_client_secret(secret);
        }
        Some(client)
    }

    /// The revocation endpoint (RFC 7009): the configured one, else the discovered one.
    /// Configuring it for a discovered provider covers those whose OpenID discovery document
    /// leaves it out (django-oauth-toolkit lists it only in its RFC 8414 metadata).
    pub fn revocation_endpoint(&self) -> Option<url::Url> {
        if let Some(configured) = &self.config.revocation_endpoint {
            return Some(configured.clone());
        }
        self.metadata()?
            .additional_metadata()
            .revocation_endpoint
            .clone()
    }

    /// The userinfo endpoint: discovered, or configured for plain providers.
    pub fn userinfo_endpoint(&self) -> Option<url::Url> {
        match self.metadata() {
            Some(m) => m.userinfo_endpoint().map(|u| u.url().clone()),
            None => self.config.userinfo_endpoint.clone(),
        }
    }

    /// Whether the provider's metadata promises `iss` in authorization responses (RFC 9207).
    pub fn sends_iss_in_authorization_response(metadata: &Metadata) -> bool {
        metadata
            .additional_metadata()
            .authorization_response_iss_parameter_supported
            .unwrap_or(false)
    }

    /// The end-session endpoint of a discovered provider.
    pub fn end_session_endpoint(&self) -> Option<url::Url> {
        self.metadata()?
            .additional_metadata()
            .end_session_endpoint
            .clone()
    }

    async fn discover(&self, http: &ProviderHttp) -> Result<(), DiscoveryError> {
        let Some(issuer) = &self.config.issuer else {
            return Ok(());
        };
        let issuer_str = issuer.as_str().trim_end_matches('/').to_owned();
        let failed = |detail: String| DiscoveryError::Failed {
            issuer: issuer_str.clone(),
            detail,
        };
        let issuer_url = IssuerUrl::new(issuer_str.clone()).map_err(|e| failed(e.to_string()))?;
        let metadata = match Metadata::discover_async(issuer_url, http).await {
            Ok(metadata) => metadata,
            // openidconnect compares issuers as strings, and a configured `https://x` and
            // `https://x/` are one URL once parsed; some providers (Auth0) name themselves with
            // the slash. Retry with it rather than refuse the same issuer.
            Err(openidconnect::DiscoveryError::Validation(first)) => {
                let with_slash =
                    IssuerUrl::new(format!("{issuer_str}/")).map_err(|e| failed(e.to_string()))?;
                Metadata::discover_async(with_slash, http)
                    .await
                    .map_err(|_| failed(format!("Validation error: {first}")))?
            }
            Err(e) => return Err(failed(error_chain(&e))),
        };
        *self
            .metadata
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(metadata));
        tracing::info!(provider = %self.config.id, "provider metadata loaded");
        Ok(())
    }

    /// Fetches the JWKS again after a token named a key it does not hold, and returns the
    /// metadata with the keys as the provider now publishes them. One fetch per provider at a
    /// time, at most one a second: a token that arrives while a fetch is under way, or within a
    /// second of the last, waits for the next fetch, and every token that waited shares it.
    pub async fn refetch_jwks(&self, http: &ProviderHttp) -> Result<Arc<Metadata>, HttpError> {
        let asked_after = self.jwks_fetches.load(Ordering::Acquire);
        let mut last = self.jwks_refetch.lock().await;
        let current = self
            .metadata()
            .ok_or_else(|| HttpError::Malformed("provider metadata is not loaded".into()))?;
        if self.jwks_fetches.load(Ordering::Acquire) != asked_after {
            // A fetch started after this token asked, and is done (its holder let go of the
            // lock): its keys are the answer.
            return Ok(current);
        }
        if let Some(at) = *last {
            tokio::time::sleep(JWKS_REFETCH_INTERVAL.saturating_sub(at.elapsed())).await;
        }
        *last = Some(Instant::now());
        self.jwks_fetches.fetch_add(1, Ordering::AcqRel);
        let fetched = JsonWebKeySet::fetch_async(current.jwks_uri(), http).await;
        let jwks = fetched.map_err(|e| HttpError::Malformed(error_chain(&e)))?;
        let updated = Arc::new((*current).clone().set_jwks(jwks));
        *self
            .metadata
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(updated.clone());
        tracing::info!(provider = %self.config.id, "provider keys re-fetched");
        Ok(updated)
    }
}

pub struct ProviderRegistry {
    providers: HashMap<String, Arc<Provider>>,
    /// The ids of the login providers in the configuration's order: the first is the default.
    login_ids: Vec<String>,
    pub http: ProviderHttp,
}

impl ProviderRegistry {
    #[allow(
        clippy::expect_used,
        reason = "start-up only, over a configuration whose public_url was validated"
    )]
    pub fn new(config: &Config, http: reqwest::Client) -> Self {
        let providers = config
            .providers
            .iter()
            .map(|p| {
                let redirect_uri = RedirectUrl::new(config.redirect_uri(&p.id))
                    .expect("public_url is a validated URL");
                let provider = Provider {
                    config: p.clone(),
                    redirect_uri,
                    metadata: RwLock::new(None),
                    jwks_refetch: tokio::sync::Mutex::new(None),
                    jwks_fetches: AtomicU64::new(0),
                    dpop_nonce: Mutex::new(None),
                };
                (p.id.clone(), Arc::new(provider))
            })
            .collect();
        ProviderRegistry {
            providers,
            login_ids: config.login_providers().map(|p| p.id.clone()).collect(),
            http: ProviderHttp(http),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.get(id)
    }

    /// The login provider `id`, or the default one (the first listed) for `None`. `None` when
    /// `id` names no provider, or one users cannot sign in with.
    pub fn login(&self, id: Option<&str>) -> Option<&Arc<Provider>> {
        let id = match id {
            Some(id) => self.login_ids.iter().find(|l| *l == id)?,
            None => self.login_ids.first()?,
        };
        self.providers.get(id)
    }

    /// The login providers, in the configuration's order (the default first).
    pub fn login_providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.login_ids
            .iter()
            .filter_map(|id| self.providers.get(id))
    }

    /// Providers that need discovery and have not had it succeed.
    pub fn missing(&self) -> Vec<String> {
        let mut missing: Vec<String> = self
            .providers
            .values()
            .filter(|p| p.config.issuer.is_some() && p.metadata().is_none())
            .map(|p| p.config.id.clone())
            .collect();
        missing.sort();
        missing
    }

    /// Tries discovery once for every provider that lacks metadata.
    pub async fn discover_missing(&self) {
        for id in self.missing() {
            let provider = &self.providers[&id];
            if let Err(e) = provider.discover(&self.http).await {
                tracing::warn!(provider = %id, error = %e, "provider discovery failed");
            }
        }
    }

    /// Retries discovery in the background, with backoff, until every provider has metadata.
    pub fn spawn_discovery_retries(self: &Arc<Self>) {
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            while !registry.missing().is_empty() {
                tokio::time::sleep(delay).await;
                registry.discover_missing().await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
    }
}

/// How openidconnect/oauth2 send the client's credentials. Under `private_key_jwt` they send
/// only `client_id` in the body (no secret is set), beside the assertion the caller adds.
fn auth_type(method: ClientAuth) -> AuthType {
    match method {
        ClientAuth::ClientSecretBasic => AuthType::BasicAuth,
        ClientAuth::ClientSecretPost | ClientAuth::PrivateKeyJwt => AuthType::RequestBody,
    }
}

/// An error and its causes on one line, for logs and diagnostics.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
