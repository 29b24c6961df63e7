//! Input layout, fixture and checks of the `handshake` target.
//!
//! Byte 0 picks one of sixteen ingress configurations (see [`Settings::from_flags`]). The rest
//! is a series of connection attempts. Each attempt is one byte that picks the agent's source
//! address from [`PEERS`], then the bytes of its control stream, decoded by a [`FrameDecoder`]
//! with the ingress's maximum frame length. A hello goes through the ingress's own checks;
//! any other frame ends that connection, as the ingress does, and the next attempt starts
//! after it. A stream that does not decode ends the input. The failed-handshake counts carry
//! over between attempts, so one input can reach the rate limit.
//!
//! The checks do not repeat the ingress's code. They state what must hold of any outcome. An
//! accepted hello has the current version, a configured token, and valid lower-cased names that
//! the token may serve. Each refusal reason matches something wrong with the hello. A refusal
//! message never shows a configured token unless the agent sent it as a tunnel name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use bytes::{Buf, BytesMut};
use ingress::fuzzing::{Accepted, HelloChecker, Refused};
use ingress::Config;
use protocol::{Frame, FrameDecoder, Hello, RefuseReason, MAX_FRAME_LEN, PROTOCOL_VERSION};

/// Token that may serve `app` and `blog` (written `Blog` in the file).
pub const ALICE_TOKEN: &str = "alice-7f3c9e21d4b8";
/// Token that may serve any name.
pub const OPS_TOKEN: &str = "ops-52a1e6c0b93d";
/// Token whose list names `api` and `*`, which together mean any name.
pub const MIXED_TOKEN: &str = "mixed-0c4d8b2e6a17";
/// Token given as `--token` in the configurations that have one. It may serve any name.
pub const BARE_TOKEN: &str = "bare-9e8d7c6b5a41";

/// The tokens file every configuration loads.
pub const TOKENS_FILE: &str = "[tokens]
\"alice-7f3c9e21d4b8\" = [\"app\", \"Blog\"]
\"ops-52a1e6c0b93d\" = [\"*\"]
\"mixed-0c4d8b2e6a17\" = [\"api\", \"*\"]
";

/// Tunnel names every configuration declares with `--tunnel-name`.
pub const DECLARED: [&str; 2] = ["app", "api"];

/// Source addresses an attempt can come from. They are documentation ranges, and nothing is
/// sent to them.
pub const PEERS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
];

/// The configuration choices byte 0 makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `--only-declared`: only the names in [`DECLARED`] are accepted.
    pub only_declared: bool,
    /// `--token` is set to [`BARE_TOKEN`].
    pub bare_token: bool,
    /// `--max-failed-handshakes`, 1 to 4.
    pub max_failed_handshakes: u32,
}

impl Settings {
    /// Reads bit 0 (only declared), bit 1 (bare token) and bits 2 and 3 (failures allowed, less
    /// one) of `flags`. The other bits are ignored.
    pub fn from_flags(flags: u8) -> Self {
        Self {
            only_declared: flags & 0b0001 != 0,
            bare_token: flags & 0b0010 != 0,
            max_failed_handshakes: 1 + u32::from((flags >> 2) & 0b11),
        }
    }

    /// Inverse of [`Settings::from_flags`].
    pub fn to_flags(self) -> u8 {
        let failures = (self.max_failed_handshakes.clamp(1, 4) - 1) as u8;
        u8::from(self.only_declared) | u8::from(self.bare_token) << 1 | failures << 2
    }

    fn config(self, tokens_file: PathBuf) -> Config {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut config = Config::without_token(loopback, loopback);
        config.token = self.bare_token.then(|| BARE_TOKEN.to_string());
        config.tokens_file = Some(tokens_file);
        config.max_failed_handshakes = self.max_failed_handshakes;
        config.declared_tunnels = DECLARED.iter().map(|name| name.to_string()).collect();
        config.only_declared = self.only_declared;
        config
    }

    /// Names `token` may serve in this configuration: `None` for an unknown token,
    /// `Some(None)` for any name.
    fn allowed(self, token: &str) -> Option<Option<&'static [&'static str]>> {
        match token {
            ALICE_TOKEN => Some(Some(&["app", "blog"])),
            OPS_TOKEN | MIXED_TOKEN => Some(None),
            BARE_TOKEN if self.bare_token => Some(None),
            _ => None,
        }
    }
}

