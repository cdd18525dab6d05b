//! `openagents-runtime migrate`: apply pending migrations and exit.

use anyhow::Context;
use clap::Args;

use crate::cli::DatabaseArgs;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Applies pending migrations (safe to run from several processes at once).
///
/// # Errors
/// When the database cannot be opened or a migration fails (e.g. an applied one was edited).
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let config = args.database.config();
    let database = engine::Database::connect(&config)
        .await
        .with_context(|| format!("open {}", config.describe()))?;
    let pending = database.pending_migrations().await?;
    database.migrate().await?;
    println!(
        "{}: applied {} migration(s); the schema is up to date",
        config.describe(),
        pending.len()
    );
    database.close().await;
    Ok(())
}
