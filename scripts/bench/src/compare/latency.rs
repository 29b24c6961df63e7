//! Request latency at one and many concurrent clients, and the throughput of one large
//! transfer. Each request counts from sending the head to receiving the last body byte, and
//! every body is checked against the pattern it should carry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use http::Method;
use tokio::sync::Barrier;

use super::client::{self, HttpClient, Target};
use super::report::{read_udp_rcvbuf_errors, LatencyCell, Percentiles, Report, ThroughputResult};
use super::{format_bytes, memory, PathSpec, Plan, Progress, Role};

/// Upper bound of a recorded latency: 10 minutes in nanoseconds.
const MAX_RECORDED_NS: u64 = 600_000_000_000;
/// A worker stops after this many failed requests in a row.
const MAX_CONSECUTIVE_ERRORS: u32 = 3;

/// One kind of request: a GET that downloads `bytes` or a POST that uploads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub upload: bool,
    pub bytes: u64,
}

impl Workload {
    /// GET /bytes?n=`bytes`.
    pub fn get(bytes: u64) -> Self {
        Self {
            upload: false,
            bytes,
        }
    }

    /// POST /upload with a body of `bytes`.
    pub fn post(bytes: u64) -> Self {
        Self {
            upload: true,
            bytes,
        }
    }

    /// HTTP method name of the workload.
    pub fn method(&self) -> &'static str {
        if self.upload {
            "POST"
        } else {
            "GET"
        }
    }

    /// Label such as `GET 64 KiB`.
    pub fn label(&self) -> String {
        format!("{} {}", self.method(), format_bytes(self.bytes))
    }
}

/// Count and time limits of one measurement cell.
#[derive(Debug, Clone, Copy)]
pub(super) struct CellLimits {
    pub requests: u64,
    pub deadline: Duration,
}

/// Sends one request of `workload` and checks its response; `timeout` bounds the whole
/// exchange, body included.
pub(super) async fn one_request(
    client: &HttpClient,
    target: &Target,
    workload: Workload,
    timeout: Duration,
) -> anyhow::Result<()> {
    match tokio::time::timeout(timeout, exchange(client, target, workload, timeout)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "{} did not complete within {} s",
            workload.label(),
            timeout.as_secs()
        ),
    }
}

async fn exchange(
    client: &HttpClient,
    target: &Target,
    workload: Workload,
    timeout: Duration,
) -> anyhow::Result<()> {
    if workload.upload {
        let body = client::pattern_body(workload.bytes);
        let response = client
            .send(
                target,
                Method::POST,
                "/upload",
                body,
                Some(workload.bytes),
                timeout,
            )
            .await?;
        let response = client::expect_ok(response).await?;
        let text = client::read_text(response.into_body(), 4096).await?;
        let expected = format!("bytes={} pattern=ok", workload.bytes);
        if text.trim() != expected {
            bail!("upload returned {:?}, expected {expected:?}", text.trim());
        }
    } else {
        let path = format!("/bytes?n={}", workload.bytes);
        let response = client.get(target, &path, timeout).await?;
        let response = client::expect_ok(response).await?;
        client::drain_pattern(response.into_body(), workload.bytes).await?;
    }
    Ok(())
}

/// Measurements of one worker of a cell.
struct WorkerResult {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    started: Instant,
    finished: Instant,
}

/// Runs `workload` from `clients` concurrent workers until `limits` are reached. Each worker
/// first sends one request that is not recorded, so connections are open before timing
/// starts; then all start together.
pub(super) async fn run_cell(
    client: &HttpClient,
    target: &Target,
    workload: Workload,
    clients: usize,
    limits: CellLimits,
) -> LatencyCell {
    // With one client, a tenth of the requests (at most 50) warm up the path; with many
    // clients, one request each opens their connections.
    let warmup = if clients == 1 {
        (limits.requests / 10).clamp(1, 50)
    } else {
        1
    };
    let setup = WorkerSetup {
        client: client.clone(),
        target: target.clone(),
        workload,
        deadline: limits.deadline,
        warmup,
        remaining: Arc::new(AtomicU64::new(limits.requests)),
        barrier: Arc::new(Barrier::new(clients)),
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..clients {
        workers.spawn(worker(setup.clone()));
    }
    let mut results = Vec::with_capacity(clients);
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(err) => tracing::warn!(%err, "latency worker failed"),
        }
    }
    summarize_cell(target, workload, clients, results)
}

/// Settings and shared counters of the workers of one cell.
#[derive(Clone)]
struct WorkerSetup {
    client: HttpClient,
    target: Target,
    workload: Workload,
    deadline: Duration,
    /// Unrecorded requests each worker sends before timing starts.
    warmup: u64,
    /// Requests left in the cell's budget.
    remaining: Arc<AtomicU64>,
    barrier: Arc<Barrier>,
}

