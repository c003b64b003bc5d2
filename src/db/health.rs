//! Whether Postgres answers, for `/readyz`.

use sqlx::PgPool;

use super::DbError;

/// One round trip to Postgres.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
