//! Command-line arguments and the checked configuration they become.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use transport::{parse_duration, TransportLimits};

use crate::proxies::AddrRange;

/// Public side of ingress-tunnel: serves HTTP on a public port and routes each request by its
/// Host (`<tunnel>.<domain>`) to a tunnel-agent connected over QUIC.
#[derive(Debug, Parser)]
#[command(name = "ingress", version)]
pub struct Args {
    /// Address of the public HTTP/1.1 and HTTP/2 (h2c) listener.
    /// Use `0.0.0.0:80` or `[::]:80` on a public host.
    #[arg(long, env = "INGRESS_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// PEM certificate chain for HTTPS on the public listener. With it (and --tls-key) the
    /// listener speaks TLS only, offering HTTP/2 and HTTP/1.1 by ALPN.
    #[arg(long, env = "INGRESS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key matching --tls-cert.
    #[arg(long, env = "INGRESS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// UDP address where agents connect over QUIC.
    #[arg(long, env = "INGRESS_QUIC", default_value = "127.0.0.1:4433")]
    pub quic: SocketAddr,

    /// Domain under which tunnels are served: tunnel `app` is served at `app.<domain>`.
    #[arg(long, env = "INGRESS_DOMAIN", default_value = "localhost")]
    pub domain: String,

    /// Shared secret that agents present in their hello; it may serve any tunnel name.
    #[arg(
        long,
        env = "INGRESS_TOKEN",
        hide_env_values = true,
        required_unless_present = "tokens_file"
    )]
    pub token: Option<String>,

    /// TOML file mapping each token to the tunnel names it may serve, as
    /// `[tokens]` then `"SECRET" = ["app", "api"]` (`"*"` for any name). Reloaded on SIGHUP.
    #[arg(long, env = "INGRESS_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Failed agent handshakes allowed per source address per minute before that address is
    /// refused for the rest of the minute.
    #[arg(long, env = "INGRESS_MAX_FAILED_HANDSHAKES", default_value_t = 10)]
    pub max_failed_handshakes: u32,

    /// Tunnel names known before any agent connects. Requests for them get 502 rather than 404
    /// while no agent serves them. Names outside the list are still accepted from agents
    /// unless --only-declared is given.
    #[arg(long = "tunnel-name", env = "INGRESS_TUNNELS", value_delimiter = ',')]
    pub tunnel_names: Vec<String>,

    /// Tunnel that serves requests whose Host is not under --domain (a bare IP address, say).
    /// Without it such requests get 404.
    #[arg(long, env = "INGRESS_DEFAULT_TUNNEL")]
    pub default_tunnel: Option<String>,

    /// Accept only the names given with --tunnel-name.
    #[arg(long, env = "INGRESS_ONLY_DECLARED")]
    pub only_declared: bool,

    /// Directory for the generated QUIC certificate and key.
    #[arg(long, env = "INGRESS_STATE_DIR", default_value = "ingress-state")]
    pub state_dir: PathBuf,

    /// PEM certificate chain for the QUIC endpoint, in place of the generated one.
    #[arg(long, env = "INGRESS_QUIC_CERT", requires = "quic_key")]
    pub quic_cert: Option<PathBuf>,

    /// PEM private key matching --quic-cert.
    #[arg(long, env = "INGRESS_QUIC_KEY", requires = "quic_cert")]
    pub quic_key: Option<PathBuf>,

    /// Time the upstream has to send its response head before the client gets 504
    /// (e.g. 500ms, 30s, 2m).
    #[arg(long, env = "INGRESS_RESPONSE_HEADER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub response_header_timeout: Duration,

    /// Time in-flight requests get to finish after SIGTERM before connections are closed.
    #[arg(long, env = "INGRESS_DRAIN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// Time a client has to finish the TLS handshake and to send a complete HTTP/1.1
    /// request head (e.g. 30s). A head that started and did not finish gets 408.
    #[arg(long, env = "INGRESS_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time a client connection may stay open with no request in flight, HTTP/1.1 and
    /// HTTP/2 alike; then it is closed, HTTP/2 with GOAWAY (e.g. 60s). An idle HTTP/1.1
    /// connection also closes after the header read timeout, if that is shorter.
    #[arg(long, env = "INGRESS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// A proxy in front of the ingress, as an address or a range such as 10.0.0.0/8; repeat
    /// the flag or separate with commas. The client address is then read from the
    /// X-Forwarded-For such a proxy sends, its X-Forwarded-Proto and -Host are kept, and its
    /// connections do not count against --max-connections-per-ip. From any other peer,
    /// X-Forwarded-For is only appended to.
    #[arg(
        long = "trusted-proxy",
        env = "INGRESS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<AddrRange>,

    /// Maximum size of a request head in bytes; larger ones get 431 (HTTP/1.1 uses at least
    /// 8192).
    #[arg(long, env = "INGRESS_MAX_HEADER_BYTES", default_value_t = 65536)]
    pub max_header_bytes: u32,

    /// Maximum number of header fields in a request head; more get 431.
    #[arg(long, env = "INGRESS_MAX_HEADER_FIELDS", default_value_t = 100)]
    pub max_header_fields: usize,

    /// Maximum open public connections per client IP address; requests on further
    /// connections get 503.
    #[arg(long, env = "INGRESS_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_connections_per_ip: u32,

    /// Maximum number of requests in flight to one agent; more wait for a free slot up to the
    /// response-header timeout, then get 503.
    #[arg(long, env = "INGRESS_MAX_STREAMS_PER_AGENT", default_value_t = 4096)]
    pub max_streams_per_agent: u32,
}

