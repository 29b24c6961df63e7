//! Every figure of a run, as written to `results.json`, and the output folder around it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::tables::Table;
use super::{Args, PathSpec, Plan, Role};
use crate::clock;

/// All results of one run. Fields missing from an older `results.json` read as empty.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Report {
    pub started_at_utc: String,
    /// `local` when the processes were started here, `url` with --url.
    pub mode: String,
    pub quick: bool,
    pub command: String,
    pub machine: Machine,
    pub paths: Vec<PathInfo>,
    pub notes: Vec<String>,
    pub latency: Vec<LatencyCell>,
    pub drip: Vec<DripResult>,
    pub sse: Vec<SseResult>,
    pub websocket: Vec<WebSocketResult>,
    /// One WebSocket conversation through the tunnel, payloads included.
    pub websocket_transcript: Option<WebSocketTranscript>,
    /// One server-sent event stream through the tunnel, payloads included.
    pub sse_transcript: Option<SseTranscript>,
    pub throughput: Vec<ThroughputResult>,
    pub memory: Vec<MemoryCase>,
    pub targets: Vec<TargetCheck>,
    /// UDP datagrams the kernel dropped for a full receive buffer, per stage.
    pub udp_receive_buffer_drops: Vec<StageCounter>,
    pub duration_s: f64,
    pub plan: PlanInfo,
}

/// Hardware and kernel of the machine the client ran on.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_total_kib: u64,
    pub kernel: String,
    /// The first three fields of /proc/loadavg when the run started: the 1, 5 and 15 minute
    /// load averages, which show whether other work shared the CPUs.
    pub load_average: String,
}

/// The sizes and counts a run used.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct PlanInfo {
    pub payload_sizes: Vec<u64>,
    pub concurrency_levels: Vec<usize>,
    pub throughput_bytes: u64,
    pub memory_bytes: u64,
    pub baseline_memory_bytes: u64,
    pub idle_websockets: usize,
    /// Polls the long-poll baseline agent keeps open at once (`--baseline-pollers`).
    pub baseline_pollers: u16,
}

/// A measured path.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PathInfo {
    pub label: String,
    pub role: String,
    pub url: String,
}

impl From<&PathSpec> for PathInfo {
    fn from(path: &PathSpec) -> Self {
        Self {
            label: path.target.label.clone(),
            role: role_name(path.role).to_string(),
            url: path.target.display_url(),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Direct => "direct",
        Role::Tunnel => "tunnel",
        Role::Baseline => "long-poll baseline",
        Role::Peer => "peer",
        Role::Remote => "remote tunnel",
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Latency of one workload on one path at one concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LatencyCell {
    /// `payload` (one client, every size) or `concurrency`.
    pub stage: String,
    pub path: String,
    pub request: String,
    pub method: String,
    pub bytes: u64,
    pub clients: usize,
    pub stats: Option<Percentiles>,
    pub requests_per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// VmRSS in KiB of the path's processes right after the cell (concurrency cells only).
    pub process_rss_kib: Vec<(String, u64)>,
    /// UDP datagrams dropped for a full receive buffer during the cell, in the whole network
    /// namespace (concurrency cells only).
    pub udp_drops: Option<u64>,
}

/// Arrival times of a slow chunked response, relative to sending the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DripResult {
    pub path: String,
    pub lines: u64,
    pub interval_ms: u64,
    pub head_ms: Option<f64>,
    /// Arrival of line `i`; the upstream writes it `i * interval_ms` after the head.
    pub line_arrival_ms: Vec<f64>,
    pub error: Option<String>,
}

/// One server-sent event as emitted and as received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SseEvent {
    pub id: String,
    pub emitted_unix_us: u64,
    pub received_unix_us: u64,
}

/// Delay of server-sent events from emission at the upstream to arrival at the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SseResult {
    pub path: String,
    pub events: u64,
    pub interval_ms: u64,
    pub delay: Option<Percentiles>,
    pub transcript: Vec<SseEvent>,
    pub error: Option<String>,
}

/// One WebSocket echo: when the message left the client and when its echo came back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WebSocketExchange {
    pub bytes: usize,
    pub sent_unix_us: u64,
    pub received_unix_us: u64,
}

