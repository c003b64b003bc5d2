//! Token sets: what a provider's token endpoint gave courier for a user.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

/// Tokens as kept server-side. Debug output is redacted by `SecretString`.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
}
