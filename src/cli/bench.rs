//! `openagents-runtime bench …`: benchmarks that print their figures beside a raw baseline
//! measured in the same run. Build with `--release` for meaningful numbers.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Command throughput and latency through the real engine against PostgreSQL, beside plain
    /// single-row INSERTs of the same payload size over the same pool.
    Append(crate::bench::append::AppendArgs),
}

/// Runs a `bench` subcommand.
///
/// # Errors
/// When the benchmark cannot set up or run.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => crate::bench::append::run(args).await,
    }
}
