//! Resident memory of the proxy processes while large bodies pass through them and while
//! many idle WebSockets are open, sampled from /proc/PID/status.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::client::HttpClient;
use super::latency::{timed_transfer, Workload};
use super::report::{MemoryCase, ProcessMemory, Report};
use super::{format_bytes, websocket, PathSpec, Plan, Progress, Role};

/// Maximum time a sampler runs, whatever happens to the case it watches.
const MAX_SAMPLING: Duration = Duration::from_secs(600);
/// WebSocket handshakes in flight at once while the idle sockets are opened.
const OPEN_CONCURRENCY: usize = 16;
/// Wait after the last idle socket opens, so buffers allocated during the handshakes can
/// be returned before memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// File descriptors the client keeps for everything other than the idle sockets.
const SPARE_DESCRIPTORS: u64 = 200;

/// A process whose memory is sampled.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl Watched {
    /// Names the process with `pid`.
    pub fn new(name: &str, pid: u32) -> Self {
        Self {
            name: name.to_string(),
            pid,
        }
    }
}

/// Runs the memory cases on the tunnel and the baseline.
pub(super) async fn stage(
    client: &HttpClient,
    paths: &[PathSpec],
    plan: &Plan,
    progress: Progress,
    report: &mut Report,
) {
    for path in paths {
        let bytes = match path.role {
            Role::Tunnel => plan.memory_bytes,
            Role::Baseline => plan.baseline_memory_bytes,
            _ => continue,
        };
        progress.line(&format!(
            "memory: {} while {} is downloaded, then uploaded",
            path.target.label,
            format_bytes(bytes)
        ));
        let mut case = transfer_case(client, path, bytes, plan).await;
        if path.role == Role::Baseline && bytes < plan.memory_bytes {
            case.note = Some(format!(
                "the baseline memory case moves {} (the tunnel's moves {}) because the baseline keeps each body whole in both of its processes",
                format_bytes(bytes),
                format_bytes(plan.memory_bytes)
            ));
        }
        progress.line(&memory_line(&case));
        report.notes.extend(case.note.clone());
        report.memory.push(case);

        progress.line(&format!(
            "memory: {} with {} idle WebSockets",
            path.target.label, plan.idle_websockets
        ));
        let case = idle_websocket_case(path, plan).await;
        progress.line(&memory_line(&case));
        report.notes.extend(case.note.clone());
        report.memory.push(case);
    }
}

fn memory_line(case: &MemoryCase) -> String {
    if let Some(error) = &case.error {
        return format!("  {}: {error}", case.path);
    }
    let processes: Vec<String> = case
        .processes
        .iter()
        .map(|process| {
            format!(
                "{} {:.1} -> peak {:.1} MiB",
                process.name,
                kib_to_mib(process.before_kib),
                kib_to_mib(process.peak_kib)
            )
        })
        .collect();
    format!("  {}: {}", case.path, processes.join(", "))
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples memory while one download and one upload of `bytes` pass through `path`.
async fn transfer_case(
    client: &HttpClient,
    path: &PathSpec,
    bytes: u64,
    plan: &Plan,
) -> MemoryCase {
    let mut case = MemoryCase {
        path: path.target.label.clone(),
        case: "transfer".into(),
        description: format!("download then upload {}", format_bytes(bytes)),
        bytes,
        ..MemoryCase::default()
    };
    let before = read_before(&path.processes);
    let sampler = Sampler::start(&path.processes, plan.memory_sample_interval);
    for workload in [Workload::get(bytes), Workload::post(bytes)] {
        let transfer = timed_transfer(client, &path.target, workload).await;
        if let Some(error) = &transfer.error {
            case.error.get_or_insert_with(|| error.clone());
        }
        case.transfers.push(transfer);
    }
    let samples = sampler.stop().await;
    case.processes = summarize(&path.processes, before, samples, Steady::Median);
    case
}

/// Samples memory while `plan.idle_websockets` WebSockets are opened through `path` and
/// held without traffic.
async fn idle_websocket_case(path: &PathSpec, plan: &Plan) -> MemoryCase {
    let mut case = MemoryCase {
        path: path.target.label.clone(),
        case: "idle-websockets".into(),
        ..MemoryCase::default()
    };
    let requested = match descriptor_budget() {
        Ok(budget) if budget < plan.idle_websockets as u64 => {
            case.note = Some(format!(
                "the open-file limit allows only {budget} idle sockets; raise it with ulimit -n"
            ));
            budget as usize
        }
        Ok(_) => plan.idle_websockets,
        Err(err) => {
            tracing::debug!(error = format!("{err:#}"), "open-file limit unknown");
            plan.idle_websockets
        }
    };
    case.description = format!("{requested} idle WebSockets");

    let before = read_before(&path.processes);
    let sampler = Sampler::start(&path.processes, plan.memory_sample_interval);
    let (sockets, first_error) = open_idle(path, requested).await;
    case.websockets_open = sockets.len();
    if let Some(error) = first_error {
        case.error = Some(format!(
            "{} of {requested} WebSockets opened; first failure: {error}",
            sockets.len()
        ));
    }
    tokio::time::sleep(SETTLE).await;
    let steady: Vec<u64> = path
        .processes
        .iter()
        .map(|process| read_status(process.pid).map_or(0, |status| status.0))
        .collect();
    let samples = sampler.stop().await;
    drop(sockets);
    case.processes = summarize(&path.processes, before, samples, Steady::Fixed(steady));
    case
}

/// Opens up to `count` WebSockets, stopping at the first failure.
async fn open_idle(path: &PathSpec, count: usize) -> (Vec<websocket::Socket>, Option<String>) {
    let mut sockets = Vec::with_capacity(count);
    let mut first_error = None;
    let mut opening = futures_util::stream::iter(0..count)
        .map(|_| websocket::connect(&path.target))
        .buffer_unordered(OPEN_CONCURRENCY);
    while let Some(result) = opening.next().await {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(err) => {
                first_error = Some(format!("{err:#}"));
                break;
            }
        }
    }
    (sockets, first_error)
}

