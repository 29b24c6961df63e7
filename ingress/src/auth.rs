//! Agent authentication: which token may serve which tunnel names, and a limit on failed
//! handshakes per source address.
//!
//! Tokens come from `--token` (any name) and from a TOML tokens file:
//!
//! ```toml
//! [tokens]
//! "secret-for-alice" = ["app", "blog"]
//! "secret-for-ops" = ["*"]          # any name
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::registry::check_tunnel_name;

/// Names one token may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allowed {
    Any,
    Names(BTreeSet<String>),
}

impl Allowed {
    pub(crate) fn permits(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Names(names) => names.contains(name),
        }
    }
}

/// Short, non-secret label of a token: the first 8 hex digits of its SHA-256, for logs and for
/// telling agents of different tokens apart.
pub(crate) type TokenId = String;

#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    allowed: Allowed,
}

/// The accepted tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    /// Builds the set from the bare `--token` (which may serve any name) and a tokens file.
    ///
    /// # Errors
    ///
    /// Returns an error when the file cannot be read or is not valid, or when no token is
    /// configured at all.
    pub(crate) fn load(bare: Option<&str>, file: Option<&Path>) -> anyhow::Result<Tokens> {
        let mut tokens = Tokens::default();
        if let Some(token) = bare {
            tokens.add(token, Allowed::Any)?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read tokens file {}", path.display()))?;
            tokens
                .add_file(&text)
                .with_context(|| format!("invalid tokens file {}", path.display()))?;
        }
        if tokens.entries.is_empty() {
            bail!("no token configured: give --token or a --tokens-file with at least one token");
        }
        Ok(tokens)
    }

    fn add_file(&mut self, text: &str) -> anyhow::Result<()> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            tokens: HashMap<String, Vec<String>>,
        }
        let file: File = toml::from_str(text)?;
        for (token, names) in file.tokens {
            let allowed = if names.iter().any(|name| name == "*") {
                Allowed::Any
            } else {
                let mut checked = BTreeSet::new();
                for name in &names {
                    checked.insert(check_tunnel_name(name)?);
                }
                Allowed::Names(checked)
            };
            self.add(&token, allowed)?;
        }
        Ok(())
    }

    fn add(&mut self, token: &str, allowed: Allowed) -> anyhow::Result<()> {
        if token.is_empty() {
            bail!("a token must not be empty");
        }
        self.entries.push(Entry {
            digest: Sha256::digest(token.as_bytes()).into(),
            allowed,
        });
        Ok(())
    }

    /// Number of configured tokens.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Finds `token`, comparing it with every entry in time that depends on neither its
    /// content nor its length: both sides are hashed and every digest is compared whole.
    pub(crate) fn check(&self, token: &str) -> Option<(TokenId, Allowed)> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            let diff = given
                .iter()
                .zip(entry.digest.iter())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(entry);
            }
        }
        found.map(|entry| (hex::encode(&entry.digest[..4]), entry.allowed.clone()))
    }
}

/// Counts failed handshakes per source address and refuses an address that failed too often.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

// Bounds the map; older windows are dropped first when it is full.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

impl FailureLimiter {
    pub(crate) fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Returns whether `addr` has used up its failures for the current window.
    pub(crate) fn is_limited(&self, addr: IpAddr, now: Instant) -> bool {
        let failures = self.lock();
        match failures.get(&addr) {
            Some((count, since)) => {
                *count >= self.max_failures && now.duration_since(*since) < self.window
            }
            None => false,
        }
    }

    /// Records a failed handshake from `addr`; returns the failures counted in this window.
    pub(crate) fn record(&self, addr: IpAddr, now: Instant) -> u32 {
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED_ADDRESSES {
            let window = self.window;
            failures.retain(|_, (_, since)| now.duration_since(*since) < window);
        }
        let entry = failures.entry(addr).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_tokens_map_to_names() {
        let mut tokens = Tokens::default();
        tokens
            .add_file("[tokens]\n\"alice\" = [\"App\", \"blog\"]\n\"ops\" = [\"*\"]\n")
            .unwrap();
        let (_, alice) = tokens.check("alice").unwrap();
        assert!(alice.permits("app"));
        assert!(alice.permits("blog"));
        assert!(!alice.permits("api"));
        let (_, ops) = tokens.check("ops").unwrap();
        assert!(ops.permits("anything"));
        assert!(tokens.check("mallory").is_none());
        assert!(tokens.check("").is_none());
    }

    #[test]
    fn token_ids_differ_and_hide_the_token() {
        let tokens = Tokens::load(Some("first"), None).unwrap();
        let (id, _) = tokens.check("first").unwrap();
        assert_eq!(id.len(), 8);
        assert!(!id.contains("first"));
    }

    #[test]
    fn bad_files_rejected() {
        let mut tokens = Tokens::default();
        assert!(tokens.add_file("tokens = 3").is_err());
        assert!(tokens.add_file("[tokens]\n\"a\" = [\"bad name\"]").is_err());
        assert!(tokens.add_file("[tokens]\n\"\" = [\"app\"]").is_err());
        assert!(tokens.add_file("[other]\nx = 1").is_err());
        assert!(Tokens::load(None, None).is_err());
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        for expected in 1..=3 {
            assert!(!limiter.is_limited(addr, start));
            assert_eq!(limiter.record(addr, start), expected);
        }
        assert!(limiter.is_limited(addr, start));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!limiter.is_limited(other, start));
        assert!(!limiter.is_limited(addr, start + Duration::from_secs(61)));
    }
}
