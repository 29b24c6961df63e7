//! The parts of the streaming report that are derived from the run's figures: the
//! before-and-after latency views, the prose around the streaming, WebSocket and memory
//! tables, and the list of what the run does not show.

use std::fmt::Write as _;

use super::super::format_bytes;
use super::super::report::{LatencyCell, MemoryCase, Percentiles, ProcessMemory, Report};
use super::super::tables::{self, ms, short_error, Table};
use super::walkthrough::SourceLinks;
use super::{markdown_table, mib};

/// Round trips between agent and public host used in the model estimate, in ms.
const MODEL_RTTS_MS: [f64; 3] = [1.0, 20.0, 80.0];
/// Concurrency level of the model's queueing estimate.
const MODEL_CLIENTS: f64 = 128.0;
/// Cells with fewer recorded requests have a p99 that is close to their maximum.
const FEW_SAMPLES: u64 = 100;

/// Labels of the three local paths, where the run has them.
struct Paths<'a> {
    direct: Option<&'a str>,
    tunnel: Option<&'a str>,
    baseline: Option<&'a str>,
}

impl<'a> Paths<'a> {
    fn of(report: &'a Report) -> Self {
        let label = |role: &str| {
            report
                .paths
                .iter()
                .find(|path| path.role == role)
                .map(|path| path.label.as_str())
        };
        Self {
            direct: label("direct"),
            tunnel: label("tunnel"),
            baseline: label("long-poll baseline"),
        }
    }

    fn all(&self) -> [Option<&'a str>; 3] {
        [self.direct, self.tunnel, self.baseline]
    }
}

fn cell<'a>(
    report: &'a Report,
    stages: &[&str],
    path: Option<&str>,
    request: &str,
    clients: usize,
) -> Option<&'a LatencyCell> {
    let path = path?;
    report.latency.iter().find(|cell| {
        stages.contains(&cell.stage.as_str())
            && cell.path == path
            && cell.request == request
            && cell.clients == clients
    })
}

fn stats(
    report: &Report,
    stages: &[&str],
    path: Option<&str>,
    request: &str,
    clients: usize,
) -> Option<Percentiles> {
    cell(report, stages, path, request, clients).and_then(|cell| cell.stats)
}

fn unique<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

fn ms_or_blank(value: Option<f64>) -> String {
    value.map_or_else(String::new, ms)
}

/// p50 of each path with one client, and what the tunnel and the baseline add to direct.
pub(super) fn added_latency_table(report: &Report) -> Table {
    const STAGES: [&str; 2] = ["payload", "sporadic"];
    let paths = Paths::of(report);
    let headers = [
        "request",
        "direct p50",
        "tunnel p50",
        "baseline p50",
        "tunnel adds",
        "baseline adds",
    ];
    let mut table = Table::new(
        "p50 with one client and what each relay adds over direct (ms)",
        headers.map(str::to_string).to_vec(),
    );
    let requests = unique(
        report
            .latency
            .iter()
            .filter(|cell| STAGES.contains(&cell.stage.as_str()))
            .map(|cell| cell.request.clone()),
    );
    for request in requests {
        let p50 = |path: Option<&str>| {
            stats(report, &STAGES, path, &request, 1).map(|stats| stats.p50_ms)
        };
        let (direct, tunnel, baseline) =
            (p50(paths.direct), p50(paths.tunnel), p50(paths.baseline));
        let added = |relay: Option<f64>| relay.zip(direct).map(|(relay, direct)| relay - direct);
        table.rows.push(vec![
            request.clone(),
            ms_or_blank(direct),
            ms_or_blank(tunnel),
            ms_or_blank(baseline),
            ms_or_blank(added(tunnel)),
            ms_or_blank(added(baseline)),
        ]);
    }
    table
}