async fn worker(setup: WorkerSetup) -> WorkerResult {
    let WorkerSetup {
        client,
        target,
        workload,
        deadline,
        warmup,
        remaining,
        barrier,
    } = setup;
    let timeout = deadline.max(Duration::from_secs(30));
    let mut result = WorkerResult {
        histogram: new_histogram(),
        errors: 0,
        first_error: None,
        started: Instant::now(),
        finished: Instant::now(),
    };
    for _ in 0..warmup {
        if let Err(err) = one_request(&client, &target, workload, timeout).await {
            result.errors += 1;
            result.first_error.get_or_insert_with(|| format!("{err:#}"));
        }
    }
    barrier.wait().await;

    result.started = Instant::now();
    let stop_at = result.started + deadline;
    let mut consecutive_errors = 0;
    while Instant::now() < stop_at && take_one(&remaining) {
        let sent = Instant::now();
        match one_request(&client, &target, workload, timeout).await {
            Ok(()) => {
                consecutive_errors = 0;
                record(&mut result.histogram, sent.elapsed());
            }
            Err(err) => {
                consecutive_errors += 1;
                result.errors += 1;
                result.first_error.get_or_insert_with(|| format!("{err:#}"));
                if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    break;
                }
            }
        }
    }
    result.finished = Instant::now();
    result
}

/// Takes one request from the shared budget; false when it is spent.
fn take_one(remaining: &AtomicU64) -> bool {
    remaining
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

fn summarize_cell(
    target: &Target,
    workload: Workload,
    clients: usize,
    results: Vec<WorkerResult>,
) -> LatencyCell {
    let mut histogram = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    let mut started: Option<Instant> = None;
    let mut finished: Option<Instant> = None;
    for result in results {
        if let Err(err) = histogram.add(&result.histogram) {
            tracing::warn!(%err, "failed to merge histograms");
        }
        errors += result.errors;
        first_error = first_error.or(result.first_error);
        started = Some(started.map_or(result.started, |at| at.min(result.started)));
        finished = Some(finished.map_or(result.finished, |at| at.max(result.finished)));
    }
    let wall = match (started, finished) {
        (Some(started), Some(finished)) => finished.duration_since(started).as_secs_f64(),
        _ => 0.0,
    };
    let requests_per_s = if wall > 0.0 {
        histogram.len() as f64 / wall
    } else {
        0.0
    };
    LatencyCell {
        stage: "payload".into(),
        path: target.label.clone(),
        request: workload.label(),
        method: workload.method().to_string(),
        bytes: workload.bytes,
        clients,
        stats: percentiles(&histogram),
        requests_per_s,
        errors,
        first_error,
        process_rss_kib: Vec::new(),
        udp_drops: None,
    }
}

/// Builds an empty histogram of nanoseconds with three significant digits.
pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("constant histogram bounds are valid")
}

/// Records a duration in nanoseconds, clamped to the histogram's range.
pub(super) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(MAX_RECORDED_NS);
    histogram.saturating_record(nanos.clamp(1, MAX_RECORDED_NS));
}

