//! `compare-latency` binary: runs the latency comparison; see `compare-latency --help`.

use std::process::ExitCode;

use clap::Parser;
use tunnel_bench::compare;

#[tokio::main]
async fn main() -> ExitCode {
    // Only warnings: progress lines and tables go to the terminal directly.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match compare::run(compare::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("compare-latency: {err:#}");
            ExitCode::FAILURE
        }
    }
}
