//! Command-line arguments and the checked configuration they become.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use transport::{parse_duration, TransportLimits};

/// Private side of ingress-tunnel: dials the ingress over QUIC and serves each public request
/// from a local upstream.
#[derive(Debug, Parser)]
#[command(name = "tunnel-agent", version)]
pub struct Args {
    /// QUIC address of the ingress, as host:port.
    #[arg(long, env = "TUNNEL_INGRESS", default_value = "127.0.0.1:4433")]
    pub ingress: String,

    /// SHA-256 fingerprint (hex) of the ingress's QUIC certificate, as the ingress prints it.
    #[arg(long, env = "TUNNEL_CERT_SHA256", required_unless_present = "ca_file")]
    pub cert_sha256: Option<String>,

    /// PEM file of CA certificates that sign the ingress's QUIC certificate, in place of
    /// --cert-sha256.
    #[arg(long, env = "TUNNEL_CA_FILE", conflicts_with = "cert_sha256")]
    pub ca_file: Option<PathBuf>,

    /// Name the ingress certificate is checked against with --ca-file. Defaults to the host
    /// part of --ingress.
    #[arg(long, env = "TUNNEL_SERVER_NAME")]
    pub server_name: Option<String>,

    /// Shared secret configured on the ingress.
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Tunnel to serve, as NAME=URL, e.g. app=http://127.0.0.1:3000. Use the h2c:// scheme for
    /// an upstream that speaks prior-knowledge HTTP/2 (gRPC), and https:// for one that speaks
    /// TLS (HTTP/2 or HTTP/1.1 by ALPN). Repeatable.
    #[arg(
        long = "tunnel",
        env = "TUNNEL_TUNNELS",
        value_delimiter = ',',
        required = true
    )]
    pub tunnels: Vec<String>,

    /// CA certificates (PEM) that https:// upstreams are checked against, instead of the
    /// Mozilla roots built into the agent.
    #[arg(long, env = "TUNNEL_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// Accept any certificate from https:// upstreams, such as a development server's
    /// self-signed one. The connection is encrypted but the upstream is not authenticated.
    #[arg(long, env = "TUNNEL_UPSTREAM_INSECURE", conflicts_with = "upstream_ca")]
    pub upstream_insecure: bool,

    /// Time allowed for the TCP connection to the upstream (e.g. 500ms, 5s).
    #[arg(long, env = "TUNNEL_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Maximum wait between reconnect attempts.
    #[arg(long, env = "TUNNEL_MAX_BACKOFF", default_value = "2s", value_parser = parse_duration)]
    pub max_backoff: Duration,

    /// Time in-flight requests get to finish after SIGTERM before the agent exits.
    #[arg(long, env = "TUNNEL_DRAIN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub drain_grace: Duration,
}

/// Trust anchor the agent checks the ingress certificate against.
#[derive(Debug, Clone)]
pub enum TrustAnchor {
    /// SHA-256 of the end-entity certificate.
    Pinned([u8; 32]),
    /// CA certificates from a PEM file.
    CaFile(PathBuf),
}

/// Protocol the agent speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// Prior-knowledge HTTP/2 without TLS.
    H2c,
    /// TLS, with HTTP/2 or HTTP/1.1 chosen by ALPN.
    Https,
}

/// A local service that a tunnel forwards to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`.
    pub authority: String,
    pub protocol: UpstreamProtocol,
}

/// Checked configuration of one agent.
#[derive(Debug, Clone)]
pub struct Config {
    pub ingress: String,
    pub server_name: String,
    pub trust: TrustAnchor,
    pub token: String,
    /// Tunnel name (lower case) to upstream.
    pub tunnels: BTreeMap<String, Upstream>,
    pub upstream_connect_timeout: Duration,
    /// CA file for https:// upstreams; the Mozilla roots when `None`.
    pub upstream_ca: Option<PathBuf>,
    /// Skip the certificate check of https:// upstreams.
    pub upstream_insecure: bool,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub drain_grace: Duration,
    pub max_frame_len: u32,
    pub transport: TransportLimits,
}

impl Config {
    /// Builds a configuration with defaults for the timing settings.
    pub fn new(
        ingress: impl Into<String>,
        trust: TrustAnchor,
        token: impl Into<String>,
        tunnels: BTreeMap<String, Upstream>,
    ) -> Self {
        let ingress = ingress.into();
        Self {
            server_name: default_server_name(&ingress),
            ingress,
            trust,
            token: token.into(),
            tunnels,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_ca: None,
            upstream_insecure: false,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            drain_grace: Duration::from_secs(10),
            max_frame_len: protocol::MAX_FRAME_LEN,
            transport: TransportLimits::default(),
        }
    }
}

impl TryFrom<Args> for Config {
    type Error = anyhow::Error;

