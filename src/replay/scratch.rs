//! Fresh, throwaway journals for replays: an embedded SQLite file in a temporary directory (the
//! default), or a new PostgreSQL database created next to the one `--database-url` names (the
//! role needs CREATEDB) and dropped afterwards.
//!
//! Embedded scratch journals are not migrated one by one: the first one of the process is
//! migrated and copied (`VACUUM INTO`) into an in-memory template, and every scratch journal
//! starts as a copy of those bytes (the same schema and `_sqlx_migrations` rows; ADR 0124).

use std::str::FromStr;

use anyhow::Context;
use engine::{Database, DatabaseConfig};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

/// Where scratch journals are created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScratchTarget {
    Embedded,
    /// A PostgreSQL server, reached through this URL (its database is only used to connect).
    Postgres {
        url: String,
    },
}

impl ScratchTarget {
    pub fn from_url(database_url: Option<&str>) -> Self {
        match database_url {
            Some(url) if !url.trim().is_empty() => ScratchTarget::Postgres {
                url: url.to_owned(),
            },
            _ => ScratchTarget::Embedded,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            ScratchTarget::Embedded => "sqlite",
            ScratchTarget::Postgres { .. } => "postgres",
        }
    }
}

/// A migrated, empty journal that disappears with [`ScratchDb::dispose`] (or, for SQLite, on drop).
pub struct ScratchDb {
    pub database: Database,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

pub use engine::db::with_database;

impl ScratchDb {
    /// Creates and migrates a fresh journal.
    ///
    /// # Errors
    /// When the directory or database cannot be created or migrated.
    pub async fn create(target: &ScratchTarget) -> anyhow::Result<Self> {
        match target {
            ScratchTarget::Embedded => {
                let dir = tempfile::tempdir().context("create a temporary directory")?;
                let path = dir.path().join(engine::db::SQLITE_FILE);
                std::fs::write(&path, migrated_template().await?)
                    .context("write the scratch journal")?;
                // A scratch journal is thrown away: no fsync per commit.
                let database = Database::connect_scratch_sqlite(&path)
                    .await
                    .context("open the scratch journal")?;
                Ok(Self {
                    database,
                    postgres: None,
                    _dir: Some(dir),
                })
            }
            ScratchTarget::Postgres { url } => {
                let name = format!("oa_replay_{}", uuid::Uuid::new_v4().simple());
                let mut admin = admin_connection(url).await?;
                admin
                    .execute(format!("CREATE DATABASE \"{name}\"").as_str())
                    .await
                    .context("create the scratch database (the role needs CREATEDB)")?;
                let scratch_url = with_database(url, &name);
                let database = Database::connect(&DatabaseConfig::Postgres {
                    url: scratch_url,
                    max_connections: 4,
                })
                .await
                .context("connect to the scratch database")?;
                database
                    .migrate()
                    .await
                    .context("migrate the scratch database")?;
                Ok(Self {
                    database,
                    postgres: Some((url.clone(), name)),
                    _dir: None,
                })
            }
        }
    }

    /// The PostgreSQL database's name, for a PostgreSQL scratch journal.
    pub fn name(&self) -> Option<String> {
        self.postgres.as_ref().map(|(_, name)| name.clone())
    }

    /// Closes the journal and drops a PostgreSQL scratch database.
    pub async fn dispose(self) {
        self.database.close().await;
        if let Some((url, name)) = &self.postgres {
            if let Ok(mut admin) = admin_connection(url).await {
                let _ = admin
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await;
            }
        }
    }
}

/// The bytes of a freshly migrated embedded journal, made once per process.
static TEMPLATE: OnceCell<Vec<u8>> = OnceCell::const_new();

async fn migrated_template() -> anyhow::Result<&'static [u8]> {
    let bytes = TEMPLATE
        .get_or_try_init(|| async {
            let dir = tempfile::tempdir().context("create a temporary directory")?;
            let database =
                Database::connect_scratch_sqlite(&dir.path().join(engine::db::SQLITE_FILE))
                    .await
                    .context("open the template journal")?;
            database
                .migrate()
                .await
                .context("migrate the template journal")?;
            let copy = dir.path().join("template.sqlite");
            if let Database::Sqlite { pool, .. } = &database {
                // One self-contained file, whatever is still in the write-ahead log.
                sqlx::query("VACUUM INTO ?")
                    .bind(copy.to_string_lossy().into_owned())
                    .execute(pool)
                    .await
                    .context("copy the template journal")?;
            }
            database.close().await;
            std::fs::read(&copy).context("read the template journal")
        })
        .await?;
    Ok(bytes)
}

async fn admin_connection(url: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url).context("invalid --database-url")?;
    PgConnection::connect_with(&options)
        .await
        .context("connect to PostgreSQL")
}