/// Returns how many more sockets the open-file limit leaves room for.
fn descriptor_budget() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("failed to read limits")?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open-file limit listed")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .context("malformed open-file limit")?;
    let soft: u64 = match soft {
        "unlimited" => u64::MAX,
        number => number.parse().context("malformed open-file limit")?,
    };
    Ok(soft.saturating_sub(SPARE_DESCRIPTORS))
}

/// State of one process at the start of a case.
struct Before {
    rss_kib: u64,
    /// Whether VmHWM could be reset, so that the peak covers only the case.
    peak_reset: bool,
    cpu_ticks: u64,
}

/// Reads VmRSS and CPU time of each process and resets its VmHWM.
fn read_before(processes: &[Watched]) -> Vec<Before> {
    processes
        .iter()
        .map(|process| Before {
            rss_kib: read_status(process.pid).map_or(0, |status| status.0),
            peak_reset: reset_peak(process.pid),
            cpu_ticks: read_cpu_ticks(process.pid).unwrap_or(0),
        })
        .collect()
}

/// Clock ticks per second in /proc/PID/stat. The kernel reports these in USER_HZ, which is
/// 100 on every mainstream Linux architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads user plus system CPU time, in clock ticks, from /proc/PID/stat.
fn read_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces, so count the
    // fields from the last ')': state is field 3, utime field 14 and stime field 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |index: usize| -> anyhow::Result<u64> {
        let field = fields
            .get(index)
            .with_context(|| format!("malformed {path}"))?;
        field.parse().with_context(|| format!("malformed {path}"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Returns VmRSS of `pid` in KiB, or 0 when it cannot be read.
pub(super) fn rss_kib(pid: u32) -> u64 {
    read_status(pid).map_or(0, |status| status.0)
}

/// Reads (VmRSS, VmHWM) in KiB from /proc/PID/status.
fn read_status(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Resets VmHWM to the current VmRSS by writing 5 to /proc/PID/clear_refs (Linux 4.0 and
/// later); returns whether that worked.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Source of the steady figure of a case.
enum Steady {
    /// Median of the samples.
    Median,
    /// One reading per process, taken by the case.
    Fixed(Vec<u64>),
}

fn summarize(
    processes: &[Watched],
    before: Vec<Before>,
    samples: Vec<Vec<(f64, u64)>>,
    steady: Steady,
) -> Vec<ProcessMemory> {
    let rows = processes.iter().zip(before).zip(samples).enumerate();
    rows.map(|(index, ((process, before), samples))| {
        let hwm = read_status(process.pid).map_or(0, |status| status.1);
        let sampled_max = samples.iter().map(|sample| sample.1).max().unwrap_or(0);
        let steady_kib = match &steady {
            Steady::Median => median(samples.iter().map(|sample| sample.1).collect()),
            Steady::Fixed(values) => values.get(index).copied().unwrap_or(0),
        };
        let cpu_ticks = read_cpu_ticks(process.pid)
            .unwrap_or(0)
            .saturating_sub(before.cpu_ticks);
        ProcessMemory {
            name: process.name.clone(),
            pid: process.pid,
            before_kib: before.rss_kib,
            peak_kib: if before.peak_reset {
                hwm.max(sampled_max)
            } else {
                sampled_max
            },
            steady_kib,
            peak_reset: before.peak_reset,
            cpu_seconds: cpu_ticks as f64 / TICKS_PER_SECOND,
            samples,
        }
    })
    .collect()
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Background task that reads VmRSS of each watched process at a fixed interval.
struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Vec<(f64, u64)>>>,
}

impl Sampler {
    fn start(processes: &[Watched], interval: Duration) -> Self {
        let pids: Vec<u32> = processes.iter().map(|process| process.pid).collect();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(sample_until(pids, interval, stopped));
        Self { stop, task }
    }

    /// Stops sampling and returns one series per process.
    async fn stop(self) -> Vec<Vec<(f64, u64)>> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

async fn sample_until(
    pids: Vec<u32>,
    interval: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> Vec<Vec<(f64, u64)>> {
    let started = Instant::now();
    let mut series = vec![Vec::new(); pids.len()];
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < MAX_SAMPLING {
        tokio::select! {
            _ = ticker.tick() => sample_once(&pids, started, &mut series),
            _ = &mut stopped => break,
        }
    }
    sample_once(&pids, started, &mut series);
    series
}

fn sample_once(pids: &[u32], started: Instant, series: &mut [Vec<(f64, u64)>]) {
    let at = started.elapsed().as_secs_f64();
    for (pid, samples) in pids.iter().zip(series.iter_mut()) {
        if let Ok((rss, _)) = read_status(*pid) {
            samples.push((at, rss));
        }
    }
}
