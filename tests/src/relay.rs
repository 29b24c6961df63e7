//! A userspace UDP relay between an agent and the ingress that can drop and reorder datagrams
//! and change its outbound port, which is what a NAT rebinding looks like to the ingress.
//!
//! The relay serves one agent: the first address that sends to it is the agent, and every
//! datagram from the ingress goes back to that address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Loss and reordering applied to each direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Share of datagrams dropped, 0.0 to 1.0.
    pub loss: f64,
    /// Share of the datagrams that are not dropped which are held back and sent after the
    /// next one, 0.0 to 1.0.
    pub reorder: f64,
}

/// Counters of what the relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub reordered: AtomicU64,
    /// Datagrams sent to the ingress from a port opened by [`Relay::rebind`].
    pub after_rebind: AtomicU64,
    /// Every source address the agent has sent from, in order of first use.
    pub agent_addrs: Mutex<Vec<SocketAddr>>,
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    rebind: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Starts a relay on a loopback port that forwards to `ingress`.
    pub async fn start(ingress: SocketAddr, impairment: Impairment, seed: u64) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind relay front");
        let addr = front.local_addr().expect("relay address");
        let stats = Arc::new(RelayStats::default());
        let (rebind, rebinds) = watch::channel(0);
        let task = tokio::spawn(run(
            front,
            ingress,
            impairment,
            seed,
            stats.clone(),
            rebinds,
        ));
        Relay {
            addr,
            stats,
            rebind,
            task,
        }
    }

    /// Moves the relay's ingress-facing side to a new local port, as a NAT does when its
    /// mapping expires or is flushed.
    pub fn rebind(&self) {
        self.rebind.send_modify(|generation| *generation += 1);
    }
}

async fn run(
    front: UdpSocket,
    ingress: SocketAddr,
    impairment: Impairment,
    seed: u64,
    stats: Arc<RelayStats>,
    mut rebinds: watch::Receiver<u64>,
) {
    let front = Arc::new(front);
    let agent: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let mut generation = 0u64;
    loop {
        let back = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind relay back"),
        );
        let up = tokio::spawn(agent_to_ingress(
            front.clone(),
            back.clone(),
            ingress,
            generation,
            agent.clone(),
            Shaper::new(impairment, seed ^ generation),
            stats.clone(),
        ));
        let down = tokio::spawn(ingress_to_agent(
            back,
            front.clone(),
            agent.clone(),
            Shaper::new(impairment, seed.rotate_left(17) ^ generation),
            stats.clone(),
        ));
        if rebinds.changed().await.is_err() {
            up.abort();
            down.abort();
            return;
        }
        up.abort();
        down.abort();
        generation += 1;
    }
}

async fn agent_to_ingress(
    front: Arc<UdpSocket>,
    back: Arc<UdpSocket>,
    ingress: SocketAddr,
    generation: u64,
    agent: Arc<Mutex<Option<SocketAddr>>>,
    mut shaper: Shaper,
    stats: Arc<RelayStats>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok((len, from)) = front.recv_from(&mut buf).await {
        if let Ok(mut agent) = agent.lock() {
            *agent = Some(from);
        }
        if let Ok(mut seen) = stats.agent_addrs.lock() {
            if !seen.contains(&from) {
                seen.push(from);
            }
        }
        for datagram in shaper.pass(&buf[..len], &stats) {
            if generation > 0 {
                stats.after_rebind.fetch_add(1, Ordering::Relaxed);
            }
            let _ = back.send_to(&datagram, ingress).await;
        }
    }
}

async fn ingress_to_agent(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    agent: Arc<Mutex<Option<SocketAddr>>>,
    mut shaper: Shaper,
    stats: Arc<RelayStats>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok((len, _)) = back.recv_from(&mut buf).await {
        let Some(to) = agent.lock().ok().and_then(|agent| *agent) else {
            continue;
        };
        for datagram in shaper.pass(&buf[..len], &stats) {
            let _ = front.send_to(&datagram, to).await;
        }
    }
}

/// Decides per datagram whether to drop, hold back or send it. A held datagram goes out right
/// after the next one that passes; one held when traffic stops is lost, like a late packet.
struct Shaper {
    impairment: Impairment,
    rng: SplitMix,
    held: Option<Vec<u8>>,
}

impl Shaper {
    fn new(impairment: Impairment, seed: u64) -> Shaper {
        Shaper {
            impairment,
            rng: SplitMix(seed),
            held: None,
        }
    }

    fn pass(&mut self, datagram: &[u8], stats: &RelayStats) -> Vec<Vec<u8>> {
        if self.rng.chance(self.impairment.loss) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        if self.held.is_none() && self.rng.chance(self.impairment.reorder) {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some(datagram.to_vec());
            return Vec::new();
        }
        let mut out = vec![datagram.to_vec()];
        out.extend(self.held.take());
        stats
            .forwarded
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }
}

/// Small deterministic generator so a failing run can be repeated with the same seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.next() as f64 / u64::MAX as f64) < probability
    }
}

/// Waits up to `limit` for `condition`, polling every 20 ms.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}