/// Returns p50, p90, p99 and max in milliseconds, or `None` for an empty histogram.
pub(super) fn percentiles(histogram: &Histogram<u64>) -> Option<Percentiles> {
    if histogram.is_empty() {
        return None;
    }
    let ms = |nanos: u64| nanos as f64 / 1e6;
    Some(Percentiles {
        count: histogram.len(),
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}

/// Measures GET and POST of every payload size with one client on every path.
pub(super) async fn payload_stage(
    client: &HttpClient,
    paths: &[PathSpec],
    plan: &Plan,
    progress: Progress,
    report: &mut Report,
) {
    progress.line("request latency by payload size, 1 client");
    // Paths take turns on each workload, so a slow phase of the machine hits all of them.
    for upload in [false, true] {
        for &bytes in &plan.payload_sizes {
            let workload = Workload { upload, bytes };
            let limits = CellLimits {
                requests: plan.payload_requests(bytes),
                deadline: plan.cell_deadline,
            };
            for path in paths {
                let cell = run_cell(client, &path.target, workload, 1, limits).await;
                progress.line(&cell_line(&cell));
                report.latency.push(cell);
            }
        }
    }
}

/// Measures GET 0 B with one client that pauses between requests, so every request meets
/// processes that have gone idle. The back-to-back cells keep the processes busy and so
/// measure only the hot path.
pub(super) async fn sporadic_stage(
    client: &HttpClient,
    paths: &[PathSpec],
    plan: &Plan,
    progress: Progress,
    report: &mut Report,
) {
    let gap = plan.sporadic_gap;
    progress.line(&format!(
        "request latency of GET 0 B sent {} ms apart",
        gap.as_millis()
    ));
    let workload = Workload::get(0);
    let timeout = Duration::from_secs(30);
    for path in paths {
        let mut histogram = new_histogram();
        let mut errors = 0;
        let mut first_error = None;
        // One request first, so the connection is open and only idleness is measured.
        if let Err(err) = one_request(client, &path.target, workload, timeout).await {
            errors += 1;
            first_error = Some(format!("{err:#}"));
        }
        for _ in 0..plan.sporadic_requests {
            tokio::time::sleep(gap).await;
            let sent = Instant::now();
            match one_request(client, &path.target, workload, timeout).await {
                Ok(()) => record(&mut histogram, sent.elapsed()),
                Err(err) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{err:#}"));
                }
            }
        }
        let cell = LatencyCell {
            stage: "sporadic".into(),
            path: path.target.label.clone(),
            request: format!("GET 0 B, {} ms apart", gap.as_millis()),
            method: "GET".into(),
            bytes: 0,
            clients: 1,
            stats: percentiles(&histogram),
            requests_per_s: 0.0,
            errors,
            first_error,
            process_rss_kib: Vec::new(),
            udp_drops: None,
        };
        progress.line(&cell_line(&cell));
        report.latency.push(cell);
    }
}

/// Measures the concurrency workloads at every concurrency level on every path. Each cell
/// gets a fresh client so connections from an earlier cell do not carry over.
pub(super) async fn concurrency_stage(
    paths: &[PathSpec],
    plan: &Plan,
    progress: Progress,
    report: &mut Report,
) {
    progress.line("request latency by concurrency");
    for &workload in &plan.concurrency_workloads {
        for &clients in &plan.concurrency_levels {
            let limits = CellLimits {
                requests: plan.concurrency_requests(clients, workload.bytes),
                deadline: plan.concurrency_deadline,
            };
            for path in paths {
                let client = HttpClient::new();
                let drops_before = read_udp_rcvbuf_errors();
                let mut cell = run_cell(&client, &path.target, workload, clients, limits).await;
                cell.stage = "concurrency".into();
                cell.udp_drops = read_udp_rcvbuf_errors()
                    .zip(drops_before)
                    .map(|(after, before)| after.saturating_sub(before));
                cell.process_rss_kib = path
                    .processes
                    .iter()
                    .map(|process| (process.name.clone(), memory::rss_kib(process.pid)))
                    .collect();
                progress.line(&cell_line(&cell));
                report.latency.push(cell);
            }
        }
    }
}

fn cell_line(cell: &LatencyCell) -> String {
    let stats = match &cell.stats {
        Some(stats) => format!(
            "p50 {:.3} ms, p99 {:.3} ms, {} requests",
            stats.p50_ms, stats.p99_ms, stats.count
        ),
        None => "no successful request".to_string(),
    };
    let errors = match &cell.first_error {
        Some(error) => format!(", {} errors (first: {error})", cell.errors),
        None => String::new(),
    };
    let memory: Vec<String> = cell
        .process_rss_kib
        .iter()
        .map(|(name, kib)| format!("{name} {:.1} MiB", *kib as f64 / 1024.0))
        .collect();
    let memory = if memory.is_empty() {
        String::new()
    } else {
        format!("; RSS after: {}", memory.join(", "))
    };
    let drops = match cell.udp_drops {
        Some(count) if count > 0 => format!("; {count} UDP datagrams dropped"),
        _ => String::new(),
    };
    format!(
        "  {}: {} x{}: {stats}{errors}{memory}{drops}",
        cell.path, cell.request, cell.clients
    )
}

/// Times one large download and one large upload on every local path.
pub(super) async fn throughput_stage(
    client: &HttpClient,
    paths: &[PathSpec],
    plan: &Plan,
    progress: Progress,
    report: &mut Report,
) {
    progress.line(&format!(
        "throughput of one {} transfer",
        format_bytes(plan.throughput_bytes)
    ));
    for path in paths.iter().filter(|path| path.role != Role::Remote) {
        for workload in [
            Workload::get(plan.throughput_bytes),
            Workload::post(plan.throughput_bytes),
        ] {
            let result = timed_transfer(client, &path.target, workload).await;
            progress.line(&format!(
                "  {}: {}: {}",
                result.path,
                workload.label(),
                result.error.as_deref().map_or_else(
                    || format!("{:.0} MiB/s", result.mib_per_s.unwrap_or(0.0)),
                    str::to_string
                )
            ));
            report.throughput.push(result);
        }
    }
}

/// Runs one transfer and returns its rate in MiB/s.
pub(super) async fn timed_transfer(
    client: &HttpClient,
    target: &Target,
    workload: Workload,
) -> ThroughputResult {
    // Allows 10 MiB/s at worst before giving up.
    let timeout = Duration::from_secs(30 + workload.bytes / (10 << 20));
    let started = Instant::now();
    let outcome = one_request(client, target, workload, timeout).await;
    let seconds = started.elapsed().as_secs_f64();
    let (mib_per_s, error) = match outcome {
        Ok(()) => (
            Some(workload.bytes as f64 / (1024.0 * 1024.0) / seconds),
            None,
        ),
        Err(err) => (None, Some(format!("{err:#}"))),
    };
    ThroughputResult {
        path: target.label.clone(),
        direction: if workload.upload {
            "upload"
        } else {
            "download"
        }
        .to_string(),
        bytes: workload.bytes,
        seconds,
        mib_per_s,
        error,
    }
}
