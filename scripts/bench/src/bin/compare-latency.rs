//! `compare-latency` binary: runs the latency comparison; see `compare-latency --help`.

use std::process::ExitCode;

use clap::Parser;
use tunnel_bench::compare;

#[tokio::main]
async fn main() -> ExitCode {
    // Only warnings: progress lines and tables go to the terminal directly.
    tunnel_bench::serve::init_tracing_at("warn");
    match compare::run(compare::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("compare-latency: {err:#}");
            ExitCode::FAILURE
        }
    }
}
