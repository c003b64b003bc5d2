//! courier's own DPoP key per provider, for its client-credentials tokens: made once, by
//! whichever instance needs it first, and shared by all through Postgres, sealed.

use secrecy::zeroize::Zeroizing;
use sqlx::PgPool;

use crate::crypto::{CryptoError, KeyRing};
use crate::db::session_tokens::LoadError;
use crate::dpop::DpopKey;

/// The associated data binding a sealed key to its row (also `db::sealed`'s).
pub(crate) fn aad(provider: &str) -> Vec<u8> {
    format!("client_dpop_keys.private_key:{provider}").into_bytes()
}

/// The provider's key, stored as `candidate` when there is none yet (the first writer wins,
/// so every instance ends up signing with the same key).
pub async fn get_or_insert(
    pool: &PgPool,
    keys: &KeyRing,
    provider: &str,
    candidate: &DpopKey,
) -> Result<DpopKey, LoadError> {
    sqlx::query(
        "INSERT INTO client_dpop_keys (provider, private_key) VALUES ($1, $2)
         ON CONFLICT (provider) DO NOTHING",
    )
    .bind(provider)
    .bind(keys.seal(candidate.pkcs8(), &aad(provider)))
    .execute(pool)
    .await?;
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT private_key FROM client_dpop_keys WHERE provider = $1")
            .bind(provider)
            .fetch_one(pool)
            .await?;
    let der = Zeroizing::new(keys.open(&sealed, &aad(provider))?);
    DpopKey::from_pkcs8(&der).map_err(|_| LoadError::Sealed(CryptoError::Malformed))
}
