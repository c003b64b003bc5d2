//! `courier reseal`: re-encrypts every stored secret under the first key of `encryption_keys`,
//! so that older keys can be removed. Safe while instances serve on the same database: rows go
//! in small batches, each re-sealed in a short transaction of its own under the row's lock
//! (see `db::sealed`), rows already under the first key are skipped, and running it again
//! changes nothing.

use std::io::Write;

use sqlx::PgPool;

use crate::config::Config;
use crate::crypto::{CryptoError, KeyRing};
use crate::db;
use crate::db::sealed::{RowOutcome, SEALED_TABLES, SealedTable};

/// Rows listed per query; each is then re-sealed in its own transaction.
const BATCH: i64 = 100;

/// A row left as it was because one of its values opens under no configured key.
#[derive(Debug)]
pub struct Unopenable {
    /// The row's key values (`session_id=…`), never a sealed value.
    pub row: String,
    pub column: &'static str,
    pub error: CryptoError,
}

/// What a run did to one table.
#[derive(Debug, Default)]
pub struct TableReport {
    pub table: &'static str,
    /// Rows that had a value under another key and now have all of them under the first.
    pub resealed: u64,
    /// Rows that were already under the first key (counted when the run began), or that a
    /// concurrent writer re-sealed first.
    pub current: u64,
    pub unopenable: Vec<Unopenable>,
    /// Rows whose lock a refresh held too long, twice: named, for a later run.
    pub busy: Vec<String>,
}

impl TableReport {
    pub fn is_complete(&self) -> bool {
        self.unopenable.is_empty() && self.busy.is_empty()
    }
}

/// Re-seals every table listed in `db::sealed::SEALED_TABLES`.
pub async fn reseal_all(pool: &PgPool, keys: &KeyRing) -> Result<Vec<TableReport>, sqlx::Error> {
    let mut reports = Vec::with_capacity(SEALED_TABLES.len());
    for table in SEALED_TABLES {
        reports.push(reseal_table(pool, keys, table).await?);
    }
    Ok(reports)
}

async fn reseal_table(
    pool: &PgPool,
    keys: &KeyRing,
    table: &SealedTable,
) -> Result<TableReport, sqlx::Error> {
    let total = table.count_all(pool).await?;
    let stale = table.count_stale(pool, keys).await?;
    let mut report = TableReport {
        table: table.table,
        current: u64::try_from(total - stale).unwrap_or(0),
        ..TableReport::default()
    };
    let mut busy = Vec::new();
    let mut after: Option<Vec<String>> = None;
    loop {
        let batch = table
            .stale_batch(pool, keys, after.as_deref(), BATCH)
            .await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.clone());
        for id in batch {
            if let Some(id) = reseal_one(pool, keys, table, id, &mut report).await? {
                busy.push(id);
            }
        }
    }
    // A refresh holds its row for as long as its provider takes; one more try each.
    for id in busy {
        if let Some(id) = reseal_one(pool, keys, table, id, &mut report).await? {
            report.busy.push(table.describe(&id));
        }
    }
    Ok(report)
}

/// Re-seals one row and counts it; gives the id back when the row was busy.
async fn reseal_one(
    pool: &PgPool,
    keys: &KeyRing,
    table: &SealedTable,
    id: Vec<String>,
    report: &mut TableReport,
) -> Result<Option<Vec<String>>, sqlx::Error> {
    match table.reseal_row(pool, keys, &id).await? {
        RowOutcome::Resealed => report.resealed += 1,
        RowOutcome::Current => report.current += 1,
        RowOutcome::Gone => {}
        RowOutcome::Busy => return Ok(Some(id)),
        RowOutcome::Unopenable { column, error } => report.unopenable.push(Unopenable {
            row: table.describe(&id),
            column,
            error,
        }),
    }
    Ok(None)
}

/// The command: re-seals, prints a line per table on stdout and one per row it could not
/// re-seal on stderr; an error (exit 1) unless every row is now under the first key.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let keys = KeyRing::from_config(&config.security.encryption_keys)
        .map_err(|(i, m)| anyhow::anyhow!("security.encryption_keys[{i}]: {m}"))?;
    // One connection does the work; a second lists the next batch.
    let pool = db::pool(config.database_url(), 2)?;
    // Every instance re-seals the cookie key under its first key when it starts. Under another
    // key, the instances have not been restarted with this key first yet: values re-sealed
    // now would not open there.
    if let Some(sealed) = db::secrets::sealed(&pool, db::secrets::SESSION_COOKIE_KEY).await?
        && keys.is_stale(&sealed)
    {
        anyhow::bail!(
            "the serving instances seal with another key than the first of \
             security.encryption_keys (shared_secrets.{} is sealed under it): restart every \
             instance with this configuration first, then run reseal; nothing was changed",
            db::secrets::SESSION_COOKIE_KEY
        );
    }
    let reports = reseal_all(&pool, &keys).await?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut left = 0;
    for r in &reports {
        writeln!(
            out,
            "{}: {} re-sealed, {} already under the first key, {} not opened, {} busy",
            r.table,
            r.resealed,
            r.current,
            r.unopenable.len(),
            r.busy.len()
        )?;
        for u in &r.unopenable {
            writeln!(
                err,
                "courier: {} ({}): {} does not open with any configured key ({}); left as it was",
                r.table, u.row, u.column, u.error
            )?;
        }
        for row in &r.busy {
            writeln!(
                err,
                "courier: {} ({row}): locked by a refresh the whole time; run reseal again",
                r.table
            )?;
        }
        left += r.unopenable.len() + r.busy.len();
    }
    if left > 0 {
        anyhow::bail!(
            "{left} row(s) are not under the first key (named above): keep the keys they were \
             sealed with in security.encryption_keys"
        );
    }
    Ok(())
}
