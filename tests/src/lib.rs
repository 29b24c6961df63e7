//! Test harness: a fixture upstream, an ingress and a tunnel-agent, all in this process on
//! loopback with ephemeral ports, plus HTTP/1.1 and HTTP/2 clients that reach them.

#![forbid(unsafe_code)]

pub mod client;
pub mod fixture;
pub mod process;
pub mod relay;
pub mod rogue;
pub mod tls_front;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ingress::Ingress;
use tokio::sync::{oneshot, watch};
use tunnel_agent::{Agent, Status, TrustAnchor, Upstream, UpstreamProtocol};

pub use crate::fixture::Fixture;

/// Error type of test bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Token the harness configures on both sides.
pub const TOKEN: &str = "test-token";

/// Installs a log subscriber once; `RUST_LOG` selects what is shown.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A running ingress.
pub struct RunningIngress {
    pub http_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    pub cert_sha256: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningIngress {
    /// Starts an ingress on `http` and `quic` (port 0 for ephemeral) with `state_dir`.
    pub async fn start(
        http: SocketAddr,
        quic: SocketAddr,
        state_dir: PathBuf,
        tweak: impl FnOnce(&mut ingress::Config),
    ) -> anyhow::Result<RunningIngress> {
        let mut config = ingress::Config::new(http, quic, TOKEN);
        config.state_dir = state_dir;
        tweak(&mut config);
        Ok(Self::start_config(config).await?.0)
    }

    /// Starts an ingress with `config` and returns it with its token reloader.
    pub async fn start_config(
        config: ingress::Config,
    ) -> anyhow::Result<(RunningIngress, ingress::TokenReloader)> {
        let ingress = Ingress::bind(config).await?;
        let reloader = ingress.token_reloader();
        let (stop, stopped) = oneshot::channel::<()>();
        let http_addr = ingress.http_addr();
        let quic_addr = ingress.quic_addr();
        let cert_sha256 = ingress.cert_sha256().to_string();
        let task = tokio::spawn(ingress.run(async {
            let _ = stopped.await;
        }));
        let running = RunningIngress {
            http_addr,
            quic_addr,
            cert_sha256,
            stop: Some(stop),
            task,
        };
        Ok((running, reloader))
    }

    /// Stops the ingress and waits until its endpoint is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

/// A running agent.
pub struct RunningAgent {
    pub status: watch::Receiver<Status>,
    pub rebinder: tunnel_agent::Rebinder,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), tunnel_agent::AgentError>>,
}

impl RunningAgent {
    /// Starts an agent serving `tunnels` (HTTP/1.1 upstreams) through the ingress at `quic`.
    pub fn start(
        quic: SocketAddr,
        cert_sha256: &str,
        token: &str,
        tunnels: &[(&str, SocketAddr)],
    ) -> anyhow::Result<RunningAgent> {
        Self::start_with_protocol(quic, cert_sha256, token, tunnels, UpstreamProtocol::Http1)
    }

    /// Like [`RunningAgent::start`], speaking `protocol` to the upstreams.
    pub fn start_with_protocol(
        quic: SocketAddr,
        cert_sha256: &str,
        token: &str,
        tunnels: &[(&str, SocketAddr)],
        protocol: UpstreamProtocol,
    ) -> anyhow::Result<RunningAgent> {
        Self::start_configured(quic, cert_sha256, token, tunnels, protocol, |_| {})
    }

    /// Like [`RunningAgent::start_with_protocol`], with a chance to change the agent's
    /// configuration.
    pub fn start_configured(
        quic: SocketAddr,
        cert_sha256: &str,
        token: &str,
        tunnels: &[(&str, SocketAddr)],
        protocol: UpstreamProtocol,
        tweak: impl FnOnce(&mut tunnel_agent::Config),
    ) -> anyhow::Result<RunningAgent> {
        let fingerprint = tunnel_agent::parse_fingerprint(cert_sha256)?;
        let upstreams: BTreeMap<String, Upstream> = tunnels
            .iter()
            .map(|(name, addr)| {
                let upstream = Upstream {
                    authority: addr.to_string(),
                    protocol,
                };
                (name.to_string(), upstream)
            })
            .collect();
        let mut config = tunnel_agent::Config::new(
            quic.to_string(),
            TrustAnchor::Pinned(fingerprint),
            token,
            upstreams,
        );
        config.upstream_connect_timeout = Duration::from_secs(2);
        tweak(&mut config);
        let agent = Agent::new(config)?;
        let status = agent.status();
        let rebinder = agent.rebinder();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Ok(RunningAgent {
            status,
            rebinder,
            stop: Some(stop),
            task,
        })
    }

