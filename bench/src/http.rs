//! `bench http`: signed HTTP commands end to end — a fresh internal token minted and verified
//! per request (single-use nonce included), the real router and middleware over a real socket,
//! the real engine — beside the engine path alone (`bench append`'s engine phase, the same
//! `Engine` of the same app on the same journal) in the same run. Both journals.
//!
//! The app runs without the sync lane, the audit tree and the console (`serve` runs them too):
//! this measures the command path, not what runs beside it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use engine::auth::{mint, InternalClaims, SigningSecret};
use engine::clock::Stamps;
use serde_json::json;

use crate::append::{create_run, engine_phase, phase, run_id, PhaseResult};
use crate::checkpoint::{scratch_journal, JournalKind};
use openagents_runtime::app::App;
use openagents_runtime::config::RuntimeConfig;
use openagents_runtime::server::Server;

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// PostgreSQL server on which a scratch database is created and dropped (the role needs
    /// CREATEDB); needed for `--journals postgres`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Journals to measure, comma separated (`sqlite`: an embedded file, `synchronous=FULL`).
    #[arg(long, value_delimiter = ',', default_value = "postgres,sqlite")]
    pub journals: Vec<JournalKind>,

    /// Concurrent clients to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,

    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,

    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,

    /// Size of the frame text in each command's payload, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
}

/// Runs the benchmark and prints a table per journal.
///
/// # Errors
/// When a journal cannot be created or the app cannot start.
pub async fn run(args: HttpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|c| *c > 0),
        "--clients needs positive counts"
    );
    for journal in &args.journals {
        measure(&args, *journal).await?;
    }
    Ok(())
}

async fn measure(args: &HttpArgs, journal: JournalKind) -> anyhow::Result<()> {
    let max_clients = *args.clients.iter().max().expect("checked non-empty");
    let connections = u32::try_from(max_clients + 2).unwrap_or(u32::MAX);
    let (database, scratch) =
        scratch_journal(args.database_url.as_deref(), journal, connections).await?;
    let data_dir = tempfile::tempdir().context("create a temporary data directory")?;
    let secret = SigningSecret::generate();
    let config = RuntimeConfig::new(
        database_config(&database, data_dir.path()),
        data_dir.path().to_owned(),
        secret.clone(),
    );
    let app = App::new(config, database.clone(), Stamps::system());
    let server = Server::bind(app.clone()).await?;
    let base = format!("http://{}", server.local_addr());
    let serving = tokio::spawn(server.run_until_stopped());
    println!(
        "bench http ({journal:?}): {} bytes of frame text, {}s per phase after {}s warm-up, pool {connections}; a token minted per request",
        args.payload_bytes, args.duration_secs, args.warmup_secs
    );
    println!(
        "{:>7}  {:<6}  {:>9}  {:>10}  {:>8}  {:>8}  {:>11}",
        "clients", "path", "commands", "cmds/s", "p50 ms", "p99 ms", "http/engine"
    );
    let text = Arc::new("x".repeat(args.payload_bytes));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(max_clients)
        .build()?;
    let duration = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    let engine = app.engine().clone();
    let result = async {
        for (round, &clients) in args.clients.iter().enumerate() {
            for client in 0..clients {
                create_run(&engine, &run_id(round, client)).await?;
                create_run(&engine, &run_id(1000 + round, client)).await?;
            }
            let engine_result =
                engine_phase(&engine, round, clients, warmup, duration, text.clone()).await?;
            row(clients, "engine", &engine_result, None);
            let over_http = phase(clients, warmup, duration, {
                let (http, base, secret, text) =
                    (http.clone(), base.clone(), secret.clone(), text.clone());
                move |client, n| {
                    let (http, secret, text) = (http.clone(), secret.clone(), text.clone());
                    let url = format!("{base}/internal/v1/runs/{}/frames", run_id(1000 + round, client));
                    async move {
                        let claims = InternalClaims {
                            user_id: Some("bench".into()),
                            ..InternalClaims::new(chrono::Utc::now().timestamp(), 60)
                        };
                        let response = http
                            .post(url)
                            .header("x-oa-runtime-signature", mint(&secret, &claims))
                            .json(&json!({"thread_id": "bench", "frame_id": format!("f{n}"),
                                          "type": "text_delta", "payload": {"delta": text.as_str()}}))
                            .send()
                            .await?;
                        anyhow::ensure!(
                            response.status().is_success(),
                            "HTTP command answered {}: {}",
                            response.status(),
                            response.text().await.unwrap_or_default()
                        );
                        Ok(())
                    }
                }
            })
            .await?;
            row(
                clients,
                "http",
                &over_http,
                Some(over_http.per_second / engine_result.per_second),
            );
        }
        anyhow::Ok(())
    }
    .await;
    app.shutdown_token().cancel();
    let _ = serving.await;
    scratch.dispose(&database).await;
    result
}

fn database_config(database: &engine::Database, dir: &std::path::Path) -> engine::DatabaseConfig {
    match database {
        // The app is given the open pool; the config only names it.
        engine::Database::Postgres(_) => engine::DatabaseConfig::Postgres {
            url: "postgres://bench-scratch".into(),
            max_connections: 1,
        },
        engine::Database::Sqlite { .. } => engine::DatabaseConfig::Sqlite {
            path: dir.join(engine::db::SQLITE_FILE),
        },
    }
}

fn row(clients: usize, path: &str, result: &PhaseResult, ratio: Option<f64>) {
    println!(
        "{:>7}  {:<6}  {:>9}  {:>10.0}  {:>8.2}  {:>8.2}  {:>11}",
        clients,
        path,
        result.commands,
        result.per_second,
        result.p50_ms,
        result.p99_ms,
        ratio.map(|r| format!("{r:.2}")).unwrap_or_default()
    );
}