/// p99 of each path by concurrency, and the baseline's p99 as a multiple of the tunnel's.
pub(super) fn concurrency_p99_table(report: &Report) -> Table {
    let paths = Paths::of(report);
    let headers = [
        "request x clients",
        "direct p99",
        "tunnel p99",
        "baseline p99",
        "baseline / tunnel",
    ];
    let mut table = Table::new(
        "p99 by concurrency (ms), and the baseline's p99 in multiples of the tunnel's",
        headers.map(str::to_string).to_vec(),
    );
    let keys = unique(
        report
            .latency
            .iter()
            .filter(|cell| cell.stage == "concurrency")
            .map(|cell| (cell.request.clone(), cell.clients)),
    );
    for (request, clients) in keys {
        let p99 = |path: Option<&str>| {
            stats(report, &["concurrency"], path, &request, clients).map(|stats| stats.p99_ms)
        };
        let (tunnel, baseline) = (p99(paths.tunnel), p99(paths.baseline));
        let ratio = tunnel
            .zip(baseline)
            .map_or_else(String::new, |(tunnel, baseline)| {
                format!("{:.2}x", baseline / tunnel)
            });
        table.rows.push(vec![
            format!("{request} x{clients}"),
            ms_or_blank(p99(paths.direct)),
            ms_or_blank(tunnel),
            ms_or_blank(baseline),
            ratio,
        ]);
    }
    table
}

/// Describes in words when the drip lines and SSE events arrived on the tunnel and the
/// baseline.
pub(super) fn streaming_summary(report: &Report) -> String {
    let paths = Paths::of(report);
    let mut text = String::new();
    let drip = |path: Option<&str>| {
        report
            .drip
            .iter()
            .find(|drip| Some(drip.path.as_str()) == path)
    };
    if let (Some(tunnel), Some(baseline)) = (drip(paths.tunnel), drip(paths.baseline)) {
        let _ = write!(
            text,
            "The drip endpoint writes {} lines, one every {} ms, on one chunked response. ",
            tunnel.lines, tunnel.interval_ms
        );
        let (first, last) = (
            tunnel.line_arrival_ms.first(),
            tunnel.line_arrival_ms.last(),
        );
        if let (Some(first), Some(last), None) = (first, last, &tunnel.error) {
            let _ = write!(
                text,
                "Through the tunnel the first line arrived after {} ms and the last after \
                 {} ms, each as the upstream wrote it. ",
                ms(*first),
                ms(*last)
            );
        }
        let arrivals = &baseline.line_arrival_ms;
        let spread =
            arrivals
                .iter()
                .copied()
                .fold(None, |range: Option<(f64, f64)>, at| match range {
                    None => Some((at, at)),
                    Some((low, high)) => Some((low.min(at), high.max(at))),
                });
        match (&baseline.error, spread) {
            (Some(error), _) => {
                let _ = write!(text, "Through the baseline it failed: {error}. ");
            }
            (None, Some((low, high))) if high - low < baseline.interval_ms as f64 / 2.0 => {
                let _ = write!(
                    text,
                    "Through the baseline the head and all {} lines arrived together after \
                     {} ms, because the relay forwards a response only once it is complete. ",
                    arrivals.len(),
                    ms(high)
                );
            }
            (None, Some((low, high))) => {
                let _ = write!(
                    text,
                    "Through the baseline the lines arrived between {} and {} ms. ",
                    ms(low),
                    ms(high)
                );
            }
            (None, None) => text.push_str("Through the baseline no line arrived. "),
        }
        text.push_str("\n\n");
    }
    let sse_p50 = |path: Option<&str>| {
        report
            .sse
            .iter()
            .find(|sse| Some(sse.path.as_str()) == path)
            .and_then(|sse| sse.delay)
            .map(|delay| delay.p50_ms)
    };
    if let [Some(direct), Some(tunnel), Some(baseline)] = paths.all().map(sse_p50) {
        let _ = write!(
            text,
            "Server-sent events took p50 {} ms from emission to arrival through the tunnel, \
             {} ms direct and {} ms through the baseline, where each event waits for the end \
             of the stream.\n\n",
            ms(tunnel),
            ms(direct),
            ms(baseline)
        );
    }
    text
}

/// Describes the WebSocket results of the tunnel and why the baseline has none.
pub(super) fn websocket_summary(report: &Report) -> String {
    let paths = Paths::of(report);
    let result = |path: Option<&str>| {
        report
            .websocket
            .iter()
            .find(|ws| Some(ws.path.as_str()) == path)
    };
    let mut text = String::new();
    if let (Some(direct), Some(tunnel)) = (result(paths.direct), result(paths.tunnel)) {
        if let (Some(d), Some(t)) = (direct.small, tunnel.small) {
            let _ = write!(
                text,
                "A {} echo took p50 {} ms through the tunnel against {} ms direct. ",
                format_bytes(tunnel.small_bytes as u64),
                ms(t.p50_ms),
                ms(d.p50_ms)
            );
        }
    }
    if let Some(error) = result(paths.baseline).and_then(|ws| ws.error.as_ref()) {
        let _ = write!(
            text,
            "The baseline cannot carry a WebSocket: its upgrade request failed with \
             \"{}\", because the relay reads each request and response whole.",
            short_error(Some(error))
        );
    }
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text
}