    fn try_from(args: Args) -> anyhow::Result<Self> {
        if args.token.is_empty() {
            bail!("--token must not be empty");
        }
        let trust = match (args.cert_sha256, args.ca_file) {
            (Some(hex), _) => TrustAnchor::Pinned(parse_fingerprint(&hex)?),
            (None, Some(path)) => TrustAnchor::CaFile(path),
            (None, None) => bail!("give --cert-sha256 or --ca-file to check the ingress"),
        };
        if args.tunnels.len() > protocol::MAX_TUNNELS_PER_HELLO {
            bail!(
                "{} --tunnel flags given; one agent may serve at most {}",
                args.tunnels.len(),
                protocol::MAX_TUNNELS_PER_HELLO
            );
        }
        let mut tunnels = BTreeMap::new();
        for spec in &args.tunnels {
            let (name, upstream) = parse_tunnel(spec)?;
            if tunnels.insert(name.clone(), upstream).is_some() {
                bail!("tunnel {name:?} is given twice");
            }
        }

        let mut config = Config::new(args.ingress, trust, args.token, tunnels);
        if let Some(name) = args.server_name {
            config.server_name = name;
        }
        config.upstream_connect_timeout = args.upstream_connect_timeout;
        config.upstream_ca = args.upstream_ca;
        config.upstream_insecure = args.upstream_insecure;
        config.max_backoff = args.max_backoff.max(config.min_backoff);
        config.drain_grace = args.drain_grace;
        Ok(config)
    }
}

/// Parses a 64-digit hex SHA-256 fingerprint; colons between bytes are allowed.
///
/// # Errors
///
/// Returns an error when the input is not 32 bytes of hex.
pub fn parse_fingerprint(input: &str) -> anyhow::Result<[u8; 32]> {
    let digits: String = input.chars().filter(|c| *c != ':').collect();
    let invalid = || {
        anyhow::anyhow!(
            "invalid --cert-sha256 {input:?}: expected the 64 hex digits the ingress prints \
             at start"
        )
    };
    let bytes = hex::decode(digits.trim()).map_err(|_| invalid())?;
    bytes.try_into().map_err(|_: Vec<u8>| invalid())
}

fn parse_tunnel(spec: &str) -> anyhow::Result<(String, Upstream)> {
    let Some((name, url)) = spec.split_once('=') else {
        bail!("invalid --tunnel {spec:?}: expected NAME=URL, e.g. app=http://127.0.0.1:3000");
    };
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() {
        bail!("invalid --tunnel {spec:?}: the name is empty");
    }
    let uri: http::Uri = url
        .trim()
        .parse()
        .with_context(|| format!("invalid --tunnel {spec:?}: {url:?} is not a URL"))?;
    let protocol = match uri.scheme_str() {
        Some("http") => UpstreamProtocol::Http1,
        Some("h2c") => UpstreamProtocol::H2c,
        Some("https") => UpstreamProtocol::Https,
        other => bail!(
            "invalid --tunnel {spec:?}: scheme {:?} is not supported, use http://, h2c:// or https://",
            other.unwrap_or("")
        ),
    };
    let Some(authority) = uri.authority() else {
        bail!("invalid --tunnel {spec:?}: the URL has no host");
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("invalid --tunnel {spec:?}: a path prefix is not supported, give only scheme://host:port");
    }
    let default_port = if protocol == UpstreamProtocol::Https {
        443
    } else {
        80
    };
    let authority = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:{default_port}", authority.host()),
    };
    Ok((
        name,
        Upstream {
            authority,
            protocol,
        },
    ))
}

fn default_server_name(ingress: &str) -> String {
    let host = match ingress.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => ingress,
    };
    if host.parse::<std::net::IpAddr>().is_ok() || host.is_empty() {
        "ingress-tunnel".to_string()
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_spec_parsed() {
        let (name, upstream) = parse_tunnel("App=http://127.0.0.1:3000").unwrap();
        assert_eq!(name, "app");
        assert_eq!(upstream.authority, "127.0.0.1:3000");
        assert_eq!(upstream.protocol, UpstreamProtocol::Http1);
        let (_, grpc) = parse_tunnel("rpc=h2c://localhost:50051/").unwrap();
        assert_eq!(grpc.protocol, UpstreamProtocol::H2c);
        let (_, secure) = parse_tunnel("web=https://localhost").unwrap();
        assert_eq!(secure.protocol, UpstreamProtocol::Https);
        assert_eq!(secure.authority, "localhost:443");
    }

    #[test]
    fn bad_tunnel_specs_rejected() {
        for spec in ["app", "=http://a:1", "app=ftp://a:1", "app=http://a:1/base"] {
            assert!(parse_tunnel(spec).is_err(), "{spec}");
        }
    }

    #[test]
    fn fingerprint_parsed() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn server_name_from_ingress() {
        assert_eq!(default_server_name("127.0.0.1:4433"), "ingress-tunnel");
        assert_eq!(default_server_name("[::1]:4433"), "ingress-tunnel");
        assert_eq!(
            default_server_name("tunnel.example.com:4433"),
            "tunnel.example.com"
        );
    }
}
