//! Runs the fan-out bench without the root binary:
//! `cargo run --release -p sync-gateway --example fanout -- --connections 1000,5000`.
//! (`openagents-runtime bench fanout` takes the same flags.)

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    fanout: sync_gateway::bench::FanoutArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sync_gateway::bench::run_fanout(Cli::parse().fanout).await
}