/// Compares the memory growth of the tunnel's and the baseline's processes, then shows the
/// full memory table.
pub(super) fn memory_section(report: &Report) -> String {
    if report.memory.is_empty() {
        return String::new();
    }
    let paths = Paths::of(report);
    let mut text = String::from("## Memory: baseline against tunnel\n\n");
    text.push_str(
        "VmRSS of each relay process, sampled every 25 ms, while one body went down and then \
         up, and while idle WebSockets were held open. Growth is the peak (VmRSS or VmHWM) \
         minus the value just before the case for a transfer, and the steady value minus the \
         value before for idle sockets.\n\n",
    );
    let mut table = Table::new(
        "Memory growth, tunnel and baseline",
        [
            "case",
            "path / process",
            "body or sockets",
            "before MiB",
            "peak MiB",
            "growth MiB",
            "growth per unit",
        ]
        .map(str::to_string)
        .to_vec(),
    );
    for case in report.memory.iter().filter(|case| {
        let path = Some(case.path.as_str());
        path == paths.tunnel || path == paths.baseline
    }) {
        push_memory_rows(&mut table, case);
    }
    text.push_str(&markdown_table(&table));
    text.push_str(&memory_prose(report, &paths));
    text.push_str(&markdown_table(&tables::memory_table(report)));
    text
}

fn push_memory_rows(table: &mut Table, case: &MemoryCase) {
    let idle = case.case == "idle-websockets";
    if case.processes.is_empty() || (idle && case.websockets_open == 0) {
        let error = case.error.as_deref().or(case.note.as_deref());
        table.rows.push(vec![
            case.description.clone(),
            case.path.clone(),
            format!("failed: {}", short_error(error)),
        ]);
        return;
    }
    for process in &case.processes {
        let growth_kib = process.peak_kib as f64 - process.before_kib as f64;
        let (amount, per_unit) = if idle {
            let grown = process.steady_kib as f64 - process.before_kib as f64;
            (
                format!("{} sockets", case.websockets_open),
                format!("{:.1} KiB per socket", grown / case.websockets_open as f64),
            )
        } else {
            let body_kib = case.bytes as f64 / 1024.0;
            (
                format_bytes(case.bytes),
                format!("{:.1}% of the body", growth_kib / body_kib * 100.0),
            )
        };
        table.rows.push(vec![
            case.description.clone(),
            format!("{} / {}", case.path, process.name),
            amount,
            mib(process.before_kib as f64),
            mib(process.peak_kib as f64),
            mib(growth_kib),
            per_unit,
        ]);
    }
}

fn memory_prose(report: &Report, paths: &Paths<'_>) -> String {
    let case = |path: Option<&str>, name: &str| {
        report
            .memory
            .iter()
            .find(|case| Some(case.path.as_str()) == path && case.case == name)
    };
    let growths = |case: &MemoryCase| -> Vec<String> {
        case.processes
            .iter()
            .map(|process: &ProcessMemory| {
                let growth = process.peak_kib as f64 - process.before_kib as f64;
                format!("{} MiB ({})", mib(growth), process.name)
            })
            .collect()
    };
    let mut text = String::new();
    if let Some(tunnel) = case(paths.tunnel, "transfer").filter(|case| case.error.is_none()) {
        let _ = write!(
            text,
            "Moving a {} body each way through the tunnel, the processes grew at peak by {}. \
             The flow-control windows bound what each stream buffers (4 MiB per stream, \
             16 MiB per connection), not the body size. ",
            format_bytes(tunnel.bytes),
            join_words(&growths(tunnel))
        );
    }
    if let Some(baseline) = case(paths.baseline, "transfer").filter(|case| case.error.is_none()) {
        let largest = baseline
            .processes
            .iter()
            .map(|process| process.peak_kib.saturating_sub(process.before_kib))
            .max()
            .unwrap_or(0);
        // GiB of growth per GiB of body equals KiB of growth per KiB of body.
        let gib_per_gib = largest as f64 / (baseline.bytes as f64 / 1024.0);
        let _ = write!(
            text,
            "The baseline moved a {} body and grew by {}, because the front and the agent \
             each hold every body whole. Scaled from that growth, a 1 GiB body would take \
             about {:.1} GiB in its largest process (an estimate, not measured).",
            format_bytes(baseline.bytes),
            join_words(&growths(baseline)),
            gib_per_gib
        );
    }
    text.push_str("\n\n");
    if let Some(tunnel) = case(paths.tunnel, "idle-websockets").filter(|c| c.websockets_open > 0) {
        let per_socket: Vec<String> = tunnel
            .processes
            .iter()
            .map(|process| {
                let grown = process.steady_kib as f64 - process.before_kib as f64;
                format!(
                    "{:.1} KiB in {}",
                    grown / tunnel.websockets_open as f64,
                    process.name
                )
            })
            .collect();
        let _ = write!(
            text,
            "With {} idle WebSockets open through the tunnel, each socket cost {}. ",
            tunnel.websockets_open,
            join_words(&per_socket)
        );
    }
    if let Some(baseline) = case(paths.baseline, "idle-websockets") {
        if baseline.websockets_open == 0 {
            let error = baseline.error.as_deref().or(baseline.note.as_deref());
            let _ = write!(
                text,
                "The baseline could not open any WebSocket (\"{}\"), so it has no idle \
                 figure.",
                short_error(error)
            );
        }
    }
    text.push_str("\n\n");
    text
}

