//! `ingress` binary: parses arguments, installs logging and runs the ingress until SIGINT or
//! SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use ingress::{Args, Config, Ingress, TokenReloader};

#[tokio::main]
async fn main() -> ExitCode {
    transport::process::init_tracing();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ingress: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    let ingress = Ingress::bind(config.clone()).await?;
    let quic = ingress.quic_addr();
    let agent_address = if quic.ip().is_unspecified() {
        format!("<this host's public address>:{}", quic.port())
    } else {
        quic.to_string()
    };
    let scheme = if config.public_tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(public = %ingress.http_addr(), scheme, quic = %quic, domain = %config.domain, "listening");
    println!("QUIC certificate SHA-256: {}", ingress.cert_sha256());
    println!("Start an agent next to your app with:");
    println!(
        "  TUNNEL_TOKEN=<the ingress token> tunnel-agent --ingress {agent_address} --cert-sha256 {} --tunnel app=http://127.0.0.1:3000",
        ingress.cert_sha256()
    );
    println!(
        "and open {scheme}://app.{}:{}/",
        config.domain,
        ingress.http_addr().port()
    );
    tokio::spawn(reload_on_hangup(ingress.token_reloader()));
    ingress.run(transport::process::shutdown_signal()).await
}

/// Re-reads the tokens file on every SIGHUP.
async fn reload_on_hangup(reloader: TokenReloader) {
    use tokio::signal::unix::{signal, SignalKind};

    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP; the tokens file will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match reloader.reload() {
            Ok(tokens) => tracing::info!(tokens, "reloaded tokens"),
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "failed to reload tokens; keeping the old ones")
            }
        }
    }
}
