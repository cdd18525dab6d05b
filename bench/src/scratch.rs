//! Scratch PostgreSQL databases for the benchmarks that need a fresh one per run.

use std::future::Future;

use anyhow::Context;
use sqlx::{Connection, Executor, PgConnection};

pub use engine::db::with_database;

/// Creates a scratch database `oa_bench_<time>_<random>` on the server at `server_url`, runs
/// `body` with its name, and drops it afterwards (unless `keep`, then says so).
///
/// # Errors
/// When the server cannot be reached or the database created or dropped; `body`'s error.
pub async fn with_scratch_database<F, Fut>(
    server_url: &str,
    keep: bool,
    body: F,
) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = format!(
        "oa_bench_{}_{}",
        chrono::Utc::now().timestamp(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut admin = PgConnection::connect(server_url)
        .await
        .context("connect to PostgreSQL (--database-url)")?;
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .context("create the scratch database")?;
    let result = body(name.clone()).await;
    if keep {
        println!("kept scratch database {name}");
    } else {
        admin
            .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
            .await
            .context("drop the scratch database")?;
    }
    result
}