/// Lists, in plain words, what this run cannot show, with the figures that make each point.
///
/// # Errors
///
/// Returns an error when a linked test file no longer exists.
pub(super) fn unmeasured_section(
    report: &Report,
    links: &mut SourceLinks,
) -> anyhow::Result<String> {
    let mut text = String::from("## What the numbers do not show yet\n\n");
    text.push_str(&loopback_point(report));
    text.push_str(&model_table(report));
    text.push_str(&closed_loop_point(report));
    text.push_str(&shared_cpu_point(report));
    text.push_str(&targets_point(report));
    text.push_str(&samples_point(report));
    text.push_str(&links.expand(&conditions_point(report))?);
    text.push_str(&coverage_point(report));
    Ok(text)
}

fn loopback_point(report: &Report) -> String {
    let paths = Paths::of(report);
    let p50 = |path| stats(report, &["payload"], path, "GET 0 B", 1).map(|s| s.p50_ms);
    let p99_128 = |path| stats(report, &["concurrency"], path, "GET 0 B", 128).map(|s| s.p99_ms);
    let mut text = String::from(
        "- **Loopback hides the round trips where long polling loses.** Every process ran on \
         one machine and talked over 127.0.0.1",
    );
    if let Some(direct) = p50(paths.direct) {
        let _ = write!(
            text,
            ", where a whole direct GET of 0 B took p50 {} ms",
            ms(direct)
        );
    }
    text.push_str(
        ". In a deployment a network round trip R separates the agent from the public host. \
         The tunnel pays R once per request: the head goes out on a new stream and the \
         response comes back on it. The baseline's code pays more. The poll answer reaches \
         the agent after R/2, and the post with the response reaches the front after another \
         R/2, when the client gets its answer. The post's reply and the next poll then take \
         another R before the front can hand over the next request. One poll cycle is 2R, so \
         each poller serves at most 1/(2R) requests per second, whatever the CPUs can do, and \
         concurrent requests queue behind it.",
    );
    if let (Some(tunnel), Some(baseline)) = (p99_128(paths.tunnel), p99_128(paths.baseline)) {
        let _ = write!(
            text,
            " On loopback that cycle costs only microseconds: at 128 clients the baseline's \
             GET 0 B p99 was {} ms against the tunnel's {} ms, {:.1} times as long, where \
             the target asks for 100 times.",
            ms(baseline),
            ms(tunnel),
            baseline / tunnel
        );
    }
    text.push_str(
        " The table below applies the model to a few round trips. It is an estimate from the \
         code, not a measurement. It also predicts that with one client the baseline adds 2R \
         per back-to-back request and R per sporadic one, against R for the tunnel, so at \
         one client the two stay within a factor of about 2 on any network. The difference \
         grows with the number of concurrent requests.\n\n",
    );
    text
}

