//! `openagents-runtime`: parse the command line, start tracing, hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = openagents_runtime::cli::Cli::parse();
    openagents_runtime::telemetry::init_tracing(cli.log_format);
    match openagents_runtime::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error.message = %error, error.cause_chain = ?error, "exiting");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