/// Runs the target on one input and returns the outcome of each hello, in order.
///
/// # Panics
///
/// Panics when an outcome of the ingress's checks breaks a property in the module header.
pub fn run(data: &[u8]) -> Vec<Result<Accepted, Refused>> {
    let mut outcomes = Vec::new();
    let Some((&flags, attempts)) = data.split_first() else {
        return outcomes;
    };
    let settings = Settings::from_flags(flags);
    let mut checker = checker(settings)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    checker.forget_failures();

    let decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut failures = Failures::default();
    let mut buf = BytesMut::from(attempts);
    while let Some(&peer_byte) = buf.first() {
        buf.advance(1);
        let peer = PEERS[usize::from(peer_byte) % PEERS.len()];
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            // The stream ends inside the frame or does not decode: the ingress closes the
            // connection before any check, and the rest of the input cannot be split into
            // attempts.
            Ok(None) | Err(_) => break,
        };
        let Frame::Hello(hello) = frame else {
            continue;
        };
        let outcome = checker.check(&hello, peer);
        check_outcome(settings, &hello, &outcome, failures.of(peer));
        failures.count(peer, &outcome);
        outcomes.push(outcome);
    }
    outcomes
}

/// Returns the checker of `settings`. The sixteen checkers are built on first use, from a
/// tokens file written for them and removed once they are loaded.
fn checker(settings: Settings) -> &'static Mutex<HelloChecker> {
    static CHECKERS: OnceLock<Vec<Mutex<HelloChecker>>> = OnceLock::new();
    let checkers = CHECKERS.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "ingress-tunnel-fuzz-tokens-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, TOKENS_FILE).expect("temporary directory is writable");
        let checkers = (0..16u8)
            .map(|flags| {
                let config = Settings::from_flags(flags).config(path.clone());
                let checker = HelloChecker::new(config).expect("fixture configuration loads");
                Mutex::new(checker)
            })
            .collect();
        // The tokens are loaded once; the file is not needed after that.
        let _ = std::fs::remove_file(&path);
        checkers
    });
    &checkers[usize::from(settings.to_flags())]
}

/// Failed handshakes seen from each peer in one input, as bounds on the ingress's own count:
/// a bad token always counts, a name refusal counts when the token was the reason.
#[derive(Debug, Default)]
struct Failures {
    by_peer: HashMap<IpAddr, FailureBounds>,
}

#[derive(Debug, Default, Clone, Copy)]
struct FailureBounds {
    /// Refusals that certainly counted (bad token).
    at_least: u32,
    /// Refusals that may have counted (bad token or name not allowed).
    at_most: u32,
}

impl Failures {
    fn of(&self, peer: IpAddr) -> FailureBounds {
        self.by_peer.get(&peer).copied().unwrap_or_default()
    }

    fn count(&mut self, peer: IpAddr, outcome: &Result<Accepted, Refused>) {
        let bounds = self.by_peer.entry(peer).or_default();
        match outcome {
            Err(refused) if refused.reason == RefuseReason::BadToken => {
                bounds.at_least += 1;
                bounds.at_most += 1;
            }
            Err(refused) if refused.reason == RefuseReason::NameNotAllowed => {
                bounds.at_most += 1;
            }
            _ => {}
        }
    }
}

fn check_outcome(
    settings: Settings,
    hello: &Hello,
    outcome: &Result<Accepted, Refused>,
    earlier: FailureBounds,
) {
    let limit = settings.max_failed_handshakes;
    if earlier.at_least >= limit {
        let reason = outcome.as_ref().err().map(|refused| refused.reason);
        assert_eq!(
            reason,
            Some(RefuseReason::RateLimited),
            "{} bad tokens with a limit of {limit}, then {outcome:?}",
            earlier.at_least
        );
    }
    match outcome {
        Ok(accepted) => check_accepted(settings, hello, accepted),
        Err(refused) => {
            check_refused(settings, hello, refused, earlier);
            check_no_secret_shown(hello, &refused.message);
        }
    }
}