fn model_table(report: &Report) -> String {
    let pollers = report.plan.baseline_pollers.max(1);
    let poller_text = if pollers == 1 {
        "1 baseline poller".to_string()
    } else {
        format!("{pollers} baseline pollers")
    };
    let pollers = f64::from(pollers);
    let mut table = Table::new(
        format!(
            "Model estimate for a round trip R between agent and public host, {poller_text}, \
             {MODEL_CLIENTS} closed-loop clients (not measured)"
        ),
        [
            "R ms",
            "tunnel adds, 1 client",
            "baseline adds, 1 client back to back",
            "baseline max requests/s",
            "baseline queue wait, 128 clients",
        ]
        .map(str::to_string)
        .to_vec(),
    );
    for rtt in MODEL_RTTS_MS {
        let max_rate = pollers * 1000.0 / (2.0 * rtt);
        let queue_ms = MODEL_CLIENTS / max_rate * 1000.0;
        table.rows.push(vec![
            format!("{rtt:.0}"),
            format!("{} ms", ms(rtt)),
            format!("{} ms", ms(2.0 * rtt)),
            format!("{max_rate:.0}"),
            duration_text(queue_ms),
        ]);
    }
    let mut text = table.render_markdown();
    text.push('\n');
    text
}

/// Formats milliseconds as ms below one second and as seconds above.
fn duration_text(ms_value: f64) -> String {
    if ms_value < 1000.0 {
        format!("{} ms", ms(ms_value))
    } else {
        format!("{:.1} s", ms_value / 1000.0)
    }
}

fn closed_loop_point(report: &Report) -> String {
    let paths = Paths::of(report);
    let rate =
        |path| cell(report, &["concurrency"], path, "GET 0 B", 128).map(|cell| cell.requests_per_s);
    let mut text = String::from(
        "- **Closed-loop clients understate overload.** Each client sends its next request \
         only after the previous response, so a path that slows down also receives less \
         load. Each cell therefore shows the latency at the rate the path could sustain.",
    );
    if let (Some(tunnel), Some(baseline)) = (rate(paths.tunnel), rate(paths.baseline)) {
        let _ = write!(
            text,
            " At 128 clients the tunnel served {tunnel:.0} and the baseline {baseline:.0} \
             GET 0 B requests per second.",
        );
    }
    text.push_str(
        " Requests that keep arriving at a fixed rate above those figures, as users' requests \
         do, would build a queue that these cells never show. The baseline would show it \
         first, because its queue is served one poll at a time.\n",
    );
    text
}

fn shared_cpu_point(report: &Report) -> String {
    let machine = &report.machine;
    let mut text = format!(
        "- **Every process shared {} CPUs.** The client, the upstream, ingress, tunnel-agent \
         and the baseline competed for the same cores",
        machine.cpus
    );
    if !machine.load_average.is_empty() {
        let _ = write!(
            text,
            " (load average {} at the start)",
            machine.load_average
        );
    }
    text.push_str(
        ". The tunnel's own work, QUIC encryption and framing in two extra processes, \
         takes CPU time from the client here, so its throughput is a CPU figure more than a \
         network one.",
    );
    let paths = Paths::of(report);
    let download = |path: Option<&str>| {
        report
            .throughput
            .iter()
            .find(|result| Some(result.path.as_str()) == path && result.direction == "download")
            .and_then(|result| result.mib_per_s)
    };
    if let (Some(direct), Some(tunnel)) = (download(paths.direct), download(paths.tunnel)) {
        let _ = write!(
            text,
            " One download ran at {tunnel:.0} MiB/s through the tunnel against {direct:.0} \
             MiB/s direct.",
        );
    }
    text.push_str(
        " On separate machines each side gets its own cores, and the network sets its own \
         limits instead.\n",
    );
    text
}

fn targets_point(report: &Report) -> String {
    let missed: Vec<String> = report
        .targets
        .iter()
        .filter(|check| check.met == Some(false))
        .map(|check| format!("  - {}: measured {}", check.target, check.measured))
        .collect();
    let unmeasured: Vec<&str> = report
        .targets
        .iter()
        .filter(|check| check.met.is_none())
        .map(|check| check.target.as_str())
        .collect();
    let mut text = match missed.len() {
        0 => String::from("- **Targets:** this run met every target it measured.\n"),
        count => format!(
            "- **{count} of {} targets were missed in this run:**\n{}\n",
            report.targets.len(),
            missed.join("\n")
        ),
    };
    if !unmeasured.is_empty() {
        let _ = writeln!(
            text,
            "  - Not measured in this run: {}.",
            unmeasured.join("; ")
        );
    }
    let tunnel = Paths::of(report).tunnel;
    let scaled = report.memory.iter().any(|case| {
        Some(case.path.as_str()) == tunnel
            && case.case == "transfer"
            && case.bytes != 1024 * 1024 * 1024
    });
    if scaled {
        text.push_str(
            "  - The transfer target names 1 GiB, but this run moved less through the tunnel \
             (see the memory table). A full run without `--quick` moves 1 GiB.\n",
        );
    }
    text
}

