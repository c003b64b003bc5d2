//! How the domain's errors answer over HTTP. The domain modules know nothing of HTTP; the
//! mapping lives here, beside the handlers that return them.

use crate::connections::DisconnectError;
use crate::db::session_tokens::LoadError;
use crate::error::ApiError;
use crate::session::user_sessions::EndOthersError;
use crate::tokens::TokenError;

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Database(e) => e.into(),
            LoadError::Stored(e) => e.into(),
            e @ LoadError::Sealed(_) => ApiError::internal(e),
        }
    }
}

/// The domain's token errors as HTTP (the domain knows nothing of HTTP).
impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::SessionEnded => ApiError::LoginRequired,
            TokenError::ReauthRequired => ApiError::ReauthRequired,
            // The route that knows the service answers these with its connect URL.
            TokenError::NotConnected | TokenError::ConnectionNeedsReauth => ApiError::internal(
                anyhow::anyhow!("a linked-account error reached the API unmapped"),
            ),
            TokenError::ProviderUnavailable { retry_after_secs } => ApiError::RetryLater {
                detail: "the provider cannot issue a token now".into(),
                retry_after_secs,
            },
            TokenError::NotAllowed => ApiError::NotAllowed(
                "the provider refused to issue a token for this service".into(),
            ),
            TokenError::Storage(e) => e.into(),
            TokenError::Sealed(e) => e.into(),
        }
    }
}

impl From<DisconnectError> for ApiError {
    fn from(e: DisconnectError) -> Self {
        match e {
            DisconnectError::ProviderUnavailable(detail) => {
                tracing::warn!(%detail, "revocation failed; nothing deleted");
                ApiError::UpstreamUnavailable(
                    "the provider cannot be reached to revoke the account".into(),
                )
            }
            DisconnectError::Database(e) => e.into(),
            DisconnectError::Load(e) => e.into(),
        }
    }
}

impl From<EndOthersError> for ApiError {
    fn from(e: EndOthersError) -> Self {
        match e {
            e @ EndOthersError::LoginTooOld => ApiError::RecentLoginRequired(e.to_string()),
            EndOthersError::Database(e) => e.into(),
        }
    }
}
