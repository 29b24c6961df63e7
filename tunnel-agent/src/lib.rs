//! The private side of ingress-tunnel.
//!
//! An [`Agent`] dials the ingress over QUIC, authenticates on a control stream, and serves every
//! request stream the ingress opens by forwarding it to the local upstream named by its tunnel.
//! It reconnects on its own when the connection drops.

#![forbid(unsafe_code)]

mod config;
mod connect;
mod https;
mod streams;
mod tls;
mod upstream;

use std::future::Future;
use std::sync::Arc;

use protocol::RefuseReason;
use tokio::sync::watch;

pub use crate::config::{parse_fingerprint, Args, Config, TrustAnchor, Upstream, UpstreamProtocol};

/// Connection state, published for callers that wait for the tunnel to come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Connected { urls: Vec<String> },
    Disconnected { reason: String },
    Refused { message: String },
}

/// Error that stops an agent for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("ingress refused the agent ({reason:?}): {message}")]
    Refused {
        reason: RefuseReason,
        message: String,
    },
}

/// Handle that makes a running agent rebind its UDP socket.
#[derive(Debug, Clone)]
pub struct Rebinder(watch::Sender<u64>);

impl Rebinder {
    /// Asks the agent to move to a new local UDP port.
    pub fn rebind(&self) {
        self.0.send_modify(|generation| *generation += 1);
    }
}

/// A configured agent, ready to [`run`](Agent::run).
pub struct Agent {
    config: Config,
    client_config: quinn::ClientConfig,
    upstreams: upstream::Upstreams,
    status: watch::Sender<Status>,
    rebind: watch::Sender<u64>,
}

impl Agent {
    /// Checks the TLS settings and prepares the upstream clients.
    ///
    /// # Errors
    ///
    /// Returns an error when the CA file cannot be used.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let client_config = tls::client_config(&config)?;
        let upstreams = upstream::Upstreams::new(&config)?;
        if config.upstream_insecure {
            tracing::warn!(
                "--upstream-insecure: https:// upstreams are not authenticated; use it only for \
                 an upstream on this machine or a network you trust"
            );
        }
        let (status, _) = watch::channel(Status::Connecting);
        let (rebind, _) = watch::channel(0);
        Ok(Self {
            config,
            client_config,
            upstreams,
            status,
            rebind,
        })
    }

    /// Receiver of status changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Returns a handle that moves the agent to a new local UDP port while it runs, for
    /// networks where the agent's address changes (the QUIC connection migrates).
    pub fn rebinder(&self) -> Rebinder {
        Rebinder(self.rebind.clone())
    }

    /// Serves until `shutdown` completes (then drains) or the ingress refuses the agent.
    ///
    /// # Errors
    ///
    /// Returns [`AgentError::Refused`] for a bad token, an unsupported version or a name the
    /// ingress does not allow.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let context = Arc::new(streams::StreamContext {
            upstreams: self.upstreams,
            max_frame_len: self.config.max_frame_len,
        });
        let rebind = self.rebind.subscribe();
        connect::run(
            self.config,
            self.client_config,
            context,
            self.status,
            rebind,
            shutdown,
        )
        .await
    }
}