fn check_accepted(settings: Settings, hello: &Hello, accepted: &Accepted) {
    assert_eq!(
        hello.protocol_version, PROTOCOL_VERSION,
        "accepted {hello:?}"
    );
    let Some(allowed) = settings.allowed(&hello.token) else {
        panic!("accepted {hello:?} with a token that is not configured");
    };
    assert_eq!(
        accepted.token_id.len(),
        8,
        "token id {:?}",
        accepted.token_id
    );
    assert!(
        accepted.token_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "token id {:?}",
        accepted.token_id
    );

    let mut expected = Vec::new();
    for name in &hello.tunnels {
        let name = name.to_ascii_lowercase();
        assert!(is_valid_name(&name), "accepted invalid name {name:?}");
        if !expected.contains(&name) {
            expected.push(name);
        }
    }
    assert!(!expected.is_empty(), "accepted a hello without tunnels");
    assert_eq!(accepted.names, expected, "names accepted from {hello:?}");
    for name in &accepted.names {
        if let Some(names) = allowed {
            assert!(
                names.contains(&name.as_str()),
                "token may not serve {name:?}"
            );
        }
        if settings.only_declared {
            assert!(
                DECLARED.contains(&name.as_str()),
                "{name:?} is not declared"
            );
        }
    }
}

fn check_refused(settings: Settings, hello: &Hello, refused: &Refused, earlier: FailureBounds) {
    let version_ok = hello.protocol_version == PROTOCOL_VERSION;
    let allowed = settings.allowed(&hello.token);
    // Below the limit the checks run in order: version, then token, then names.
    if earlier.at_most < settings.max_failed_handshakes {
        if !version_ok {
            assert_eq!(
                refused.reason,
                RefuseReason::UnsupportedVersion,
                "{hello:?}"
            );
        } else if allowed.is_none() {
            assert_eq!(refused.reason, RefuseReason::BadToken, "{hello:?}");
        }
    }
    match refused.reason {
        RefuseReason::RateLimited => assert!(
            earlier.at_most >= settings.max_failed_handshakes,
            "rate limited after at most {} failures: {hello:?}",
            earlier.at_most
        ),
        RefuseReason::UnsupportedVersion => assert!(!version_ok, "{refused:?} for {hello:?}"),
        RefuseReason::BadToken => assert!(allowed.is_none(), "{refused:?} for a good token"),
        RefuseReason::InvalidName => {
            assert!(
                version_ok && allowed.is_some(),
                "{refused:?} before {hello:?} passed"
            );
            let invalid = hello
                .tunnels
                .iter()
                .any(|name| !is_valid_name(&name.to_ascii_lowercase()));
            assert!(
                hello.tunnels.is_empty() || invalid,
                "{refused:?} for {hello:?}"
            );
        }
        RefuseReason::NameNotAllowed => {
            let Some(allowed) = allowed else {
                panic!("{refused:?} for a token that is not configured");
            };
            assert!(version_ok, "{refused:?} for {hello:?}");
            let refusable = hello.tunnels.iter().any(|name| {
                let name = name.to_ascii_lowercase();
                let declared = DECLARED.contains(&name.as_str());
                let permitted = allowed.is_none_or(|names| names.contains(&name.as_str()));
                is_valid_name(&name) && (!permitted || (settings.only_declared && !declared))
            });
            assert!(refusable, "{refused:?} for {hello:?}");
        }
        RefuseReason::NameTaken => panic!("{refused:?} from the checks, which never register"),
    }
}

/// Checks that a refusal message shows no configured token unless the agent sent it in a
/// tunnel name, where the message may quote it back.
fn check_no_secret_shown(hello: &Hello, message: &str) {
    for secret in [ALICE_TOKEN, OPS_TOKEN, MIXED_TOKEN, BARE_TOKEN] {
        if message.contains(secret) {
            let quoted = hello
                .tunnels
                .iter()
                .any(|name| name.to_ascii_lowercase().contains(secret));
            assert!(
                quoted,
                "refusal message {message:?} shows a configured token"
            );
        }
    }
}

/// Returns whether `name` is a tunnel name as the ingress documents it: one DNS label of 1 to
/// 63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.
fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}
