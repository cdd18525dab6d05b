//! `openagents-runtime bench …`: benchmarks that print their figures beside a raw baseline
//! measured in the same run. Build with `--release` for meaningful numbers.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Command throughput and latency through the real engine against PostgreSQL, beside plain
    /// single-row INSERTs of the same payload size over the same pool.
    Append(crate::bench::append::AppendArgs),
    /// Projection: a full rebuild of ≥ 1M events beside a batched SQL upsert of the same
    /// documents, and commit → projected latency under a steady command load beside raw
    /// INSERT → visible, on a scratch PostgreSQL database.
    Project(crate::bench::project::ProjectArgs),
    /// Khala fan-out: N WebSocket clients on a topic while updates commit at a steady rate
    /// (deliveries/s, commit→client p50/p99, memory per idle connection, replay catch-up),
    /// beside a bare tokio WebSocket broadcast of the same frames.
    Fanout(sync_gateway::bench::FanoutArgs),
    /// Audit export rate for a large journal, beside a plain COPY of the same rows to a file.
    Export(crate::audit::bench::BenchExportArgs),
    /// Audit tree under the append workload: `bench append`'s engine phase on fresh scratch
    /// journals with and without the `audit-tree` task (throughput ratio), the tree's lag during
    /// the run and its catch-up time after it.
    Checkpoint(crate::bench::checkpoint::CheckpointArgs),
    /// Signed HTTP commands end to end (a token minted per request, the real router and
    /// engine over a socket), beside the engine path alone on the same journal, both journals.
    Http(crate::bench::http::HttpArgs),
    /// Fixture replay rate on the embedded journal, beside raw appends of the same events.
    Replay(crate::replay::bench::BenchReplayArgs),
}

/// Runs a `bench` subcommand.
///
/// # Errors
/// When the benchmark cannot set up or run.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => crate::bench::append::run(args).await,
        BenchCommand::Project(args) => crate::bench::project::run(args).await,
        BenchCommand::Fanout(args) => sync_gateway::bench::run_fanout(args).await,
        BenchCommand::Export(args) => crate::audit::bench::run(args).await,
        BenchCommand::Checkpoint(args) => crate::bench::checkpoint::run(args).await,
        BenchCommand::Http(args) => crate::bench::http::run(args).await,
        BenchCommand::Replay(args) => crate::replay::bench::run(args).await,
    }
}
