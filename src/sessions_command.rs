//! `courier sessions list|end`: an operator's view of users' sessions, and ending them for
//! incident response. Ending goes through `session::end` like every other ending: the sessions
//! are refused by every running instance once the command reports them ended, and their
//! refresh tokens are revoked at the provider.
//!
//! `list` prints one JSON object per line (JSON Lines) on stdout, so that its output can be
//! read by `grep` and `jq` alike; `end` prints `ended N session(s)` and what the revocations
//! did. Exit codes: 0 when done, 1 when the command failed — or when sessions ended but some
//! refresh token could not be revoked (named on stderr) — and 2 for a configuration error.

use std::io::Write;

use anyhow::{Context, bail};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::db;
use crate::db::sessions::Selection;
use crate::oidc::ProviderRegistry;
use crate::session::end;

#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// Print a user's live sessions, one JSON object per line.
    List {
        /// The user's subject (`sub`) at the login provider.
        #[arg(long)]
        sub: String,
        /// The login provider (needed only when several providers have `login = true`).
        #[arg(long)]
        provider: Option<String>,
    },
    /// End sessions on every running instance and revoke their refresh tokens.
    #[command(group(clap::ArgGroup::new("whose").required(true).args(["sub", "user", "all"])))]
    End {
        /// Every session of the user with this subject (`sub`) at the login provider.
        #[arg(long)]
        sub: Option<String>,
        /// Every session of the user with this id (`user_id` in `/api/me`).
        #[arg(long)]
        user: Option<Uuid>,
        /// Every session of every user.
        #[arg(long)]
        all: bool,
        /// The login provider: which provider's `sub` (needed only when several providers
        /// have `login = true`); with `--user` or `--all`, only the sessions that came from it.
        #[arg(long)]
        provider: Option<String>,
    },
}

/// The login provider `requested` names, checked against the configuration; without one, the
/// only login provider, or an error when there are several.
fn login_provider<'a>(config: &'a Config, requested: Option<&'a str>) -> anyhow::Result<&'a str> {
    let logins: Vec<&str> = config
        .providers
        .iter()
        .filter(|p| p.login)
        .map(|p| p.id.as_str())
        .collect();
    match requested {
        Some(id) if logins.contains(&id) => Ok(id),
        Some(id) if config.providers.iter().any(|p| p.id == id) => bail!(
            "--provider {id}: not a login provider (no login = true), so it has no sessions; \
             the login providers are: {}",
            logins.join(", ")
        ),
        Some(id) => bail!(
            "--provider {id}: no such provider; the login providers are: {}",
            logins.join(", ")
        ),
        None => match logins.as_slice() {
            [only] => Ok(only),
            _ => bail!(
                "several providers have login = true ({}): say which with --provider",
                logins.join(", ")
            ),
        },
    }
}

pub async fn run(config: &Config, command: SessionsCommand) -> anyhow::Result<()> {
    let pool = db::pool(config.database_url(), 2)?;
    match command {
        SessionsCommand::List { sub, provider } => {
            let provider = login_provider(config, provider.as_deref())?;
            let selection = Selection {
                provider: Some(provider),
                subject: Some(&sub),
                live_at: Some(Utc::now()),
                ..Selection::default()
            };
            let sessions = db::sessions::list(&pool, &selection)
                .await
                .context("listing the sessions")?;
            let mut out = std::io::stdout().lock();
            for s in &sessions {
                let line = json!({
                    "id": s.public_id,
                    "user_id": s.user_id,
                    "provider": s.provider,
                    "sub": s.subject,
                    "created_at": s.created_at,
                    "last_seen_at": s.last_seen_at,
                    "expires_at": s.absolute_expires_at,
                    "idle_expires_at": s.idle_expires_at,
                    "user_agent": s.user_agent,
                });
                writeln!(out, "{line}")?;
            }
            eprintln!("{} live session(s)", sessions.len());
            Ok(())
        }
        SessionsCommand::End {
            sub,
            user,
            all,
            provider,
        } => {
            let keys = KeyRing::from_config(&config.security.encryption_keys)
                .map_err(|(i, m)| anyhow::anyhow!("security.encryption_keys[{i}]: {m}"))?;
            let selection = match (sub.as_deref(), user, all) {
                (Some(sub), None, false) => Selection {
                    provider: Some(login_provider(config, provider.as_deref())?),
                    subject: Some(sub),
                    ..Selection::default()
                },
                (None, Some(user), false) => Selection {
                    user_id: Some(user),
                    provider: provider
                        .as_deref()
                        .map(|p| login_provider(config, Some(p)))
                        .transpose()?,
                    ..Selection::default()
                },
                (None, None, true) => Selection {
                    provider: provider
                        .as_deref()
                        .map(|p| login_provider(config, Some(p)))
                        .transpose()?,
                    ..Selection::default()
                },
                _ => bail!("give exactly one of --sub, --user and --all"),
            };
            end_sessions(config, &pool, &keys, &selection).await
        }
    }
}

async fn end_sessions(
    config: &Config,
    pool: &sqlx::PgPool,
    keys: &KeyRing,
    selection: &Selection<'_>,
) -> anyhow::Result<()> {
    // Not listening: this process serves nothing, it only waits for the instances that do.
    let cache = AppCache::default();
    let ended = end::end_selected(pool, keys, &cache, selection, Utc::now())
        .await
        .context("ending the sessions")?;
    println!("ended {} session(s)", ended.live);
    if ended.refresh_tokens.is_empty() {
        return Ok(());
    }
    let providers = ProviderRegistry::new(config, crate::oidc::http::build_client());
    providers.discover_missing().await;
    let revoked = end::revoke_refresh_tokens(&providers, ended.refresh_tokens).await;
    println!(
        "revoked {} refresh token(s); {} at a provider without a revocation endpoint; {} failed",
        revoked.revoked, revoked.unsupported, revoked.failed
    );
    if revoked.failed > 0 {
        bail!(
            "{} refresh token(s) could not be revoked (provider unreachable or failing; see \
             the warnings above); their sessions have ended all the same",
            revoked.failed
        );
    }
    Ok(())
}