fn samples_point(report: &Report) -> String {
    let few: Vec<String> = unique(
        report
            .latency
            .iter()
            .filter(|cell| cell.stats.is_some_and(|stats| stats.count < FEW_SAMPLES))
            .map(|cell| format!("{} x{}", cell.request, cell.clients)),
    );
    let failed: Vec<String> = report
        .latency
        .iter()
        .filter(|cell| cell.errors > 0)
        .map(|cell| {
            format!(
                "{} on {} x{}: {} errors, first: {}",
                cell.path,
                cell.request,
                cell.clients,
                cell.errors,
                short_error(cell.first_error.as_deref())
            )
        })
        .collect();
    let mut text = String::new();
    if !few.is_empty() {
        let _ = writeln!(
            text,
            "- **Some cells are small.** The cells {} recorded fewer than {FEW_SAMPLES} \
             requests on at least one path, so their p99 is close to their maximum, one slow \
             request.",
            join_words(&few)
        );
    }
    if !failed.is_empty() {
        let _ = writeln!(
            text,
            "- **Some requests failed** and are left out of the percentiles: {}.",
            failed.join("; ")
        );
    }
    text
}

/// Joins words as `a`, `a and b` or `a, b and c`.
fn join_words(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [only] => only.clone(),
        [first @ .., last] => format!("{} and {last}", first.join(", ")),
    }
}

fn conditions_point(report: &Report) -> String {
    let drops: u64 = report
        .udp_receive_buffer_drops
        .iter()
        .map(|stage| stage.count)
        .sum();
    let mut text = String::from(
        "- **No network loss, reordering or address change.** Loopback neither loses nor \
         reorders packets on the way.",
    );
    if drops == 0 {
        text.push_str(
            " The kernel dropped no UDP datagram for a full socket receive buffer during the \
             run.",
        );
    } else {
        let cells: Vec<String> = report
            .latency
            .iter()
            .filter(|cell| cell.udp_drops.is_some_and(|count| count > 0))
            .map(|cell| {
                let p99 = cell.stats.map_or_else(String::new, |stats| {
                    format!(", p99 {} ms", ms(stats.p99_ms))
                });
                let count = cell.udp_drops.unwrap_or(0);
                format!(
                    "{count} on {} {} x{}{p99}",
                    cell.path, cell.request, cell.clients
                )
            })
            .collect();
        let _ = write!(
            text,
            " The kernel did drop {drops} UDP datagrams for full socket receive buffers"
        );
        if cells.is_empty() {
            text.push('.');
        } else {
            let _ = write!(
                text,
                " ({}). QUIC resends what was dropped, so those drops probably account for \
                 part of the tail of those cells.",
                cells.join("; ")
            );
        }
    }
    text.push_str(
        " QUIC's loss recovery, the independence of streams when a packet is lost, NAT \
         rebinding and agent reconnects are tested for correctness in [[tests/tests/faults.rs]] \
         and [[tests/tests/nat.rs]], but this run does not time them.\n",
    );
    text
}

fn coverage_point(report: &Report) -> String {
    let mut text = String::from(
        "- **One client protocol.** The client speaks HTTP/1.1 over plain TCP. HTTP/2 \
         clients, HTTPS on the public listener, h2c upstreams and gRPC pass the end-to-end \
         tests in `tests/`, but none of them is timed here.\n\
         - **Memory is resident set size only.** Kernel socket buffers, which grow with every \
         open connection, are not part of VmRSS.\n",
    );
    if !report.paths.iter().any(|path| path.role == "peer") {
        text.push_str(
            "- **No other tunnels.** rathole, bore and nginx were not measured; \
             `scripts/compare-latency --with-peers` adds those found on PATH.\n",
        );
    }
    text.push('\n');
    text
}
