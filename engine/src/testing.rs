//! Throwaway databases for tests: a fresh PostgreSQL database per test (created, migrated,
//! dropped) or a SQLite journal in a temporary directory.
//!
//! PostgreSQL is found through `OA_TEST_DATABASE_URL`, else `DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`. If it cannot be reached, PostgreSQL tests are
//! skipped with a message, unless `CI` is set: then they fail.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

use crate::db::{Database, DatabaseConfig};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Test databases older than this are dropped when a test process starts (left-overs of
/// failed or killed runs).
const STALE_AFTER_SECS: u64 = 6 * 3600;

/// The admin URL tests connect to.
pub fn admin_url() -> String {
    std::env::var("OA_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// True when running under CI (`CI` set to anything but empty/`false`/`0`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

pub use crate::db::with_database;

/// A database that exists for one test.
pub struct TestDb {
    pub database: Database,
    /// The URL to hand to a child process (`--database-url`), for PostgreSQL.
    pub url: Option<String>,
    /// The SQLite data directory, for SQLite.
    pub data_dir: Option<PathBuf>,
    pg_name: Option<String>,
    _tempdir: Option<tempfile::TempDir>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn admin_connection() -> Option<PgConnection> {
    let url = admin_url();
    match PgConnection::connect(&url).await {
        Ok(conn) => Some(conn),
        Err(error) if in_ci() => {
            panic!("CI is set but PostgreSQL at {url} is unreachable: {error}")
        }
        Err(error) => {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| {
                eprintln!(
                    "SKIPPING PostgreSQL tests: {url} is unreachable ({error}). \
                     Set OA_TEST_DATABASE_URL, or set CI=1 to make this a failure."
                );
            });
            None
        }
    }
}

async fn drop_stale(conn: &mut PgConnection) {
    let names: Vec<(String,)> =
        match sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'oa\\_test\\_%'")
            .fetch_all(&mut *conn)
            .await
        {
            Ok(names) => names,
            Err(_) => return,
        };
    let cutoff = unix_now().saturating_sub(STALE_AFTER_SECS);
    for (name,) in names {
        let created = name
            .strip_prefix("oa_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|ts| ts.parse::<u64>().ok());
        if created.is_some_and(|ts| ts < cutoff) {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                .await;
        }
    }
}

impl TestDb {
    /// A fresh, migrated PostgreSQL database, or `None` (skip) when PostgreSQL is unreachable
    /// and `CI` is not set.
    ///
    /// # Panics
    /// When `CI` is set and PostgreSQL is unreachable, or the database cannot be created.
    pub async fn postgres() -> Option<TestDb> {
        Self::postgres_with(8).await
    }

    /// Like [`TestDb::postgres`] with a pool of `max_connections`.
    ///
    /// # Panics
    /// As [`TestDb::postgres`].
    pub async fn postgres_with(max_connections: u32) -> Option<TestDb> {
        let mut admin = admin_connection().await?;
        static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        CLEANED.get_or_init(|| drop_stale(&mut admin)).await;
        let name = format!(
            "oa_test_{}_{}",
            unix_now(),
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..12)
                .unwrap_or("x")
        );
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .expect("create test database");
        let url = with_database(&admin_url(), &name);
        let database = Database::connect(&DatabaseConfig::Postgres {
            url: url.clone(),
            max_connections,
        })
        .await
        .expect("connect to test database");
        database.migrate().await.expect("migrate test database");
        Some(TestDb {
            database,
            url: Some(url),
            data_dir: None,
            pg_name: Some(name),
            _tempdir: None,
        })
    }

    /// A migrated SQLite journal in a fresh temporary directory.
    ///
    /// # Panics
    /// When the directory or database cannot be created.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = Database::connect(&DatabaseConfig::Sqlite {
            path: dir.path().join(crate::db::SQLITE_FILE),
        })
        .await
        .expect("open sqlite journal");
        database.migrate().await.expect("migrate sqlite journal");
        TestDb {
            database,
            url: None,
            data_dir: Some(dir.path().to_owned()),
            pg_name: None,
            _tempdir: Some(dir),
        }
    }

    /// Closes the pool and drops the PostgreSQL database (the SQLite directory goes with `self`).
    pub async fn cleanup(self) {
        self.database.close().await;
        if let Some(name) = &self.pg_name {
            if let Some(mut admin) = admin_connection().await {
                let _ = admin
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await;
            }
        }
    }
}
