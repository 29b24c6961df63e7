//! Local set-up: starts the demo upstream, ingress + tunnel-agent and the long-poll baseline
//! on loopback and waits until a request passes through each.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::client::{HttpClient, Target};
use super::memory::Watched;
use super::procs::{self, Processes, Started};
use super::{peers, Args, PathSpec, Progress, Role};

/// Time each process gets to print its address or pass the first request.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Tunnel name the agent registers; requests reach it with `Host: app.localhost`.
const TUNNEL_HOST: &str = "app.localhost";

/// Paths of the binaries a local run starts.
#[derive(Debug)]
pub(super) struct Binaries {
    ingress: PathBuf,
    tunnel_agent: PathBuf,
    demo_upstream: PathBuf,
    longpoll_front: PathBuf,
    longpoll_agent: PathBuf,
}

impl Binaries {
    /// Finds the binaries in `dir`, or next to this executable.
    ///
    /// # Errors
    ///
    /// Returns an error naming the first binary that is missing.
    pub(super) fn locate(dir: Option<&Path>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::current_exe()
                .context("failed to find this executable")?
                .parent()
                .context("this executable has no parent folder")?
                .to_path_buf(),
        };
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} not found; build it with `cargo build --release -p ingress -p tunnel-agent -p tunnel-bench` or pass --bin-dir",
                    path.display()
                )
            }
        };
        Ok(Self {
            ingress: find("ingress")?,
            tunnel_agent: find("tunnel-agent")?,
            demo_upstream: find("demo-upstream")?,
            longpoll_front: find("longpoll-front")?,
            longpoll_agent: find("longpoll-agent")?,
        })
    }
}

/// The started paths and the ingress state folder, removed when this is dropped.
#[derive(Debug)]
pub(super) struct LocalSetup {
    pub paths: Vec<PathSpec>,
    _state_dir: tempfile::TempDir,
}

/// Starts every local process and returns the paths in table order: direct, tunnel,
/// baseline, then any peers.
///
/// # Errors
///
/// Returns an error when a process fails to start or is not ready within its deadline.
pub(super) async fn start(
    bins: &Binaries,
    processes: &Processes,
    args: &Args,
    notes: &mut Vec<String>,
    progress: Progress,
) -> anyhow::Result<LocalSetup> {
    let client = HttpClient::new();
    progress.line("starting demo-upstream");
    let upstream = start_announced(processes, "demo-upstream", &bins.demo_upstream, &[]).await?;
    let direct = PathSpec {
        target: Target::local("direct", upstream.0, None),
        role: Role::Direct,
        processes: Vec::new(),
    };
    wait_until_ready(&client, &direct.target).await?;

    progress.line("starting ingress and tunnel-agent");
    let state_dir = tempfile::Builder::new()
        .prefix("compare-latency-")
        .tempdir()
        .context("failed to create a temporary state folder")?;
    let tunnel = start_tunnel(bins, processes, upstream.0, state_dir.path()).await?;
    let ready_after = wait_until_ready(&client, &tunnel.target).await?;
    progress.line(&format!(
        "  tunnel passed /ping {} ms after the agent started",
        ready_after.as_millis()
    ));

    progress.line(&format!(
        "starting longpoll-front and longpoll-agent ({} poller(s))",
        args.baseline_pollers
    ));
    let baseline = start_baseline(bins, processes, upstream.0, args.baseline_pollers).await?;
    wait_until_ready(&client, &baseline.target).await?;

    let mut paths = vec![direct, tunnel, baseline];
    if args.with_peers {
        for peer in peers::start(processes, upstream.0, state_dir.path(), notes) {
            match wait_until_ready(&client, &peer.target).await {
                Ok(_) => paths.push(peer),
                Err(err) => notes.push(format!(
                    "--with-peers: {} skipped: {err:#}",
                    peer.target.label
                )),
            }
        }
    }
    Ok(LocalSetup {
        paths,
        _state_dir: state_dir,
    })
}

