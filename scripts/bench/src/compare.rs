//! `compare-latency`: starts the demo upstream, ingress + tunnel-agent and the long-poll
//! baseline on loopback, measures every path with the same client, and writes the results.
//! With `--url` it measures a deployed tunnel instead and starts nothing.

mod charts;
mod client;
mod latency;
mod memory;
mod peers;
mod procs;
mod report;
mod setup;
mod streaming;
pub mod streaming_report;
mod tables;
mod targets;
mod transcript;
mod websocket;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::serve;
use client::Target;
use procs::Processes;
use report::Report;

const LONG_ABOUT: &str = "\
Compares request latency, streaming, WebSocket, throughput and memory of three paths to the \
same demo upstream: direct, through ingress + tunnel-agent, and through a long-poll relay \
(the design the tunnel replaces). Everything runs on 127.0.0.1 with ports chosen at start.

Run it through scripts/compare-latency, which builds the release binaries first. Results go \
to the terminal and to results/<UTC timestamp>/ at the repository root: results.json with \
every figure, summary.md with the tables, PNG charts and the logs of the started processes.

--quick takes under a minute on 2 cores; the full run takes a few minutes.

To check a deployment, run demo-upstream behind your tunnel-agent and pass the tunnel's \
public URL with --url (and the upstream's own URL with --direct-url where you can reach it). \
Nothing is started locally then, and only the latency, streaming and WebSocket measurements \
run.";

/// Command-line arguments of `compare-latency`.
#[derive(Debug, Parser)]
#[command(name = "compare-latency", version, about, long_about = LONG_ABOUT)]
pub struct Args {
    /// Run fewer requests and smaller transfers (256 MiB instead of 1 GiB through the tunnel).
    #[arg(long)]
    pub quick: bool,

    /// Also measure rathole, bore and nginx when they are on PATH; each missing one is skipped
    /// with a note.
    #[arg(long, conflicts_with = "url")]
    pub with_peers: bool,

    /// Measure the tunnel at this public http:// URL instead of starting anything locally.
    /// The demo-upstream binary must serve behind it.
    #[arg(long)]
    pub url: Option<String>,

    /// Direct http:// URL of the same demo-upstream, measured beside --url.
    #[arg(long, requires = "url")]
    pub direct_url: Option<String>,

    /// Polls the long-poll baseline agent keeps open at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub baseline_pollers: u16,

    /// Skip the memory measurements (large transfers and idle WebSockets).
    #[arg(long)]
    pub skip_memory: bool,

    /// Folder that receives one subfolder per run, named by its UTC start time; defaults to
    /// `results` at the repository root.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,

    /// Folder containing ingress, tunnel-agent, demo-upstream, longpoll-front and
    /// longpoll-agent; defaults to the folder of this binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// Request counts, sizes and deadlines of one run. Every loop stops at its count or its
/// deadline, whichever comes first.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub payload_sizes: Vec<u64>,
    pub cell_deadline: Duration,
    /// Pause between the requests of the sporadic cell.
    pub sporadic_gap: Duration,
    pub sporadic_requests: u64,
    pub concurrency_levels: Vec<usize>,
    pub concurrency_workloads: Vec<latency::Workload>,
    pub concurrency_deadline: Duration,
    pub drip_lines: u64,
    pub drip_interval: Duration,
    pub sse_events: u64,
    pub sse_interval: Duration,
    pub ws_small_bytes: usize,
    pub ws_large_bytes: usize,
    pub ws_small_count: u64,
    pub ws_large_count: u64,
    pub ws_burst_count: u64,
    pub ws_deadline: Duration,
    pub throughput_bytes: u64,
    pub memory_bytes: u64,
    /// Transfer size for the baseline's memory case, which buffers every body whole.
    pub baseline_memory_bytes: u64,
    pub idle_websockets: usize,
    pub memory_sample_interval: Duration,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

impl Plan {
    fn new(quick: bool) -> Self {
        use latency::Workload;
        let concurrency_workloads = if quick {
            vec![Workload::get(0), Workload::get(64 * KIB)]
        } else {
            vec![
                Workload::get(0),
                Workload::get(64 * KIB),
                Workload::post(64 * KIB),
                Workload::get(MIB),
            ]
        };
        Self {
            quick,
            payload_sizes: vec![0, KIB, 64 * KIB, MIB, 10 * MIB],
            cell_deadline: Duration::from_secs(if quick { 2 } else { 10 }),
            sporadic_gap: Duration::from_millis(100),
            sporadic_requests: if quick { 20 } else { 100 },
            concurrency_levels: vec![1, 16, 128],
            concurrency_workloads,
            concurrency_deadline: Duration::from_secs(if quick { 2 } else { 8 }),
            drip_lines: if quick { 5 } else { 10 },
            drip_interval: Duration::from_millis(if quick { 100 } else { 200 }),
            sse_events: if quick { 5 } else { 20 },
            sse_interval: Duration::from_millis(100),
            ws_small_bytes: 32,
            ws_large_bytes: 64 * 1024,
            ws_small_count: if quick { 300 } else { 3000 },
            ws_large_count: if quick { 50 } else { 300 },
            ws_burst_count: if quick { 2000 } else { 20_000 },
            ws_deadline: Duration::from_secs(if quick { 5 } else { 20 }),
            throughput_bytes: if quick { 64 * MIB } else { 256 * MIB },
            memory_bytes: if quick { 256 * MIB } else { 1024 * MIB },
            baseline_memory_bytes: if quick { 64 * MIB } else { 256 * MIB },
            idle_websockets: 1000,
            memory_sample_interval: Duration::from_millis(25),
        }
    }