/// Checked configuration of one ingress.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    /// Lower-case domain without a leading or trailing dot.
    pub domain: String,
    /// Token that may serve any name.
    pub token: Option<String>,
    /// Tokens file, read at start and on reload.
    pub tokens_file: Option<PathBuf>,
    /// Failed handshakes allowed per source address per minute.
    pub max_failed_handshakes: u32,
    pub declared_tunnels: BTreeSet<String>,
    pub only_declared: bool,
    /// Tunnel for requests whose Host is not under `domain`.
    pub default_tunnel: Option<String>,
    pub state_dir: PathBuf,
    pub quic_identity: Option<(PathBuf, PathBuf)>,
    /// Certificate chain and key for HTTPS on the public listener.
    pub public_tls: Option<(PathBuf, PathBuf)>,
    pub response_header_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    pub drain_grace: Duration,
    /// Requests in flight to one agent; more wait up to the response-header timeout, then 503.
    pub max_streams_per_agent: u32,
    /// Time a client has to finish the TLS handshake and to send an HTTP/1.1 request head.
    pub header_read_timeout: Duration,
    /// Time a client connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Proxies whose forwarding fields are believed.
    pub trusted_proxies: Vec<AddrRange>,
    /// Maximum size of a request head.
    pub max_header_bytes: u32,
    /// Maximum number of header fields in a request head.
    pub max_header_fields: usize,
    /// Maximum open public connections per client address.
    pub max_connections_per_ip: u32,
    /// Time an agent has to finish the QUIC and hello handshake.
    pub handshake_timeout: Duration,
    pub max_frame_len: u32,
    pub transport: TransportLimits,
}

impl Config {
    /// Builds a configuration with defaults for everything but the addresses and the token.
    pub fn new(http_addr: SocketAddr, quic_addr: SocketAddr, token: impl Into<String>) -> Self {
        let mut config = Self::without_token(http_addr, quic_addr);
        config.token = Some(token.into());
        config
    }

    /// Builds a configuration with no bare token, for use with a tokens file.
    pub fn without_token(http_addr: SocketAddr, quic_addr: SocketAddr) -> Self {
        Self {
            http_addr,
            quic_addr,
            domain: "localhost".into(),
            token: None,
            tokens_file: None,
            max_failed_handshakes: 10,
            declared_tunnels: BTreeSet::new(),
            only_declared: false,
            default_tunnel: None,
            state_dir: PathBuf::from("ingress-state"),
            quic_identity: None,
            public_tls: None,
            response_header_timeout: Duration::from_secs(60),
            drain_grace: Duration::from_secs(10),
            max_streams_per_agent: 4096,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            max_header_bytes: 65536,
            max_header_fields: 100,
            max_connections_per_ip: 512,
            handshake_timeout: Duration::from_secs(10),
            max_frame_len: protocol::MAX_FRAME_LEN,
            transport: TransportLimits::default(),
        }
    }
}

impl TryFrom<Args> for Config {
    type Error = anyhow::Error;

    fn try_from(args: Args) -> anyhow::Result<Self> {
        if args.token.as_deref() == Some("") {
            bail!("--token must not be empty");
        }
        let domain = normalize_domain(&args.domain)?;
        let mut declared = BTreeSet::new();
        for name in &args.tunnel_names {
            let name = crate::registry::check_tunnel_name(name)
                .with_context(|| format!("invalid --tunnel-name {name:?}"))?;
            declared.insert(name);
        }
        if args.only_declared && declared.is_empty() {
            bail!("--only-declared needs at least one --tunnel-name");
        }
        if args.max_connections_per_ip == 0 {
            bail!("--max-connections-per-ip must be at least 1");
        }
        if args.max_header_fields == 0 {
            bail!("--max-header-fields must be at least 1");
        }
        if args.idle_timeout.is_zero() {
            bail!("--idle-timeout must be longer than zero");
        }
        if args.max_streams_per_agent == 0 {
            bail!("--max-streams-per-agent must be at least 1");
        }

        let default_tunnel = match &args.default_tunnel {
            Some(name) => Some(
                crate::registry::check_tunnel_name(name)
                    .with_context(|| format!("invalid --default-tunnel {name:?}"))?,
            ),
            None => None,
        };

        let mut config = Config::without_token(args.http, args.quic);
        config.token = args.token;
        config.tokens_file = args.tokens_file;
        config.max_failed_handshakes = args.max_failed_handshakes;
        config.default_tunnel = default_tunnel;
        config.domain = domain;
        config.declared_tunnels = declared;
        config.only_declared = args.only_declared;
        config.state_dir = args.state_dir;
        config.quic_identity = args.quic_cert.zip(args.quic_key);
        config.public_tls = args.tls_cert.zip(args.tls_key);
        config.response_header_timeout = args.response_header_timeout;
        config.drain_grace = args.drain_grace;
        config.header_read_timeout = args.header_read_timeout;
        config.idle_timeout = args.idle_timeout;
        config.trusted_proxies = args.trusted_proxies;
        config.max_header_bytes = args.max_header_bytes;
        config.max_header_fields = args.max_header_fields;
        config.max_connections_per_ip = args.max_connections_per_ip;
        config.max_streams_per_agent = args.max_streams_per_agent;
        Ok(config)
    }
}

fn normalize_domain(input: &str) -> anyhow::Result<String> {
    let domain = input.trim().trim_matches('.').to_ascii_lowercase();
    let valid = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        bail!("invalid --domain {input:?}: expected a DNS name such as tunnel.example.com");
    }
    Ok(domain)
}