/// Starts one of this crate's servers on port 0 and reads the bound address it prints.
async fn start_announced(
    processes: &Processes,
    name: &str,
    program: &Path,
    extra_args: &[String],
) -> anyhow::Result<(SocketAddr, u32)> {
    let mut args = vec!["--listen".to_string(), "127.0.0.1:0".to_string()];
    args.extend_from_slice(extra_args);
    let mut started = processes.start(name, program, &args)?;
    let addr = procs::wait_for_line(&mut started, name, "listening on ", READY_DEADLINE).await?;
    let addr = addr
        .parse()
        .with_context(|| format!("{name} printed an invalid address {addr:?}"))?;
    Ok((addr, started.pid))
}

async fn start_tunnel(
    bins: &Binaries,
    processes: &Processes,
    upstream: SocketAddr,
    state_dir: &Path,
) -> anyhow::Result<PathSpec> {
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
    let quic = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
    let token = format!(
        "bench-{}-{}",
        std::process::id(),
        crate::clock::unix_micros()
    );
    let ingress_args = [
        "--http".to_string(),
        http.to_string(),
        "--quic".to_string(),
        quic.to_string(),
        "--domain".to_string(),
        "localhost".to_string(),
        "--token".to_string(),
        token.clone(),
        "--state-dir".to_string(),
        state_dir.join("ingress").display().to_string(),
        // Every benchmark client comes from 127.0.0.1, and an open WebSocket keeps its slot,
        // so the default of 512 per address would cap the 1000 idle WebSockets.
        "--max-connections-per-ip".to_string(),
        "100000".to_string(),
    ];
    let mut ingress = processes.start("ingress", &bins.ingress, &ingress_args)?;
    let fingerprint = procs::wait_for_line(
        &mut ingress,
        "ingress",
        "QUIC certificate SHA-256:",
        READY_DEADLINE,
    )
    .await?;

    let agent_args = [
        "--ingress".to_string(),
        quic.to_string(),
        "--cert-sha256".to_string(),
        fingerprint,
        "--token".to_string(),
        token,
        "--tunnel".to_string(),
        format!("app=http://{upstream}"),
    ];
    let agent: Started = processes.start("tunnel-agent", &bins.tunnel_agent, &agent_args)?;
    Ok(PathSpec {
        target: Target::local("tunnel", http, Some(TUNNEL_HOST)),
        role: Role::Tunnel,
        processes: vec![
            Watched::new("ingress", ingress.pid),
            Watched::new("tunnel-agent", agent.pid),
        ],
    })
}

async fn start_baseline(
    bins: &Binaries,
    processes: &Processes,
    upstream: SocketAddr,
    pollers: u16,
) -> anyhow::Result<PathSpec> {
    let (front, front_pid) =
        start_announced(processes, "longpoll-front", &bins.longpoll_front, &[]).await?;
    let agent_args = [
        "--front".to_string(),
        format!("http://{front}"),
        "--upstream".to_string(),
        format!("http://{upstream}"),
        "--pollers".to_string(),
        pollers.to_string(),
    ];
    let agent = processes.start("longpoll-agent", &bins.longpoll_agent, &agent_args)?;
    Ok(PathSpec {
        target: Target::local("baseline", front, None),
        role: Role::Baseline,
        processes: vec![
            Watched::new("longpoll-front", front_pid),
            Watched::new("longpoll-agent", agent.pid),
        ],
    })
}

/// Probes `GET /ping` until it returns 200 and returns how long that took.
///
/// # Errors
///
/// Returns an error with the last failure when [`READY_DEADLINE`] passes first.
pub(super) async fn wait_until_ready(
    client: &HttpClient,
    target: &Target,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last_failure = String::from("no probe sent");
    while started.elapsed() < READY_DEADLINE {
        match client.get(target, "/ping", Duration::from_secs(2)).await {
            Ok(response) if response.status() == http::StatusCode::OK => {
                return Ok(started.elapsed());
            }
            Ok(response) => last_failure = format!("status {}", response.status()),
            Err(err) => last_failure = format!("{err:#}"),
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    bail!(
        "GET /ping on {} did not return 200 within {} s (last: {last_failure}); see the logs folder",
        target.display_url(),
        READY_DEADLINE.as_secs()
    )
}

/// Returns a loopback TCP port that was free a moment ago.
pub(super) fn free_tcp_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("failed to find a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

/// Returns a loopback UDP port that was free a moment ago.
pub(super) fn free_udp_port() -> anyhow::Result<u16> {
    let socket =
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("failed to find a free UDP port")?;
    Ok(socket.local_addr()?.port())
}
