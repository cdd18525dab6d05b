//! Database handles: connecting to PostgreSQL or the embedded SQLite file, running migrations and
//! checking that they are applied.
//!
//! SQL in this workspace uses runtime-checked `sqlx::query` (not the `query!` macros), because the
//! same code base targets two databases; every statement is exercised by a test against a real
//! database instead.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

use crate::journal::{AnyJournal, PgJournal, SqliteJournal, SqliteWriter};

/// Migrations for PostgreSQL (`migrations/postgres`).
pub static PG_MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");
/// Migrations for the embedded SQLite journal (`migrations/sqlite`).
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// File name of the embedded journal inside the data directory.
pub const SQLITE_FILE: &str = "journal.db";

/// Connections of a scratch journal's pool. A replay runs one step at a time, and each connection
/// of sqlx's SQLite driver is a thread of its own that every statement is handed to: with one
/// connection every statement goes to the same (warm) thread, and `replay --check` ran ~40% faster
/// than with 8 (docs/BENCHMARKS.md). Nothing on a scratch journal holds a connection while it
/// waits for another (the replay tests and `bench replay` would stall on the pool's timeout).
const SCRATCH_CONNECTIONS: u32 = 1;

/// Where the journal lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// A PostgreSQL URL (`postgres://…`).
    Postgres { url: String, max_connections: u32 },
    /// The embedded SQLite file.
    Sqlite { path: PathBuf },
}

impl DatabaseConfig {
    /// PostgreSQL if a URL is given, else `journal.db` in `data_dir`.
    pub fn from_parts(database_url: Option<&str>, data_dir: &Path, max_connections: u32) -> Self {
        match database_url {
            Some(url) if !url.trim().is_empty() => DatabaseConfig::Postgres {
                url: url.to_owned(),
                max_connections,
            },
            _ => DatabaseConfig::Sqlite {
                path: data_dir.join(SQLITE_FILE),
            },
        }
    }

    /// A description safe to log (no password).
    pub fn describe(&self) -> String {
        match self {
            DatabaseConfig::Postgres { url, .. } => match url::redact(url) {
                Some(redacted) => format!("postgres ({redacted})"),
                None => "postgres".to_owned(),
            },
            DatabaseConfig::Sqlite { path } => format!("sqlite ({})", path.display()),
        }
    }
}

mod url {
    /// `postgres://user:secret@host/db` -> `postgres://user@host/db`.
    pub fn redact(url: &str) -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let host = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{user}@{host}")
            }
            None => authority.to_owned(),
        };
        let tail = tail.split('?').next().unwrap_or_default();
        Some(format!("{scheme}://{host}{tail}"))
    }
}

/// Failures opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot create data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid database URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database query failed")]
    Query(#[source] sqlx::Error),
}

/// An open database: a pool plus, for SQLite, the process-wide writer lock.
#[derive(Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite {
        pool: SqlitePool,
        /// Every writer to the SQLite file (journal appends, projector batches) holds its lock
        /// while its transaction is open, so writers queue in-process instead of hitting
        /// SQLITE_BUSY; journal appends share its group commit.
        write_lock: Arc<SqliteWriter>,
    },
}

