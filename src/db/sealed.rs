//! Every column that holds a value sealed with the key ring, and the SQL that finds, counts and
//! re-seals the values that the ring's first key did not seal (`courier reseal`, and the
//! `courier_sealed_rows_under_old_keys` gauge).
//!
//! A new sealed column of a listed table is one more name in its `columns`; a new table with
//! sealed columns is one more entry in `SEALED_TABLES` (its primary key, and the associated
//! data its own module binds each value to — the same function, so the two cannot drift).

use secrecy::zeroize::Zeroizing;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::crypto::{CryptoError, KeyRing};
use crate::db::{client_dpop_keys, linked_accounts, secrets, service_tokens, session_tokens};

/// A table with sealed columns.
pub struct SealedTable {
    pub table: &'static str,
    /// The primary key as (column, Postgres type). A row is named by the text of these values.
    key: &'static [(&'static str, &'static str)],
    /// The sealed `bytea` columns, nullable or not.
    pub columns: &'static [&'static str],
    /// The associated data of `column` in the row named by `id` (its key values, in order),
    /// exactly as the table's own module seals it; `None` when `id` cannot name a row here.
    aad: fn(column: &str, id: &[String]) -> Option<Vec<u8>>,
}

/// Where courier keeps sealed values. Pending-login cookies are sealed too, but live in the
/// browser for at most 10 minutes, so they need no re-sealing.
pub static SEALED_TABLES: &[SealedTable] = &[
    SealedTable {
        table: "session_tokens",
        key: &[("session_id", "uuid")],
        columns: &["access_token", "refresh_token", "id_token", "dpop_key"],
        aad: |column, id| Some(session_tokens::aad(column, id.first()?.parse().ok()?)),
    },
    SealedTable {
        table: "linked_accounts",
        key: &[("user_id", "uuid"), ("provider", "text")],
        columns: &["access_token", "refresh_token", "dpop_key"],
        aad: |column, id| {
            Some(linked_accounts::aad(
                column,
                id.first()?.parse().ok()?,
                id.get(1)?,
            ))
        },
    },
    SealedTable {
        table: "service_tokens",
        key: &[("owner_key", "text"), ("target", "text")],
        columns: &["access_token"],
        aad: |_, id| Some(service_tokens::aad(id.first()?, id.get(1)?)),
    },
    SealedTable {
        table: "client_dpop_keys",
        key: &[("provider", "text")],
        columns: &["private_key"],
        aad: |_, id| Some(client_dpop_keys::aad(id.first()?)),
    },
    SealedTable {
        table: "shared_secrets",
        key: &[("name", "text")],
        columns: &["sealed"],
        aad: |_, id| Some(secrets::aad(id.first()?)),
    },
];

/// What became of one row that had a value under another key.
#[derive(Debug)]
pub enum RowOutcome {
    /// Every value is now sealed by the first key.
    Resealed,
    /// Nothing to do: a concurrent writer (a refresh) already sealed it under the first key.
    Current,
    /// The row was deleted meanwhile (a logout, a disconnect).
    Gone,
    /// Another transaction (a refresh waiting on its provider) held the row's lock too long.
    Busy,
    /// A value does not open with any configured key; the row is left as it was.
    Unopenable {
        column: &'static str,
        error: CryptoError,
    },
}

/// How long a re-seal waits for a row that a refresh holds locked before calling it busy.
const LOCK_TIMEOUT: &str = "10s";

