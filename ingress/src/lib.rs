//! The public side of ingress-tunnel.
//!
//! An [`Ingress`] owns two listeners: a TCP listener serving HTTP/1.1 and prior-knowledge
//! HTTP/2 to public clients, and a QUIC endpoint where tunnel-agents connect. Each public
//! request becomes its own QUIC stream to the agent serving the tunnel named in its Host.
//! With a certificate the public listener serves HTTPS, HTTP/2 or HTTP/1.1 by ALPN.

#![forbid(unsafe_code)]

mod auth;
mod config;
mod error;
mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod h1_check;
mod http;
mod limits;
mod proxies;
mod registry;
mod shared_stream;
mod tls;
mod tunnels;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub use crate::config::{Args, Config};
pub use crate::error::ProxyError;
pub use crate::proxies::AddrRange;
pub use crate::registry::RouteError;

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response the ingress sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A bound ingress, ready to [`run`](Ingress::run).
pub struct Ingress {
    listener: TcpListener,
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    cert_sha256: String,
}

/// State shared by every connection task.
pub(crate) struct State {
    config: Config,
    registry: Arc<registry::Registry>,
    tokens: RwLock<Arc<auth::Tokens>>,
    /// TLS acceptor of the public listener, when it serves HTTPS.
    public_tls: Option<tokio_rustls::TlsAcceptor>,
    failures: auth::FailureLimiter,
    connection_limiter: limits::ConnectionLimiter,
    proxies: proxies::TrustedProxies,
    http_port: u16,
}

impl Ingress {
    /// Loads or creates the QUIC identity and binds both listeners.
    ///
    /// # Errors
    ///
    /// Returns an error naming the address or file that failed.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let tokens = auth::Tokens::load(config.token.as_deref(), config.tokens_file.as_deref())?;
        let public_tls = match &config.public_tls {
            Some((cert, key)) => Some(tls::public_acceptor(cert, key)?),
            None => None,
        };
        // The TCP port is taken first, so a port in use fails before the state directory gets
        // a new certificate.
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("failed to listen for HTTP on {}", config.http_addr))?;
        let identity = tls::load_identity(&config)?;
        let cert_sha256 = identity.fingerprint();
        let server_config = tls::server_config(identity, &config)?;

        let endpoint_config = tls::endpoint_config(&config)?;
        let endpoint =
            transport::bind_endpoint_with(config.quic_addr, Some(server_config), endpoint_config)
                .with_context(|| format!("failed to listen for QUIC on udp/{}", config.quic_addr))?;
        let http_port = listener.local_addr()?.port();

        let mut known = config.declared_tunnels.clone();
        known.extend(registry::load_known_names(&config.state_dir));
        let registry = Arc::new(registry::Registry::new(&known));
        let connection_limiter = limits::ConnectionLimiter::new(config.max_connections_per_ip);
        let failures =
            auth::FailureLimiter::new(config.max_failed_handshakes, Duration::from_secs(60));
        let proxies = proxies::TrustedProxies::new(config.trusted_proxies.clone());
        let state = Arc::new(State {
            proxies,
            config,
            registry,
            tokens: RwLock::new(Arc::new(tokens)),
            public_tls,
            failures,
            connection_limiter,
            http_port,
        });
        Ok(Self {
            listener,
            endpoint,
            state,
            cert_sha256,
        })
    }

    /// Address of the public HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config.http_addr)
    }

    /// Address of the QUIC endpoint.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or(self.state.config.quic_addr)
    }

    /// Lower-case hex SHA-256 of the QUIC certificate, for the agent's `--cert-sha256`.
    pub fn cert_sha256(&self) -> &str {
        &self.cert_sha256
    }

    /// Returns a handle that re-reads the tokens file while the ingress runs.
    pub fn token_reloader(&self) -> TokenReloader {
        TokenReloader(self.state.clone())
    }

    /// Serves until `shutdown` completes, then closes every agent connection.
    ///
    /// # Errors
    ///
    /// Returns an error only if a listener task panicked.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let state = self.state.clone();
        let connections = TaskTracker::new();
        let (draining, drain_signal) = watch::channel(false);
        let clients = tokio::spawn(http::accept_clients(
            self.listener,
            state.clone(),
            connections.clone(),
            drain_signal,
        ));
        let agents = tokio::spawn(tunnels::accept_agents(self.endpoint.clone(), state));

        shutdown.await;
        let grace = self.state.config.drain_grace;
        tracing::info!(
            open_connections = connections.len(),
            ?grace,
            "shutting down: no new connections, finishing requests in flight"
        );
        clients.abort();
        let _ = draining.send(true);
        connections.close();
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open_connections = connections.len(),
                "drain grace period over; closing connections with requests in flight"
            );
        }
        self.endpoint.close(
            transport::code(protocol::code::SHUTDOWN),
            b"ingress shutting down",
        );
        let _ = agents.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        Ok(())
    }
}

/// Handle that re-reads the tokens file; see [`Ingress::token_reloader`].
#[derive(Clone)]
pub struct TokenReloader(Arc<State>);

impl TokenReloader {
    /// Re-reads `--token` and the tokens file and uses the new set for later handshakes.
    /// Connected agents stay connected, whether or not their token is still listed.
    ///
    /// # Errors
    ///
    /// Returns an error, and keeps the old set, when the file cannot be read or is invalid.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let config = &self.0.config;
        let tokens = auth::Tokens::load(config.token.as_deref(), config.tokens_file.as_deref())?;
        let count = tokens.len();
        let mut current = self
            .0
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Arc::new(tokens);
        Ok(count)
    }
}

impl State {
    fn tokens(&self) -> Arc<auth::Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn public_url(&self, tunnel: &str) -> String {
        let domain = &self.config.domain;
        let scheme = if self.public_tls.is_some() {
            "https"
        } else {
            "http"
        };
        match (scheme, self.http_port) {
            ("http", 80) | ("https", 443) => format!("{scheme}://{tunnel}.{domain}"),
            (_, port) => format!("{scheme}://{tunnel}.{domain}:{port}"),
        }
    }

    fn registry_handle(&self) -> Arc<registry::Registry> {
        self.registry.clone()
    }
}

pub(crate) fn full_body(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}