    /// Requests per single-client cell: fewer for large bodies so each cell takes about as long.
    fn payload_requests(&self, bytes: u64) -> u64 {
        let (small, medium, large) = if self.quick {
            (500, 50, 10)
        } else {
            (2000, 300, 40)
        };
        match bytes {
            b if b <= 64 * KIB => small,
            b if b <= MIB => medium,
            _ => large,
        }
    }

    /// Requests per concurrency cell, shared by all clients.
    fn concurrency_requests(&self, clients: usize, bytes: u64) -> u64 {
        let clients = clients as u64;
        let total = if self.quick {
            (clients * 4).max(200)
        } else {
            (clients * 40).max(3000)
        };
        if bytes >= MIB {
            total / 4
        } else {
            total
        }
    }
}

/// One measured route to the demo upstream.
#[derive(Debug, Clone)]
pub struct PathSpec {
    pub target: Target,
    pub role: Role,
    /// Processes of this path whose memory is sampled.
    pub processes: Vec<memory::Watched>,
}

/// Kind of route a path takes to the demo upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Direct,
    Tunnel,
    Baseline,
    Peer,
    Remote,
}

/// Prints timestamped progress lines on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    start: Instant,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Prints one progress line.
    pub fn line(&self, message: &str) {
        eprintln!("[{:6.1}s] {message}", self.start.elapsed().as_secs_f64());
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Runs the comparison and writes the results; every started process is stopped before it
/// returns, also after an error or Ctrl-C.
///
/// # Errors
///
/// Returns an error when a process cannot be started or becomes ready too late, when a
/// measurement set-up fails, when the results cannot be written, or on Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let progress = Progress::new();
    let plan = Plan::new(args.quick);
    let out_dir = report::create_output_dir(args.out_dir.clone())?;
    progress.line(&format!("writing results to {}", out_dir.display()));
    let processes = Arc::new(Processes::new(out_dir.join("logs")));

    let outcome = tokio::select! {
        outcome = measure_all(&args, &plan, &processes, progress) => outcome,
        () = serve::shutdown_signal() => Err(anyhow::anyhow!("interrupted; stopping started processes")),
    };
    let stop_notes = processes.stop_all().await;
    let mut report = outcome?;
    report.notes.extend(stop_notes);
    report.duration_s = progress.elapsed().as_secs_f64();

    let tables = tables::build(&report);
    println!();
    for table in &tables {
        println!("{}", table.render_text());
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    report::write_files(&out_dir, &report, &tables)?;
    match charts::draw_all(&out_dir, &report) {
        Ok(files) => {
            for file in files {
                progress.line(&format!("wrote {}", file.display()));
            }
        }
        Err(err) => eprintln!("compare-latency: charts not drawn: {err:#}"),
    }
    progress.line(&format!("done; results in {}", out_dir.display()));
    Ok(())
}

async fn measure_all(
    args: &Args,
    plan: &Plan,
    processes: &Processes,
    progress: Progress,
) -> anyhow::Result<Report> {
    let mut report = Report::new(args, plan);
    // The local set-up owns the ingress state folder, so it lives until the end of the run.
    let (paths, _local_setup) = match &args.url {
        Some(url) => (remote_paths(url, args.direct_url.as_deref())?, None),
        None => {
            let bins = setup::Binaries::locate(args.bin_dir.as_deref())?;
            let local = setup::start(&bins, processes, args, &mut report.notes, progress).await?;
            (local.paths.clone(), Some(local))
        }
    };
    report.paths = paths.iter().map(report::PathInfo::from).collect();
    if args.url.is_some() {
        report.notes.push(
            "SSE delays compare the upstream's clock with this machine's; unless both run on one machine, they include the offset between the two clocks".into(),
        );
    }

    let client = client::HttpClient::new();
    let mut udp = report::UdpDrops::start();
    latency::payload_stage(&client, &paths, plan, progress, &mut report).await;
    latency::sporadic_stage(&client, &paths, plan, progress, &mut report).await;
    udp.mark("latency, 1 client", &mut report);
    latency::concurrency_stage(&paths, plan, progress, &mut report).await;
    udp.mark("latency by concurrency", &mut report);
    streaming::stage(&client, &paths, plan, progress, &mut report).await;
    udp.mark("streaming", &mut report);
    websocket::stage(&paths, plan, progress, &mut report).await;
    udp.mark("WebSocket", &mut report);
    transcript::stage(&client, &paths, progress, &mut report).await;
    udp.mark("transcripts", &mut report);
    if args.url.is_none() {
        latency::throughput_stage(&client, &paths, plan, progress, &mut report).await;
        udp.mark("throughput", &mut report);
        if args.skip_memory {
            report
                .notes
                .push("memory measurements skipped (--skip-memory)".into());
        } else {
            memory::stage(&client, &paths, plan, progress, &mut report).await;
            udp.mark("memory", &mut report);
        }
    }
    report.targets = targets::evaluate(&report);
    Ok(report)
}

fn remote_paths(url: &str, direct_url: Option<&str>) -> anyhow::Result<Vec<PathSpec>> {
    let mut paths = Vec::new();
    if let Some(direct_url) = direct_url {
        let target = Target::from_url(direct_url).context("invalid --direct-url")?;
        paths.push(PathSpec {
            target,
            role: Role::Direct,
            processes: Vec::new(),
        });
    }
    let target = Target::from_url(url).context("invalid --url")?;
    paths.push(PathSpec {
        target,
        role: Role::Remote,
        processes: Vec::new(),
    });
    Ok(paths)
}

/// Formats a byte count as B, KiB, MiB or GiB when it is a whole multiple.
pub fn format_bytes(bytes: u64) -> String {
    const GIB: u64 = 1024 * MIB;
    match bytes {
        0 => "0 B".to_string(),
        b if b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}
