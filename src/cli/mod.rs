//! The `openagents-runtime` command line (clap). One enum variant and one file per subcommand:
//! adding a subcommand is a variant here, an arm in [`run`], and its own file with an `Args` type
//! and an `async fn run(args) -> anyhow::Result<()>`.

pub mod migrate;
pub mod reproject;
pub mod serve;
pub mod token;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_DATA_DIR;
use crate::telemetry::LogFormat;

/// The OpenAgents Runtime: an event-sourced execution authority for AI-agent runs and workers.
///
/// Quick start: `openagents-runtime serve` runs on an embedded journal in ./.openagents-runtime
/// (nothing to set up). Point it at PostgreSQL with --database-url or DATABASE_URL.
#[derive(Debug, Parser)]
#[command(name = "openagents-runtime", version, about, long_about)]
pub struct Cli {
    /// Log line format (logs go to stderr; filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OA_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the runtime: the HTTP command API and background tasks, until SIGINT/SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// Apply pending database migrations, then exit (serve also migrates on start).
    Migrate(migrate::MigrateArgs),
    /// Mint tokens for tests and operators.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Rebuild read models from the journal: everything (a new epoch per topic) or one run,
    /// worker or payment; --status shows the projectors' checkpoints.
    Reproject(reproject::ReprojectArgs),
    /// Replay fixtures, REPLAY.jsonl files or compat histories on a fresh journal and compare
    /// every output byte for byte (--check, default), or rewrite the expectations (--bless);
    /// `--journal` checks a live journal for drift.
    Replay(crate::replay::ReplayArgs),
    /// Export verifiable audit bundles of the journal, and verify them.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
    /// Follow Khala sync topics like a client: hydrate, subscribe, print deltas, persist the
    /// watermark, reconnect and resume.
    Watch(sync_gateway::cli::WatchArgs),
    /// The Lightning lane's operator tools (L402 paywall compile and reconcile).
    #[command(subcommand)]
    Lightning(LightningCommand),
}

/// `openagents-runtime lightning …`
#[derive(Debug, Subcommand)]
pub enum LightningCommand {
    /// L402 paywalls: compile intents into gateway config; reconcile a gateway to it.
    #[command(subcommand)]
    L402(lightning::cli::L402Command),
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the subcommand reports; `main` prints it and exits non-zero.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Token(command) => token::run(command).await,
        Command::Reproject(args) => reproject::run(args).await,
        Command::Replay(args) => crate::replay::run(args).await,
        Command::Audit(command) => crate::audit::run(command).await,
        Command::Watch(args) => sync_gateway::cli::run_watch(args).await,
        Command::Lightning(LightningCommand::L402(command)) => {
            lightning::cli::run_l402(command).await
        }
    }
}

/// Where the journal lives; shared by the subcommands that open it.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (postgres://user:pass@host:5432/db). Without it, the embedded SQLite
    /// journal in --data-dir is used.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Data directory of the embedded journal and the generated dev signing secret.
    #[arg(long, env = "OA_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// PostgreSQL connection pool size.
    #[arg(long, env = "OA_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

impl DatabaseArgs {
    pub fn config(&self) -> engine::DatabaseConfig {
        engine::DatabaseConfig::from_parts(
            self.database_url.as_deref(),
            &self.data_dir,
            self.db_max_connections,
        )
    }

    /// Whether this is the embedded journal (no PostgreSQL URL).
    pub fn embedded(&self) -> bool {
        matches!(self.config(), engine::DatabaseConfig::Sqlite { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_to_the_embedded_journal() {
        let cli = Cli::try_parse_from(["openagents-runtime", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        if std::env::var_os("DATABASE_URL").is_none() {
            assert!(args.database.embedded());
        }
    }
}
