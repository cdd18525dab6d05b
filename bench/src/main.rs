//! `openagents-bench …`: the runtime's benchmarks. Each prints its figures beside a raw baseline
//! measured in the same run; results and the commands that produced them are recorded in
//! `docs/BENCHMARKS.md`. Build with `--release` for meaningful numbers:
//! `cargo run --release -p openagents-bench -- append --database-url postgres://…`.
//!
//! The benchmarks are a crate of their own (ADR 0122) so the product crates carry none of their
//! code or dependencies; this crate sits above everything and depends on the runtime library.
//! Benchmarks that need the real runtime as a separate process (`fanout`) start this very
//! binary with the hidden `runtime` subcommand, which is the `openagents-runtime` command line
//! from the same library (same code, same allocator) — or `--runtime-bin` if given.
//!
//! - [`append`], [`http`], [`checkpoint`], [`project`]: the command path, the journal, the audit
//!   tree and the projectors, on scratch PostgreSQL databases ([`scratch`]) and journals.
//! - [`export`]: the audit export beside `COPY`; [`replay`]: fixture replay beside raw appends.
//! - [`fanout`]: Khala's fan-out and replay catch-up beside a bare WebSocket broadcast;
//!   [`store_replay`]: where a replay from the store spends its time.

mod append;
mod checkpoint;
mod export;
mod fanout;
mod http;
mod plot;
mod project;
mod replay;
mod scratch;
mod store_replay;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

/// The same allocator as the `openagents-runtime` binary (ADR 0120), so the engine paths and
/// the `runtime` child measure what `serve` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The runtime's benchmarks (release builds only give meaningful numbers).
#[derive(Debug, Parser)]
#[command(name = "openagents-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Command throughput and latency through the real engine against PostgreSQL, beside plain
    /// single-row INSERTs of the same payload size over the same pool.
    Append(append::AppendArgs),
    /// Projection: a full rebuild of ≥ 1M events beside a batched SQL upsert of the same
    /// documents, and commit → projected latency under a steady command load beside raw
    /// INSERT → visible, on a scratch PostgreSQL database.
    Project(project::ProjectArgs),
    /// Khala fan-out: N WebSocket clients on a topic while updates commit at a steady rate
    /// (deliveries/s, commit→client p50/p99, memory per idle connection, replay catch-up),
    /// beside a bare tokio WebSocket broadcast of the same frames.
    Fanout(fanout::FanoutArgs),
    /// Read capacity with and without a hot standby (`serve --read-database-url`): commands/s
    /// of writers alone, then with hydrating readers on the primary, then on the standby.
    Replica(fanout::replica::ReplicaArgs),
    /// Where a replay from the projectors' store spends its time: the raw store read, the
    /// source and frame preparation, and a whole replay to one WebSocket client.
    StoreReplay(store_replay::StoreReplayArgs),
    /// Audit export rate for a large journal, beside a plain COPY of the same rows to a file.
    Export(export::BenchExportArgs),
    /// Audit tree under the append workload: `append`'s engine phase on fresh scratch journals
    /// with and without the `audit-tree` task (throughput ratio), the tree's lag during the run
    /// and its catch-up time after it.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Signed HTTP commands end to end (a token minted per request, the real router and
    /// engine over a socket), beside the engine path alone on the same journal, both journals.
    Http(http::HttpArgs),
    /// Fixture replay rate on the embedded journal, beside raw appends of the same events.
    Replay(replay::BenchReplayArgs),
    /// The `openagents-runtime` command line, for benchmarks that run the runtime as a child
    /// process (`openagents-bench runtime serve …`).
    #[command(hide = true)]
    Runtime {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        BenchCommand::Runtime { args } => run_runtime(args).await,
        command => {
            openagents_runtime::telemetry::init_tracing(
                openagents_runtime::telemetry::LogFormat::Text,
            );
            run(command).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a benchmark.
async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => append::run(args).await,
        BenchCommand::Project(args) => project::run(args).await,
        BenchCommand::Fanout(args) => fanout::run_fanout(args).await,
        BenchCommand::Replica(args) => fanout::replica::run_replica(args).await,
        BenchCommand::StoreReplay(args) => store_replay::run(args).await,
        BenchCommand::Export(args) => export::run(args).await,
        BenchCommand::Checkpoint(args) => checkpoint::run(args).await,
        BenchCommand::Http(args) => http::run(args).await,
        BenchCommand::Replay(args) => replay::run(args).await,
        BenchCommand::Runtime { args } => run_runtime(args).await,
    }
}

/// `openagents-bench runtime …`: the runtime's own command line and entry point.
async fn run_runtime(args: Vec<OsString>) -> anyhow::Result<()> {
    use openagents_runtime::cli::Cli as RuntimeCli;
    let cli =
        RuntimeCli::parse_from(std::iter::once(OsString::from("openagents-runtime")).chain(args));
    openagents_runtime::telemetry::init_tracing(cli.log_format);
    openagents_runtime::cli::run(cli).await
}
