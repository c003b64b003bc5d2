// No `unwrap`/`expect` outside tests (see lib.rs).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use courier::config::Config;
use courier::startup::Application;
use courier::telemetry::{self, LogFormat};

/// courier: a backend-for-frontend for single-page apps.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "COURIER_CONFIG",
        default_value = "courier.toml"
    )]
    config: PathBuf,
    /// Log lines as text or JSON.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run pending migrations, then serve (the default).
    Serve,
    /// Run pending migrations and exit.
    Migrate,
    /// Validate the configuration without serving.
    CheckConfig {
        /// Also fetch each provider's metadata and keys and report what it supports.
        #[arg(long)]
        online: bool,
    },
    /// Print a new base64 encryption key.
    GenKey,
    /// Re-encrypt every stored secret under the first key, so that older keys can be removed.
    Reseal,
    /// List or end users' sessions (incident response), on every running instance at once.
    Sessions {
        #[command(subcommand)]
        command: courier::sessions_command::SessionsCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::GenKey = command {
        println!("{}", courier::crypto::generate_key());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("courier: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig { online } = command {
        return courier::check::run(&cli.config, &config, online);
    }
    let telemetry = match telemetry::init(cli.log_format, &config.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("courier: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The same warnings check-config prints; serve starts anyway.
    for warning in config.warnings() {
        tracing::warn!(key = %warning.key, "{}: {}", cli.config.display(), warning.message);
    }
    let result = actix_web::rt::System::new().block_on(async move {
        match command {
            Command::Migrate => migrate(&config).await,
            Command::Reseal => courier::reseal::run(&config).await,
            Command::Sessions { command } => courier::sessions_command::run(&config, command).await,
            _ => serve(config).await,
        }
    });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "courier stopped");
            eprintln!("courier: {e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = courier::db::pool(config.database_url(), config.database.max_connections)?;
    courier::db::migrate(&pool).await?;
    tracing::info!("migrations are up to date");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.server.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (server.listen): {e}",
            config.server.listen
        )
    })?;
    tracing::info!(listen = %config.server.listen, public_url = %config.server.public_url, "courier starting");
    let app = Application::build(config, listener).await?;
    app.run_until_signalled().await?;
    Ok(())
}