impl SealedTable {
    /// Names a row for people: `user_id=…, provider=…` (ids only, never a sealed value).
    pub fn describe(&self, id: &[String]) -> String {
        self.key
            .iter()
            .zip(id)
            .map(|((column, _), value)| format!("{column}={value}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True for a row with any value not sealed by the first key; `$1` is the sealing prefix.
    /// Values are compared by their first bytes (version and key id), so nothing is opened.
    fn stale_condition(&self) -> String {
        let any: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("({c} IS NOT NULL AND substring({c} from 1 for 5) <> $1)"))
            .collect();
        format!("({})", any.join(" OR "))
    }

    /// `k1 = $n::type AND …`, numbering from `first`.
    fn key_match(&self, first: usize) -> String {
        self.key
            .iter()
            .enumerate()
            .map(|(i, (column, ty))| format!("{column} = ${}::{ty}", first + i))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many rows have a value that `keys`' first key did not seal.
    pub async fn count_stale(&self, pool: &PgPool, keys: &KeyRing) -> Result<i64, sqlx::Error> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            self.table,
            self.stale_condition()
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(keys.sealing_prefix().to_vec())
            .fetch_one(pool)
            .await
    }

    pub async fn count_all(&self, pool: &PgPool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            self.table
        )))
        .fetch_one(pool)
        .await
    }

    /// Up to `limit` rows with a stale value, in key order after `after` (keyset paging, so a
    /// row that cannot be re-sealed is not met again). Returns their ids.
    pub async fn stale_batch(
        &self,
        pool: &PgPool,
        keys: &KeyRing,
        after: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<Vec<String>>, sqlx::Error> {
        let key_list = self.key_list();
        let select: Vec<String> = self.key.iter().map(|(c, _)| format!("{c}::text")).collect();
        let page = match after {
            Some(_) => {
                let bounds: Vec<String> = self
                    .key
                    .iter()
                    .enumerate()
                    .map(|(i, (_, ty))| format!("${}::{ty}", i + 2))
                    .collect();
                format!("AND ({key_list}) > ({})", bounds.join(", "))
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {} {page} ORDER BY {key_list} LIMIT {limit}",
            select.join(", "),
            self.table,
            self.stale_condition(),
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(keys.sealing_prefix().to_vec());
        for value in after.unwrap_or_default() {
            query = query.bind(value);
        }
        let rows = query.fetch_all(pool).await?;
        rows.iter()
            .map(|row: &PgRow| (0..self.key.len()).map(|i| row.try_get(i)).collect())
            .collect()
    }

    /// Re-seals the stale values of one row under the first key, in a transaction of its own
    /// that holds the row's lock: a refresh that replaced the tokens meanwhile is either done
    /// (and its values are what gets re-sealed) or waits until this commits, so a newer token
    /// is never overwritten with an older one. The plaintext and the associated data stay the
    /// same; `updated_at` is left alone, since the tokens did not change.
    pub async fn reseal_row(
        &self,
        pool: &PgPool,
        keys: &KeyRing,
        id: &[String],
    ) -> Result<RowOutcome, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
        )))
        .execute(&mut *tx)
        .await?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {} FOR UPDATE",
            self.columns.join(", "),
            self.table,
            self.key_match(1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in id {
            query = query.bind(value);
        }
        let row = match query.fetch_optional(&mut *tx).await {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(RowOutcome::Gone),
            Err(e) if is_lock_timeout(&e) => return Ok(RowOutcome::Busy),
            Err(e) => return Err(e),
        };

        let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(self.columns.len());
        let mut changed = false;
        for (i, &column) in self.columns.iter().enumerate() {
            let sealed: Option<Vec<u8>> = row.try_get(i)?;
            let value = match sealed {
                Some(sealed) if keys.is_stale(&sealed) => {
                    let Some(aad) = (self.aad)(column, id) else {
                        return Ok(RowOutcome::Unopenable {
                            column,
                            error: CryptoError::Malformed,
                        });
                    };
                    // Dropping the transaction on return rolls it back: the row stays as it was.
                    let plain = match keys.open(&sealed, &aad) {
                        Ok(plain) => Zeroizing::new(plain),
                        Err(error) => return Ok(RowOutcome::Unopenable { column, error }),
                    };
                    changed = true;
                    Some(keys.seal(&plain, &aad))
                }
                other => other,
            };
            values.push(value);
        }
        if !changed {
            return Ok(RowOutcome::Current);
        }

        let assignments: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 1))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            self.table,
            assignments.join(", "),
            self.key_match(self.columns.len() + 1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in values {
            query = query.bind(value);
        }
        for value in id {
            query = query.bind(value);
        }
        query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(RowOutcome::Resealed)
    }
}

/// `lock_not_available`: `lock_timeout` passed while waiting for a row lock.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}
