//! `longpoll-agent` binary: private side of the long-poll baseline.

use std::process::ExitCode;

use clap::Parser;
use tunnel_bench::longpoll::agent;
use tunnel_bench::serve;

#[tokio::main]
async fn main() -> ExitCode {
    serve::init_tracing();
    match agent::run(agent::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("longpoll-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
