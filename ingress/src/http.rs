//! Public HTTP listener: accepts TCP connections, serves HTTP/1.1 and prior-knowledge HTTP/2 on
//! each, and routes every request by its Host to a tunnel.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::error::ProxyError;
use crate::{forward, ProxyBody, State};

/// Accepts public connections until the listener fails.
pub(crate) async fn accept_clients(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Running out of file descriptors is the usual cause; back off instead of
                // spinning on the same error.
                tracing::warn!(%err, "failed to accept public connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let span = tracing::debug_span!("client", %peer);
        tokio::spawn(serve_client(stream, peer, state.clone()).instrument(span));
    }
}

async fn serve_client(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "failed to set TCP_NODELAY");
    }
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(request, peer, state).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "public connection ended with an error");
    }
}

async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
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
    match forward::forward(request, tunnel, peer, &state).await {
        Ok(response) => response,
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