/// WebSocket round trips and message rate on one path.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct WebSocketResult {
    pub path: String,
    pub small_bytes: usize,
    pub large_bytes: usize,
    pub small: Option<Percentiles>,
    pub large: Option<Percentiles>,
    pub messages_per_s: Option<f64>,
    pub transcript: Vec<WebSocketExchange>,
    pub error: Option<String>,
}

/// Direction of a transcript message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Direction {
    ClientToServer,
    ServerToClient,
}

/// One WebSocket message as the client sent or received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TranscriptMessage {
    pub direction: Direction,
    /// Milliseconds after the transcript started, on the client's monotonic clock.
    pub at_ms: f64,
    /// `text`, `binary` or `close`.
    pub kind: String,
    /// The text of a text message, the status code and reason of a close.
    pub payload: String,
}

/// A WebSocket conversation through the tunnel: text messages echoed by the demo upstream,
/// then the close handshake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct WebSocketTranscript {
    pub path: String,
    pub url: String,
    /// Wall-clock start, in microseconds since the UNIX epoch.
    pub started_unix_us: u64,
    /// Arrival of the 101 response, in ms after the start.
    pub upgrade_ms: Option<f64>,
    /// Pause after each echo before the client sent its next message.
    pub pause_ms: u64,
    pub messages: Vec<TranscriptMessage>,
    pub error: Option<String>,
}

/// One server-sent event with its emission and arrival time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TranscriptEvent {
    pub id: String,
    /// The event's data field as received: the upstream's emission time in microseconds
    /// since the UNIX epoch.
    pub data: String,
    /// Emission time read from `data`, or `None` when it is not a number.
    pub emitted_unix_us: Option<u64>,
    pub received_unix_us: u64,
    /// Emission time in ms after the request was sent.
    pub emitted_ms: Option<f64>,
    /// Arrival time in ms after the request was sent.
    pub received_ms: f64,
}

/// A server-sent event stream through the tunnel. All times come from the wall clock of
/// the machine, which the upstream shares in a local run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct SseTranscript {
    pub path: String,
    pub url: String,
    /// Wall-clock time the request was sent, in microseconds since the UNIX epoch.
    pub started_unix_us: u64,
    /// Interval between events that the request asked for.
    pub interval_ms: u64,
    /// Arrival of the response head, in ms after the request was sent.
    pub head_ms: Option<f64>,
    pub events: Vec<TranscriptEvent>,
    pub error: Option<String>,
}

/// One large transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ThroughputResult {
    pub path: String,
    /// `download` or `upload`.
    pub direction: String,
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_s: Option<f64>,
    pub error: Option<String>,
}

/// Memory of one path's processes during one case.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct MemoryCase {
    pub path: String,
    /// `transfer` or `idle-websockets`.
    pub case: String,
    pub description: String,
    pub bytes: u64,
    pub websockets_open: usize,
    pub transfers: Vec<ThroughputResult>,
    pub processes: Vec<ProcessMemory>,
    pub note: Option<String>,
    pub error: Option<String>,
}

/// Resident memory of one process during a case, in KiB, from /proc/PID/status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ProcessMemory {
    pub name: String,
    pub pid: u32,
    /// VmRSS just before the case.
    pub before_kib: u64,
    /// Larger of the highest sampled VmRSS and VmHWM after the case.
    pub peak_kib: u64,
    /// Median VmRSS over the case for transfers; VmRSS once all sockets are open for idle
    /// WebSockets.
    pub steady_kib: u64,
    /// Whether VmHWM was reset before the case; if not, it counts from process start.
    pub peak_reset: bool,
    /// User plus system CPU time the process used during the case.
    pub cpu_seconds: f64,
    /// (seconds since the case started, VmRSS in KiB).
    pub samples: Vec<(f64, u64)>,
}

/// A counter's increase during one stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StageCounter {
    pub stage: String,
    pub count: u64,
}

/// Reads `RcvbufErrors` of the UDP line in /proc/net/snmp: datagrams dropped because a
/// socket's receive buffer was full. The counter covers the whole network namespace, so
/// other programs' UDP traffic counts too.
pub(super) struct UdpDrops {
    last: Option<u64>,
}

impl UdpDrops {
    /// Reads the counter at the start of the first stage.
    pub(super) fn start() -> Self {
        Self {
            last: read_udp_rcvbuf_errors(),
        }
    }

