//! Entry points for the fuzz targets in `fuzz/`, compiled only with the `fuzzing` feature.
//!
//! [`HelloChecker`] runs the checks that the QUIC endpoint runs on an agent's hello (rate limit,
//! protocol version, token, tunnel names) without sockets, TLS or a registry. The agent
//! registration that follows the checks needs a live QUIC connection, so it is not covered.
//! Nothing in the ingress itself uses this module.

use std::net::IpAddr;
use std::time::Duration;

use protocol::{Hello, RefuseReason};

use crate::{auth, registry, tunnels, Config};

/// Outcome of the hello checks for an accepted agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Non-secret id of the token the agent authenticated with.
    pub token_id: String,
    /// Lower-cased tunnel names without duplicates, in the order of the hello.
    pub names: Vec<String>,
}

/// Reason and message of a refused hello, as sent in the refusal reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: RefuseReason,
    pub message: String,
}

/// The ingress's hello checks over one configuration, with the failed-handshake counts kept
/// between calls as the running ingress keeps them.
pub struct HelloChecker {
    config: Config,
    tokens: auth::Tokens,
    failures: auth::FailureLimiter,
}

impl HelloChecker {
    /// Loads the tokens of `config` the way the ingress does at start and builds the checker.
    /// No socket is bound: the addresses in `config` are not used.
    ///
    /// # Errors
    ///
    /// Returns an error when the tokens file cannot be read or is invalid, or when no token is
    /// configured.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let tokens = auth::Tokens::load(config.token.as_deref(), config.tokens_file.as_deref())?;
        let failures = failure_limiter(&config);
        Ok(Self {
            config,
            tokens,
            failures,
        })
    }

    /// Runs the ingress's hello checks for a hello from `peer`. Failed checks count towards
    /// the peer's failed-handshake limit, as in the ingress.
    ///
    /// # Errors
    ///
    /// Returns [`Refused`] with the reason and message the ingress would send to the agent.
    pub fn check(&self, hello: &Hello, peer: IpAddr) -> Result<Accepted, Refused> {
        let checked = tunnels::check_hello(hello, peer, &self.config, &self.tokens, &self.failures);
        match checked {
            Ok((token_id, names)) => Ok(Accepted { token_id, names }),
            Err((reason, message)) => Err(Refused { reason, message }),
        }
    }

    /// Forgets every failed handshake counted so far, as a restarted ingress would.
    pub fn forget_failures(&mut self) {
        self.failures = failure_limiter(&self.config);
    }
}

/// Checks and lower-cases a tunnel name with the ingress's rules.
///
/// # Errors
///
/// Returns the message saying what is wrong with the name.
pub fn check_tunnel_name(name: &str) -> Result<String, String> {
    registry::check_tunnel_name(name).map_err(|err| err.to_string())
}

// NOTE: this repeats the one-minute window that `Ingress::bind` gives its limiter, because the
// ingress keeps that number inline; change both together.
fn failure_limiter(config: &Config) -> auth::FailureLimiter {
    auth::FailureLimiter::new(config.max_failed_handshakes, Duration::from_secs(60))
}
