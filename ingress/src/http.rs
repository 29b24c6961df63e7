//! Public HTTP listener: accepts TCP connections, serves HTTP/1.1 and prior-knowledge HTTP/2 on
//! each, and routes every request by its Host to a tunnel.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::ProxyError;
use crate::{forward, ProxyBody, State};

/// Accepts public connections until the listener fails.
pub(crate) async fn accept_clients(
    listener: TcpListener,
    state: Arc<State>,
    connections: TaskTracker,
    draining: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Running out of file descriptors is the usual cause; back off instead of
                // spinning on the same error.
                tracing::warn!(%err, "failed to accept public connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let span = tracing::debug_span!("client", %peer);
        let serve = serve_client(stream, peer, state.clone(), draining.clone());
        connections.spawn(serve.instrument(span));
    }
}

async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    draining: watch::Receiver<bool>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "failed to set TCP_NODELAY");
    }
    let Some(acceptor) = state.public_tls.clone() else {
        // The protocol is picked by peeking at the first bytes instead of letting hyper-util's
        // auto builder do it, because the auto builder wraps the socket in a private type and
        // an upgraded connection could then not be taken back as the plain socket that the
        // buffer-free splice needs.
        match starts_with_h2_preface(&stream).await {
            Ok(h2) => serve_http(TokioIo::new(stream), h2, "http", peer, state, draining).await,
            Err(err) => {
                tracing::debug!(error = %err, "public connection failed before the first request");
            }
        }
        return;
    };

    let handshake = tokio::time::timeout(PREFACE_TIMEOUT, acceptor.accept(stream));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    serve_http(TokioIo::new(tls), h2, "https", peer, state, draining).await;
}

/// Serves HTTP/2 or HTTP/1.1 (with upgrades) on an accepted connection until it closes.
async fn serve_http<I>(
    io: TokioIo<I>,
    h2: bool,
    scheme: &'static str,
    peer: SocketAddr,
    state: Arc<State>,
    draining: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(request, peer, scheme, state).await) }
    });
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        drive(builder.serve_connection(io, service), draining).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new());
        let connection = builder.serve_connection(io, service).with_upgrades();
        drive(connection, draining).await
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "public connection ended with an error");
    }
}

/// A hyper server connection that can be asked to finish its in-flight requests and close.
trait Drainable: Future<Output = hyper::Result<()>> {
    fn start_draining(self: Pin<&mut Self>);
}

impl<I, S, B> Drainable for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn start_draining(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Drainable for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn start_draining(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `connection` to its end; once `draining` turns true it finishes the requests in
/// flight (HTTP/2 sends GOAWAY) and closes.
async fn drive<C: Drainable>(
    connection: C,
    mut draining: watch::Receiver<bool>,
) -> hyper::Result<()> {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        _ = draining.wait_for(|draining| *draining) => {}
    }
    connection.as_mut().start_draining();
    connection.await
}

/// Returns whether the client opened with the HTTP/2 connection preface (prior knowledge),
/// without consuming any bytes. Waits at most [`PREFACE_TIMEOUT`] for enough bytes to decide.
async fn starts_with_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + PREFACE_TIMEOUT;
    let mut buf = [0u8; 24];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no request bytes in time")
            })??;
        if peeked == 0 || buf[..peeked] != PREFACE[..peeked] {
            return Ok(false);
        }
        if peeked == PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface arrived; peeking again at once would return the same bytes, so
        // wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Time a new connection has to send enough bytes to tell HTTP/1.1 from HTTP/2.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(30);

async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
) -> Response<ProxyBody> {
    let routed = match (
        tunnel_name(&request, &state.config.domain),
        &state.config.default_tunnel,
    ) {
        (Err(ProxyError::ForeignHost(_)), Some(default)) => Ok(default.clone()),
        (routed, _) => routed,
    };
    let tunnel = match routed {
        Ok(tunnel) => tunnel,
        Err(err) => {
            tracing::debug!(error = %err, "request not routed");
            return err.into_response();
        }
    };
    match forward::forward(request, tunnel, peer, scheme, &state).await {
        Ok(response) => response,
        Err(err @ ProxyError::BadResponse { .. }) => {
            // The agent broke the protocol: worth an operator's attention, unlike a dead upstream.
            tracing::warn!(error = %err, "invalid response from agent");
            err.into_response()
        }
        Err(err) => {
            tracing::debug!(error = %err, status = err.status().as_u16(), "request failed");
            err.into_response()
        }
    }
}

/// Finds the tunnel name in the request's authority (HTTP/2, absolute-form HTTP/1.1) or Host
/// field: the label in front of `.<domain>`, port ignored.
fn tunnel_name(request: &Request<Incoming>, domain: &str) -> Result<String, ProxyError> {
    let host = match request.uri().authority() {
        Some(authority) => authority.host().to_string(),
        None => {
            let value = request
                .headers()
                .get(http::header::HOST)
                .and_then(|value| value.to_str().ok())
                .ok_or(ProxyError::BadHost)?;
            let authority: http::uri::Authority = value.parse().map_err(|_| ProxyError::BadHost)?;
            authority.host().to_string()
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let Some(label) = host
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        return Err(ProxyError::ForeignHost(host));
    };
    if label.is_empty() || label.contains('.') {
        return Err(ProxyError::ForeignHost(host));
    }
    Ok(label.to_string())
}