    /// Records the increase since the previous mark as the count of `stage`.
    pub(super) fn mark(&mut self, stage: &str, report: &mut Report) {
        let now = read_udp_rcvbuf_errors();
        if let (Some(before), Some(after)) = (self.last, now) {
            report.udp_receive_buffer_drops.push(StageCounter {
                stage: stage.to_string(),
                count: after.saturating_sub(before),
            });
        }
        self.last = now;
    }
}

/// Reads the namespace-wide UDP `RcvbufErrors` counter from /proc/net/snmp.
pub(super) fn read_udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp_lines = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let names = udp_lines.next()?;
    let values = udp_lines.next()?;
    let column = names
        .split_whitespace()
        .position(|name| name == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// One target from the project's goals and whether this run met it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None` when the run did not measure it.
    pub met: Option<bool>,
}

impl Report {
    /// Starts an empty report for this run.
    pub(super) fn new(args: &Args, plan: &Plan) -> Self {
        Self {
            started_at_utc: clock::utc_stamp(),
            mode: if args.url.is_some() { "url" } else { "local" }.into(),
            quick: plan.quick,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: Machine::read(),
            plan: PlanInfo {
                payload_sizes: plan.payload_sizes.clone(),
                concurrency_levels: plan.concurrency_levels.clone(),
                throughput_bytes: plan.throughput_bytes,
                memory_bytes: plan.memory_bytes,
                baseline_memory_bytes: plan.baseline_memory_bytes,
                idle_websockets: plan.idle_websockets,
                baseline_pollers: args.baseline_pollers,
            },
            ..Self::default()
        }
    }
}

impl Machine {
    /// Reads the CPU model, memory size, kernel release and load average from /proc. Unknown
    /// fields stay empty.
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, value)| value.trim().to_string())
                .unwrap_or_default()
        };
        Self {
            cpu_model: field(&cpuinfo, "model name"),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_total_kib: field(&meminfo, "MemTotal")
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Creates `<base>/<UTC stamp>/logs`, where `base` defaults to `results` at the repository
/// root, and returns `<base>/<UTC stamp>`.
///
/// # Errors
///
/// Returns an error when the folder cannot be created.
pub(super) fn create_output_dir(base: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let base = base.unwrap_or_else(|| {
        // The crate sits at scripts/bench, two levels below the repository root.
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results")
    });
    let stamp = clock::utc_stamp();
    let mut dir = base.join(&stamp);
    let mut attempt = 1;
    while dir.exists() {
        attempt += 1;
        dir = base.join(format!("{stamp}-{attempt}"));
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("failed to create {}", dir.display()))?;
    // Print a clean path: the folder exists now, so it can be resolved.
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// Writes `results.json` and `summary.md`.
///
/// # Errors
///
/// Returns an error when a file cannot be written.
pub(super) fn write_files(dir: &Path, report: &Report, tables: &[Table]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("failed to serialize results")?;
    let json_path = dir.join("results.json");
    std::fs::write(&json_path, json)
        .with_context(|| format!("failed to write {}", json_path.display()))?;

    let summary_path = dir.join("summary.md");
    std::fs::write(&summary_path, summary_markdown(report, tables))
        .with_context(|| format!("failed to write {}", summary_path.display()))?;
    Ok(())
}

fn summary_markdown(report: &Report, tables: &[Table]) -> String {
    let machine = &report.machine;
    let mut text = format!(
        "# Latency comparison, {}\n\n\
         - Command: `{}`\n\
         - Mode: {}{}\n\
         - Machine: {} ({} CPUs, {} MiB RAM), Linux {}, load average at start {}\n\
         - Duration: {:.0} s\n\n",
        report.started_at_utc,
        report.command,
        report.mode,
        if report.quick { ", --quick" } else { "" },
        machine.cpu_model,
        machine.cpus,
        machine.memory_total_kib / 1024,
        machine.kernel,
        machine.load_average,
        report.duration_s,
    );
    text.push_str("Paths:\n\n");
    for path in &report.paths {
        text.push_str(&format!(
            "- **{}** ({}): {}\n",
            path.label, path.role, path.url
        ));
    }
    text.push('\n');
    for table in tables {
        text.push_str(&table.render_markdown());
        text.push('\n');
    }
    if !report.notes.is_empty() {
        text.push_str("## Notes\n\n");
        for note in &report.notes {
            text.push_str(&format!("- {note}\n"));
        }
        text.push('\n');
    }
    text.push_str("Charts: latency_by_size.png, latency_by_concurrency.png, memory.png.\n");
    text
}
