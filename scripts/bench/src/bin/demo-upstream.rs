//! `demo-upstream` binary: the HTTP/1.1 service behind every path that `compare-latency`
//! measures.

use std::process::ExitCode;

use clap::Parser;
use tunnel_bench::{serve, upstream};

#[tokio::main]
async fn main() -> ExitCode {
    serve::init_tracing();
    match upstream::run(upstream::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo-upstream: {err:#}");
            ExitCode::FAILURE
        }
    }
}
