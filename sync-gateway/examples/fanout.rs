//! Runs the fan-out bench without the root binary:
//! `cargo run --release -p sync-gateway --example fanout -- --source memory --connections 1000,5000`
//! (the gateway alone). The real pipeline needs the runtime binary for its `serve` child:
//! `… --example fanout -- --runtime-bin target/release/openagents-runtime`, or run
//! `openagents-runtime bench fanout`, which takes the same flags.

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
