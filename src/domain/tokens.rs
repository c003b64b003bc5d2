//! Tokens as courier keeps them, and the key of their owner.

use std::fmt;
use std::sync::Arc;

use crate::dpop::DpopKey;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

/// Tokens as kept server-side. Debug output is redacted by `SecretString`.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the access token was issued (as courier saw it): with `expires_at`, its lifetime.
    pub obtained_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
}

/// An access token for one call.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub secret: SecretString,
    /// It was got because a service answered 401 to the one before it: a 401 to this one is
    /// passed on rather than answered with yet another refresh.
    pub after_rejection: bool,
    /// The DPoP key the token is bound to: each call carries `Authorization: DPoP` and a
    /// proof signed with it. `None` for a bearer token.
    pub dpop: Option<Arc<DpopKey>>,
}

/// What the cache keeps of a token row: never the refresh token.
#[derive(Debug, Clone)]
pub struct CachedAccess {
    pub access_token: SecretString,
    pub expires_at: Option<DateTime<Utc>>,
    pub obtained_at: Option<DateTime<Utc>>,
    /// The row's generation when it was read (`tokens` compares it to see a refresh).
    pub generation: i64,
    pub after_rejection: bool,
    pub needs_reauth: bool,
    /// The DPoP key of the token's owner, when its provider binds tokens with DPoP.
    pub dpop: Option<Arc<DpopKey>>,
}

impl CachedAccess {
    pub fn token(&self) -> AccessToken {
        AccessToken {
            secret: self.access_token.clone(),
            after_rejection: self.after_rejection,
            dpop: self.dpop.clone(),
        }
    }

    /// The token, without copying its secret (the proxy path's common case: a copy is a
    /// kilobyte allocated, copied and zeroed again).
    pub fn into_token(self) -> AccessToken {
        AccessToken {
            secret: self.access_token,
            after_rejection: self.after_rejection,
            dpop: self.dpop,
        }
    }

    /// Whether this is `token`.
    pub fn is(&self, token: Option<&SecretString>) -> bool {
        token.is_some_and(|t| t.expose_secret() == self.access_token.expose_secret())
    }
}

/// Whose tokens: a session's (from its login provider), or a user's linked account at a
/// provider. Its text form (`session:<id>`, `linked:<user id>:<provider>`) is the key of the
/// owner's cache entry and refresh lease, and the payload of the cache notifications that the
/// triggers of migration 0004 send; `Display` and `FromStr` are the one place that spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnerKey {
    Session(Uuid),
    Linked { user_id: Uuid, provider: String },
}

impl OwnerKey {
    pub fn linked(user_id: Uuid, provider: &str) -> Self {
        OwnerKey::Linked {
            user_id,
            provider: provider.to_owned(),
        }
    }
}

impl fmt::Display for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnerKey::Session(id) => write!(f, "session:{id}"),
            OwnerKey::Linked { user_id, provider } => write!(f, "linked:{user_id}:{provider}"),
        }
    }
}

/// A text that is not an owner key.
#[derive(Debug, thiserror::Error)]
#[error("not a token owner key")]
pub struct NotAnOwnerKey;

impl FromStr for OwnerKey {
    type Err = NotAnOwnerKey;

    fn from_str(s: &str) -> Result<Self, NotAnOwnerKey> {
        if let Some(id) = s.strip_prefix("session:") {
            return id.parse().map(OwnerKey::Session).map_err(|_| NotAnOwnerKey);
        }
        let (user_id, provider) = s
            .strip_prefix("linked:")
            .and_then(|rest| rest.split_once(':'))
            .ok_or(NotAnOwnerKey)?;
        if provider.is_empty() {
            return Err(NotAnOwnerKey);
        }
        Ok(OwnerKey::Linked {
            user_id: user_id.parse().map_err(|_| NotAnOwnerKey)?,
            provider: provider.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_key_reads_back_what_it_writes() {
        let user = Uuid::new_v4();
        for key in [
            OwnerKey::Session(user),
            OwnerKey::linked(user, "github"),
            // Provider ids may hold a colon; only the first two separate.
            OwnerKey::linked(user, "corp:eu"),
        ] {
            assert_eq!(key.to_string().parse::<OwnerKey>().ok(), Some(key));
        }
    }

    #[test]
    fn an_owner_key_has_the_triggers_spelling() {
        let id = Uuid::nil();
        assert_eq!(
            OwnerKey::Session(id).to_string(),
            "session:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            OwnerKey::linked(id, "github").to_string(),
            "linked:00000000-0000-0000-0000-000000000000:github"
        );
    }

    #[test]
    fn other_texts_are_not_owner_keys() {
        for text in [
            "",
            "session:",
            "session:x",
            "linked:",
            "linked:x:github",
            "ack:1:2",
        ] {
            assert!(text.parse::<OwnerKey>().is_err(), "{text}");
        }
        let user = Uuid::new_v4();
        assert!(format!("linked:{user}:").parse::<OwnerKey>().is_err());
    }
}