    /// Starts an agent like [`RunningAgent::start`] and waits up to 10 s for its tunnel.
    ///
    /// # Panics
    ///
    /// Panics when the agent cannot start or does not connect in time.
    pub async fn start_connected(
        quic: SocketAddr,
        cert_sha256: &str,
        token: &str,
        tunnels: &[(&str, SocketAddr)],
    ) -> RunningAgent {
        let mut agent = Self::start(quic, cert_sha256, token, tunnels).expect("starting the agent");
        agent
            .wait_connected(Duration::from_secs(10))
            .await
            .expect("agent connected within 10 s");
        agent
    }

    /// Waits until the agent reports the tunnel up.
    pub async fn wait_connected(&mut self, within: Duration) -> anyhow::Result<()> {
        let connected = self
            .status
            .wait_for(|status| matches!(status, Status::Connected { .. }));
        let outcome = match tokio::time::timeout(within, connected).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("agent stopped before connecting"),
            Err(_) => Err("agent not connected in time"),
        };
        outcome.map_err(|message| {
            anyhow::anyhow!("{message}; last status {:?}", *self.status.borrow())
        })
    }

    /// Waits until the agent reports anything other than connected.
    pub async fn wait_disconnected(&mut self, within: Duration) -> anyhow::Result<()> {
        let lost = self
            .status
            .wait_for(|status| !matches!(status, Status::Connected { .. }));
        match tokio::time::timeout(within, lost).await {
            Ok(_) => Ok(()),
            Err(_) => anyhow::bail!("agent still connected after {within:?}"),
        }
    }

    /// Stops the agent (it drains first) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

/// Fixture, ingress and agent wired together, serving tunnel `app`.
pub struct Tunnel {
    pub fixture: Fixture,
    pub ingress: RunningIngress,
    pub agent: RunningAgent,
    pub state_dir: TempDir,
}

impl Tunnel {
    /// Starts everything with default settings and waits for the tunnel to come up.
    pub async fn start() -> Tunnel {
        Self::start_with(|_| {}).await
    }

    /// Like [`Tunnel::start`], with a chance to change the ingress configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ingress::Config)) -> Tunnel {
        init_tracing();
        let fixture = Fixture::start().await;
        let state_dir = TempDir::new("tunnel");
        let ingress =
            RunningIngress::start(loopback(0), loopback(0), state_dir.path.clone(), tweak)
                .await
                .expect("starting the ingress");
        let agent = RunningAgent::start_connected(
            ingress.quic_addr,
            &ingress.cert_sha256,
            TOKEN,
            &[("app", fixture.addr)],
        )
        .await;
        Tunnel {
            fixture,
            ingress,
            agent,
            state_dir,
        }
    }

    /// Base URL of tunnel `app` through the ingress.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://app.localhost:{}{path}",
            self.ingress.http_addr.port()
        )
    }

    /// URL of the fixture reached directly.
    pub fn direct_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.fixture.addr.port())
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temporary directory.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ingress-tunnel-{label}-{}-{unique}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Declares one test per protocol for each listed `async fn name(protocol: Protocol)`, in
/// modules `http1` and `h2c`.
#[macro_export]
macro_rules! test_each_protocol {
    ($($name:ident),* $(,)?) => {
        mod http1 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::client::Protocol::Http1).await
                }
            )*
        }
        mod h2c {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::client::Protocol::H2c).await
                }
            )*
        }
    };
}