impl Database {
    /// Opens a pool. Does not migrate.
    ///
    /// # Errors
    /// [`DatabaseError`] when the URL is invalid, the server unreachable or the directory unusable.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DatabaseError> {
        match config {
            DatabaseConfig::Postgres {
                url,
                max_connections,
            } => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(DatabaseError::BadUrl)?
                    .application_name("openagents-runtime")
                    // A transaction left open stalls the journal's global read horizon for every
                    // reader (see docs/adr/0002-global-order.md); never let ours idle for long.
                    .options([("idle_in_transaction_session_timeout", "60s")]);
                // No ping before every checkout (sqlx's default): it is one extra round trip
                // per command. A connection that died while idle fails its next query, is
                // dropped by the pool, and the caller's retry gets a fresh one; idle and
                // lifetime limits retire connections long before a server's timeouts would.
                let pool = PgPoolOptions::new()
                    .max_connections(*max_connections)
                    .test_before_acquire(false)
                    .idle_timeout(Duration::from_secs(300))
                    .max_lifetime(Duration::from_secs(1800))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(DatabaseError::Connect)?;
                Ok(Database::Postgres(pool))
            }
            DatabaseConfig::Sqlite { path } => {
                // FULL: a commit is on disk before it is acknowledged (survives power loss, not
                // just a killed process).
                Self::open_sqlite(path, SqliteSynchronous::Full, 8).await
            }
        }
    }

    /// Opens an embedded journal that needs no durability: a scratch journal a replay builds
    /// and throws away (`replay --check`, `bench replay`). `synchronous=OFF`: commits are not
    /// fsynced (a crash loses the scratch file, which nobody keeps). Never for `serve`.
    ///
    /// # Errors
    /// As [`Database::connect`].
    pub async fn connect_scratch_sqlite(path: &std::path::Path) -> Result<Self, DatabaseError> {
        Self::open_sqlite(path, SqliteSynchronous::Off, SCRATCH_CONNECTIONS).await
    }

    async fn open_sqlite(
        path: &std::path::Path,
        synchronous: SqliteSynchronous,
        max_connections: u32,
    ) -> Result<Self, DatabaseError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| DatabaseError::DataDir {
                    path: dir.to_owned(),
                    source,
                })?;
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            // In-process connections do not go stale: no ping per checkout.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(DatabaseError::Connect)?;
        Ok(Database::Sqlite {
            pool,
            write_lock: Arc::default(),
        })
    }

    /// Applies pending migrations. Safe to run from several processes at once (sqlx takes a lock).
    ///
    /// # Errors
    /// [`DatabaseError::Migrate`], e.g. when an applied migration was edited afterwards.
    pub async fn migrate(&self) -> Result<(), DatabaseError> {
        match self {
            Database::Postgres(pool) => PG_MIGRATOR.run(pool).await,
            Database::Sqlite { pool, .. } => SQLITE_MIGRATOR.run(pool).await,
        }
        .map_err(DatabaseError::Migrate)
    }

    fn migrator(&self) -> &'static Migrator {
        match self {
            Database::Postgres(_) => &PG_MIGRATOR,
            Database::Sqlite { .. } => &SQLITE_MIGRATOR,
        }
    }

    /// Versions of the migrations this binary knows but the database has not applied.
    ///
    /// # Errors
    /// [`DatabaseError::Query`] when the database cannot be read.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, DatabaseError> {
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        let applied: Result<Vec<i64>, sqlx::Error> = match self {
            Database::Postgres(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .map(|rows| rows.iter().map(|r| r.get::<i64, _>(0)).collect()),
            Database::Sqlite { pool, .. } => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .map(|rows| rows.iter().map(|r| r.get::<i64, _>(0)).collect()),
        };
        let applied = match applied {
            Ok(applied) => applied,
            // No migrations table yet: nothing is applied.
            Err(sqlx::Error::Database(db)) if db.message().contains("_sqlx_migrations") => {
                Vec::new()
            }
            Err(e) => return Err(DatabaseError::Query(e)),
        };
        Ok(self
            .migrator()
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect())
    }

    /// Round-trips a trivial query.
    ///
    /// # Errors
    /// [`DatabaseError::Query`] when the database cannot be reached.
    pub async fn ping(&self) -> Result<(), DatabaseError> {
        match self {
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Database::Sqlite { pool, .. } => {
                sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
            }
        }
        .map_err(DatabaseError::Query)
    }

    /// The journal on this database.
    pub fn journal(&self) -> AnyJournal {
        match self {
            Database::Postgres(pool) => AnyJournal::Postgres(PgJournal::new(pool.clone())),
            Database::Sqlite { pool, write_lock } => {
                AnyJournal::Sqlite(SqliteJournal::with_writer(pool.clone(), write_lock.clone()))
            }
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Database::Postgres(_) => "postgres",
            Database::Sqlite { .. } => "sqlite",
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite { pool, .. } => pool.close().await,
        }
    }
}

/// A PostgreSQL server URL (`postgres://user@host:port/db?params`) with its database name
/// replaced by `database`, the query kept: for scratch and test databases on one server.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_in_a_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "y"),
            "postgres://u:p@h/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "z"), "postgres://h/z");
    }

    #[test]
    fn redacts_passwords_and_query_strings() {
        assert_eq!(
            url::redact("postgres://app:hunter2@db.internal:5432/runtime?sslmode=require")
                .as_deref(),
            Some("postgres://app@db.internal:5432/runtime")
        );
        assert_eq!(
            url::redact("postgres://127.0.0.1/test").as_deref(),
            Some("postgres://127.0.0.1/test")
        );
    }

    #[test]
    fn no_url_means_the_embedded_journal_in_the_data_dir() {
        let config = DatabaseConfig::from_parts(None, Path::new("/tmp/x"), 4);
        assert_eq!(
            config,
            DatabaseConfig::Sqlite {
                path: PathBuf::from("/tmp/x/journal.db")
            }
        );
        let config = DatabaseConfig::from_parts(Some("  "), Path::new("/tmp/x"), 4);
        assert!(matches!(config, DatabaseConfig::Sqlite { .. }));
    }
}
