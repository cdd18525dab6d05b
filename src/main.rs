//! `openagents-runtime`: parse the command line, start tracing, hand over to the library.

use clap::Parser;

/// mimalloc instead of the system allocator: the request path allocates many small, short-lived
/// buffers, and glibc's malloc/free were ~16% of its CPU (docs/adr/0120-mimalloc.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
