//! Map from tunnel names to the agents that serve them.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;

/// One connected agent, cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub id: u64,
    pub peer: SocketAddr,
    /// Non-secret id of the token the agent authenticated with.
    pub token_id: String,
    pub connection: quinn::Connection,
    /// Permits for requests in flight to this agent, `--max-streams-per-agent` in all.
    pub streams: std::sync::Arc<tokio::sync::Semaphore>,
    /// Datagrams received from the agent when last counted, and when that count last grew.
    pub heard: std::sync::Arc<Mutex<(u64, Instant)>>,
}

impl Agent {
    /// Returns whether nothing has arrived from the agent for [`QUIET_AFTER`]. Both sides send
    /// keep-alives every 2 s, so a live agent's datagram count never stays the same that long, and
    /// an agent killed without closing its connection goes quiet long before its idle timeout
    /// ends the connection.
    fn is_quiet(&self, now: Instant) -> bool {
        let received = self.connection.stats().udp_rx.datagrams;
        let mut heard = self
            .heard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if received != heard.0 {
            *heard = (received, now);
        }
        now.duration_since(heard.1) > QUIET_AFTER
    }
}

/// Silence after which an agent is passed over while another agent of its tunnel is live.
const QUIET_AFTER: Duration = Duration::from_secs(5);

/// Reason a request found no agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no tunnel named {0:?}")]
    UnknownTunnel(String),
    #[error("tunnel {0:?} has no agent connected")]
    NoAgent(String),
}

/// Live tunnels. Names stay known after their last agent leaves, so requests for them get 502
/// (agent gone) rather than 404 (no such tunnel).
#[derive(Debug)]
pub(crate) struct Registry {
    tunnels: Mutex<HashMap<String, Tunnel>>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct Tunnel {
    agents: Vec<Agent>,
    /// Round-robin position among `agents`.
    next: usize,
}

impl Registry {
    /// Builds a registry in which `declared` names are known before any agent connects.
    pub(crate) fn new(declared: &BTreeSet<String>) -> Self {
        let tunnels = declared
            .iter()
            .map(|name| (name.clone(), Tunnel::default()))
            .collect();
        Self {
            tunnels: Mutex::new(tunnels),
            next_id: AtomicU64::new(1),
        }
    }

    /// Returns a fresh agent id.
    pub(crate) fn next_agent_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds `agent` as a server of each of `names`. When a live agent of another token serves one
    /// of them, nothing is added and that name is returned.
    pub(crate) fn register(&self, names: &[String], agent: &Agent) -> Result<(), String> {
        let mut tunnels = self.lock();
        for name in names {
            let taken = tunnels.get(name).is_some_and(|tunnel| {
                tunnel.agents.iter().any(|other| {
                    other.token_id != agent.token_id && other.connection.close_reason().is_none()
                })
            });
            if taken {
                return Err(name.clone());
            }
        }
        for name in names {
            let tunnel = tunnels.entry(name.clone()).or_default();
            tunnel
                .agents
                .retain(|other| other.connection.close_reason().is_none());
            tunnel.agents.push(agent.clone());
        }
        Ok(())
    }

    /// Removes the agent with `id` from every tunnel; the names stay known.
    pub(crate) fn remove(&self, id: u64) {
        for tunnel in self.lock().values_mut() {
            tunnel.agents.retain(|agent| agent.id != id);
        }
    }

    /// Picks the agent for the next request to `name`, rotating among live agents.
    ///
    /// # Errors
    ///
    /// Returns [`RouteError`] when the name is unknown or no live agent serves it.
    pub(crate) fn pick(&self, name: &str) -> Result<Agent, RouteError> {
        let mut tunnels = self.lock();
        let Some(tunnel) = tunnels.get_mut(name) else {
            return Err(RouteError::UnknownTunnel(name.to_string()));
        };
        tunnel
            .agents
            .retain(|agent| agent.connection.close_reason().is_none());
        if tunnel.agents.is_empty() {
            return Err(RouteError::NoAgent(name.to_string()));
        }
        // Rotate among agents that were heard from recently. Only when all are quiet does a
        // quiet one get the request, which may then wait for the connection's idle timeout.
        let now = Instant::now();
        let count = tunnel.agents.len();
        let start = tunnel.next;
        tunnel.next = tunnel.next.wrapping_add(1);
        let live = (0..count)
            .map(|offset| (start + offset) % count)
            .find(|index| !tunnel.agents[*index].is_quiet(now));
        let index = live.unwrap_or(start % count);
        Ok(tunnel.agents[index].clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tunnel>> {
        // A panic while the lock was held cannot leave the map half-updated in a way that
        // matters here, so a poisoned lock is used as it is.
        self.tunnels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// File in the state directory listing every tunnel name an agent has served, one per line, so
/// that after a restart those names get 502 (agent not back yet) instead of 404.
const KNOWN_NAMES_FILE: &str = "known-tunnels";

/// Reads the names recorded by [`remember_names`]; a missing or unreadable file gives none.
pub(crate) fn load_known_names(state_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(KNOWN_NAMES_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| check_tunnel_name(line.trim()).ok())
        .collect()
}

/// Appends the names in `names` that the file does not list yet.
pub(crate) fn remember_names(state_dir: &Path, names: &[String]) {
    let known = load_known_names(state_dir);
    let new: Vec<&String> = names.iter().filter(|name| !known.contains(name)).collect();
    if new.is_empty() {
        return;
    }
    let path = state_dir.join(KNOWN_NAMES_FILE);
    let written = std::fs::create_dir_all(state_dir).and_then(|()| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        for name in new {
            writeln!(file, "{name}")?;
        }
        Ok(())
    });
    if let Err(err) = written {
        tracing::warn!(path = %path.display(), %err, "failed to record tunnel names");
    }
}

/// Checks and lower-cases a tunnel name: one DNS label of 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen.
///
/// # Errors
///
/// Returns an error saying what is wrong with the name.
pub(crate) fn check_tunnel_name(name: &str) -> anyhow::Result<String> {
    let name = name.to_ascii_lowercase();
    if name.is_empty() || name.len() > 63 {
        bail!("tunnel name must be 1 to 63 characters, got {}", name.len());
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("tunnel name {name:?} may contain only letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        bail!("tunnel name {name:?} must not start or end with '-'");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_checked() {
        assert_eq!(check_tunnel_name("App-1").unwrap(), "app-1");
        for bad in ["", "-a", "a-", "a.b", "a b", &"x".repeat(64)] {
            assert!(check_tunnel_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn declared_name_without_agent_is_known() {
        let declared = BTreeSet::from(["app".to_string()]);
        let registry = Registry::new(&declared);
        assert_eq!(
            registry.pick("app").unwrap_err(),
            RouteError::NoAgent("app".into())
        );
        assert_eq!(
            registry.pick("other").unwrap_err(),
            RouteError::UnknownTunnel("other".into())
        );
    }
}
