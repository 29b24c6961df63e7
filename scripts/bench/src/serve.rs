//! Shared plumbing of the small servers in this crate: the HTTP/1.1 accept loop, the
//! shutdown signal and the log set-up.

use std::future::Future;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::Body;

/// Serves HTTP/1.1 with upgrades on every connection `listener` accepts until `shutdown`
/// completes. Connections already open keep running until their peers close them or the
/// process exits.
pub async fn serve_http1<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => handle_accept(accepted, handler.clone()).await,
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
}

async fn handle_accept<H, F>(accepted: std::io::Result<(TcpStream, SocketAddr)>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    match accepted {
        Ok((stream, peer)) => {
            tokio::spawn(serve_connection(stream, peer, handler));
        }
        Err(err) => {
            // Usually the file descriptor limit; pause so the loop does not spin on it.
            tracing::warn!(%err, "failed to accept a connection; retrying in 50 ms");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

async fn serve_connection<H, F>(stream: TcpStream, peer: SocketAddr, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, %peer, "failed to set TCP_NODELAY");
    }
    let service = service_fn(move |request| {
        let response = handler(request);
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(err) = connection.await {
        tracing::debug!(%err, %peer, "connection ended with an error");
    }
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};

    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; only SIGINT stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Installs a stderr log subscriber filtered by `RUST_LOG`, `info` by default.
pub fn init_tracing() {
    init_tracing_at("info");
}

/// Installs a stderr log subscriber filtered by `RUST_LOG`, `default` when it is not set.
pub fn init_tracing_at(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Binds `addr` and prints `listening on ADDR` with the bound address on stdout, which is
/// how the orchestrator learns a port chosen by the system.
///
/// # Errors
///
/// Returns an error when the address cannot be bound.
pub async fn bind_and_announce(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    use std::io::Write;

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    let bound = listener
        .local_addr()
        .context("failed to read the bound address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {bound}").context("failed to write to stdout")?;
    stdout.flush().context("failed to flush stdout")?;
    tracing::info!(addr = %bound, "listening");
    Ok(listener)
}
