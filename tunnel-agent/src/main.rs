//! `tunnel-agent` binary: parses arguments, installs logging and runs the agent until SIGINT or
//! SIGTERM, draining in-flight requests before it exits.

use std::process::ExitCode;

use clap::Parser;
use tunnel_agent::{Agent, Args, Config};

#[tokio::main]
async fn main() -> ExitCode {
    transport::process::init_tracing();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tunnel-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    let agent = Agent::new(config)?;
    agent.run(transport::process::shutdown_signal()).await?;
    Ok(())
}
