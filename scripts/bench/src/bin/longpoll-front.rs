//! `longpoll-front` binary: public side of the long-poll baseline.

use std::process::ExitCode;

use clap::Parser;
use tunnel_bench::longpoll::front;
use tunnel_bench::serve;

#[tokio::main]
async fn main() -> ExitCode {
    serve::init_tracing();
    match front::run(front::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("longpoll-front: {err:#}");
            ExitCode::FAILURE
        }
    }
}
