//! The result tables, rendered as aligned text for the terminal and as markdown for
//! `summary.md`.

use super::format_bytes;
use super::report::{
    Direction, LatencyCell, MemoryCase, Percentiles, Report, SseTranscript, WebSocketTranscript,
};

/// One table of results.
#[derive(Debug, Clone)]
pub(super) struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(title: impl Into<String>, headers: Vec<String>) -> Self {
        Self {
            title: title.into(),
            headers,
            rows: Vec::new(),
        }
    }

    /// Renders the table with space-padded columns; the first column is left-aligned and the
    /// others right-aligned.
    pub(super) fn render_text(&self) -> String {
        let widths = self.widths();
        let mut text = format!("{}\n", self.title);
        let render_row = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(index, (cell, width))| {
                    if index == 0 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            format!("  {}\n", padded.join("  ").trim_end())
        };
        text.push_str(&render_row(&self.headers));
        let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
        text.push_str(&format!("  {}\n", rule.join("  ")));
        for row in &self.rows {
            text.push_str(&render_row(row));
        }
        text
    }

    /// Renders the table as a GitHub-flavoured markdown table under a level-3 heading.
    pub(super) fn render_markdown(&self) -> String {
        let escape = |cell: &String| cell.replace('|', "\\|");
        let mut text = format!("### {}\n\n", self.title);
        let headers: Vec<String> = self.headers.iter().map(escape).collect();
        text.push_str(&format!("| {} |\n", headers.join(" | ")));
        let align: Vec<&str> = (0..self.headers.len())
            .map(|index| if index == 0 { ":--" } else { "--:" })
            .collect();
        text.push_str(&format!("| {} |\n", align.join(" | ")));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(escape).collect();
            text.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        text
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        widths
    }
}

/// Builds every table that has data in `report`.
pub(super) fn build(report: &Report) -> Vec<Table> {
    let mut tables = vec![payload_table(report), concurrency_table(report)];
    tables.push(drip_table(report));
    tables.push(sse_table(report));
    tables.push(websocket_table(report));
    if let Some(transcript) = &report.websocket_transcript {
        tables.push(websocket_transcript_table(transcript));
    }
    if let Some(transcript) = &report.sse_transcript {
        tables.push(sse_transcript_table(transcript));
    }
    if !report.throughput.is_empty() {
        tables.push(throughput_table(report));
    }
    if !report.memory.is_empty() {
        tables.push(memory_table(report));
    }
    if !report.udp_receive_buffer_drops.is_empty() {
        tables.push(udp_table(report));
    }
    if !report.targets.is_empty() {
        tables.push(targets_table(report));
    }
    tables
}

fn path_labels(report: &Report) -> Vec<String> {
    report.paths.iter().map(|path| path.label.clone()).collect()
}

pub(super) fn payload_table(report: &Report) -> Table {
    let mut headers = vec!["request".to_string()];
    headers.extend(path_labels(report));
    let mut table = Table::new("Request latency, 1 client (ms: p50 / p90 / p99)", headers);
    let cells: Vec<&LatencyCell> = report
        .latency
        .iter()
        .filter(|cell| cell.stage == "payload" || cell.stage == "sporadic")
        .collect();
    for request in unique(cells.iter().map(|cell| cell.request.clone())) {
        let mut row = vec![request.clone()];
        for path in path_labels(report) {
            let cell = cells
                .iter()
                .find(|cell| cell.request == request && cell.path == path);
            row.push(cell.map_or_else(String::new, |cell| latency_text(cell, false)));
        }
        table.rows.push(row);
    }
    table
}

pub(super) fn concurrency_table(report: &Report) -> Table {
    let mut headers = vec!["request x clients".to_string()];
    headers.extend(path_labels(report));
    let mut table = Table::new(
        "Request latency by concurrency (ms: p50 / p90 / p99, then requests/s)",
        headers,
    );
    let cells: Vec<&LatencyCell> = report
        .latency
        .iter()
        .filter(|cell| cell.stage == "concurrency")
        .collect();
    let keys = unique(
        cells
            .iter()
            .map(|cell| (cell.request.clone(), cell.clients)),
    );
    for (request, clients) in keys {
        let mut row = vec![format!("{request} x{clients}")];
        for path in path_labels(report) {
            let cell = cells.iter().find(|cell| {
                cell.request == request && cell.clients == clients && cell.path == path
            });
            row.push(cell.map_or_else(String::new, |cell| latency_text(cell, true)));
        }
        table.rows.push(row);
    }
    table
}

fn latency_text(cell: &LatencyCell, with_rate: bool) -> String {
    let Some(stats) = &cell.stats else {
        return format!("failed: {}", short_error(cell.first_error.as_deref()));
    };
    let mut text = triple(stats);
    if with_rate {
        text.push_str(&format!(" @ {:.0}/s", cell.requests_per_s));
    }
    if cell.errors > 0 {
        text.push_str(&format!(" ({} errors)", cell.errors));
    }
    text
}

fn triple(stats: &Percentiles) -> String {
    format!(
        "{} / {} / {}",
        ms(stats.p50_ms),
        ms(stats.p90_ms),
        ms(stats.p99_ms)
    )
}

pub(super) fn drip_table(report: &Report) -> Table {
    let lines = report.drip.first().map_or(0, |drip| drip.lines);
    let interval = report.drip.first().map_or(0, |drip| drip.interval_ms);
    let mut headers = vec!["path".to_string(), "head".to_string()];
    headers.extend((0..lines).map(|index| format!("line {index} @{}", index * interval)));
    let mut table = Table::new(
        format!(
            "Slow chunked response: arrival in ms after the request (line i is written at i x {interval} ms)"
        ),
        headers,
    );
    for drip in &report.drip {
        let mut row = vec![drip.path.clone()];
        if let Some(error) = &drip.error {
            row.push(format!("failed: {}", short_error(Some(error))));
            table.rows.push(row);
            continue;
        }
        row.push(drip.head_ms.map_or_else(String::new, ms));
        row.extend(drip.line_arrival_ms.iter().map(|at| ms(*at)));
        table.rows.push(row);
    }
    table
}

pub(super) fn sse_table(report: &Report) -> Table {
    let headers = ["path", "events", "p50", "p90", "p99", "max"].map(str::to_string);
    let mut table = Table::new(
        "Server-sent events: delay from emission to arrival (ms)",
        headers.to_vec(),
    );
    for sse in &report.sse {
        let mut row = vec![
            sse.path.clone(),
            format!("{}/{}", sse.transcript.len(), sse.events),
        ];
        match &sse.delay {
            Some(delay) => row.extend([
                ms(delay.p50_ms),
                ms(delay.p90_ms),
                ms(delay.p99_ms),
                ms(delay.max_ms),
            ]),
            None => row.push(format!("failed: {}", short_error(sse.error.as_deref()))),
        }
        table.rows.push(row);
    }
    table
}

pub(super) fn websocket_table(report: &Report) -> Table {
    let small = report.websocket.first().map_or(0, |ws| ws.small_bytes);
    let large = report.websocket.first().map_or(0, |ws| ws.large_bytes);
    let headers = vec![
        "path".to_string(),
        format!("{} RTT p50 / p99", format_bytes(small as u64)),
        format!("{} RTT p50 / p99", format_bytes(large as u64)),
        "messages/s".to_string(),
    ];
    let mut table = Table::new("WebSocket echo (ms)", headers);
    for ws in &report.websocket {
        let pair = |stats: &Option<Percentiles>| {
            stats.map_or_else(String::new, |stats| {
                format!("{} / {}", ms(stats.p50_ms), ms(stats.p99_ms))
            })
        };
        let mut row = vec![ws.path.clone()];
        if let Some(error) = &ws.error {
            row.push(format!("failed: {}", short_error(Some(error))));
        } else {
            row.push(pair(&ws.small));
            row.push(pair(&ws.large));
            row.push(
                ws.messages_per_s
                    .map_or_else(String::new, |rate| format!("{rate:.0}")),
            );
        }
        table.rows.push(row);
    }
    table
}

/// Lists every message of the WebSocket transcript, the 101 response first.
pub(super) fn websocket_transcript_table(transcript: &WebSocketTranscript) -> Table {
    let headers = ["ms", "direction", "kind", "payload"].map(str::to_string);
    let mut table = Table::new(
        format!(
            "WebSocket transcript through the tunnel ({}), ms after the upgrade request",
            transcript.url
        ),
        headers.to_vec(),
    );
    if let Some(at) = transcript.upgrade_ms {
        table.rows.push(vec![
            exact_ms(at),
            direction_text(Direction::ServerToClient).to_string(),
            "101".to_string(),
            "Switching Protocols".to_string(),
        ]);
    }
    for message in &transcript.messages {
        table.rows.push(vec![
            exact_ms(message.at_ms),
            direction_text(message.direction).to_string(),
            message.kind.clone(),
            message.payload.clone(),
        ]);
    }
    if let Some(error) = &transcript.error {
        table.rows.push(vec![
            String::new(),
            String::new(),
            "error".to_string(),
            error.clone(),
        ]);
    }
    table
}

fn direction_text(direction: Direction) -> &'static str {
    match direction {
        Direction::ClientToServer => "client → server",
        Direction::ServerToClient => "server → client",
    }
}

/// Lists every event of the SSE transcript with its emission, arrival and delay.
pub(super) fn sse_transcript_table(transcript: &SseTranscript) -> Table {
    let headers = ["id", "emitted ms", "received ms", "delay ms", "data"].map(str::to_string);
    let head = transcript.head_ms.map_or_else(String::new, |at| {
        format!("; response head at {} ms", exact_ms(at))
    });
    let mut table = Table::new(
        format!(
            "SSE transcript through the tunnel ({}), ms after the request{head}",
            transcript.url
        ),
        headers.to_vec(),
    );
    for event in &transcript.events {
        let (emitted, delay) = match event.emitted_ms {
            Some(emitted) => (exact_ms(emitted), exact_ms(event.received_ms - emitted)),
            None => (String::new(), String::new()),
        };
        table.rows.push(vec![
            event.id.clone(),
            emitted,
            exact_ms(event.received_ms),
            delay,
            event.data.clone(),
        ]);
    }
    if let Some(error) = &transcript.error {
        table.rows.push(vec![
            "error".to_string(),
            String::new(),
            String::new(),
            String::new(),
            error.clone(),
        ]);
    }
    table
}

/// Formats milliseconds with three decimals, so that the send and echo times of one message
/// stay apart in a transcript.
fn exact_ms(value: f64) -> String {
    format!("{value:.3}")
}

pub(super) fn throughput_table(report: &Report) -> Table {
    let bytes = report.throughput.first().map_or(0, |result| result.bytes);
    let headers = vec![
        "path".to_string(),
        format!("download {}", format_bytes(bytes)),
        format!("upload {}", format_bytes(bytes)),
    ];
    let mut table = Table::new("Throughput of one transfer (MiB/s)", headers);
    for path in path_labels(report) {
        let mut row = vec![path.clone()];
        for direction in ["download", "upload"] {
            let result = report
                .throughput
                .iter()
                .find(|result| result.path == path && result.direction == direction);
            row.push(result.map_or_else(String::new, |result| {
                match (&result.mib_per_s, &result.error) {
                    (Some(rate), _) => format!("{rate:.0}"),
                    (None, error) => format!("failed: {}", short_error(error.as_deref())),
                }
            }));
        }
        if row.len() > 1 && row[1..].iter().any(|cell| !cell.is_empty()) {
            table.rows.push(row);
        }
    }
    table
}

pub(super) fn memory_table(report: &Report) -> Table {
    let headers = [
        "path / process",
        "case",
        "before MiB",
        "peak MiB",
        "steady MiB",
        "growth MiB",
        "per socket KiB",
        "CPU s",
    ]
    .map(str::to_string);
    let mut table = Table::new(
        "Resident memory (VmRSS; peak also from VmHWM)",
        headers.to_vec(),
    );
    for case in &report.memory {
        if let Some(error) = case.error.as_ref().filter(|_| case.websockets_open == 0) {
            let row = vec![
                case.path.clone(),
                case.description.clone(),
                format!("failed: {}", short_error(Some(error))),
            ];
            table.rows.push(row);
            continue;
        }
        for process in &case.processes {
            table.rows.push(memory_row(case, process));
        }
    }
    table
}

fn memory_row(case: &MemoryCase, process: &super::report::ProcessMemory) -> Vec<String> {
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    let growth = process.peak_kib as f64 / 1024.0 - process.before_kib as f64 / 1024.0;
    let per_socket = if case.case == "idle-websockets" && case.websockets_open > 0 {
        let grown = process.steady_kib as f64 - process.before_kib as f64;
        format!("{:.1}", grown / case.websockets_open as f64)
    } else {
        String::new()
    };
    vec![
        format!("{} / {}", case.path, process.name),
        case.description.clone(),
        mib(process.before_kib),
        mib(process.peak_kib),
        mib(process.steady_kib),
        format!("{growth:.1}"),
        per_socket,
        format!("{:.2}", process.cpu_seconds),
    ]
}

pub(super) fn udp_table(report: &Report) -> Table {
    let headers = ["stage", "datagrams dropped"].map(str::to_string);
    let mut table = Table::new(
        "UDP datagrams dropped for a full receive buffer (RcvbufErrors, whole network namespace)",
        headers.to_vec(),
    );
    for counter in &report.udp_receive_buffer_drops {
        table
            .rows
            .push(vec![counter.stage.clone(), counter.count.to_string()]);
    }
    table
}

pub(super) fn targets_table(report: &Report) -> Table {
    let headers = ["target", "measured", "met"].map(str::to_string);
    let mut table = Table::new("Project targets", headers.to_vec());
    for check in &report.targets {
        let met = match check.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "not measured",
        };
        table.rows.push(vec![
            check.target.clone(),
            check.measured.clone(),
            met.to_string(),
        ]);
    }
    table
}

/// Formats milliseconds with three significant digits or more.
pub(super) fn ms(value: f64) -> String {
    if value < 1.0 {
        format!("{value:.3}")
    } else if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// Shortens an error chain to its last cause, which is usually the one that explains it.
pub(super) fn short_error(error: Option<&str>) -> String {
    let error = error.unwrap_or("unknown error");
    let last = error.rsplit(": ").next().unwrap_or(error);
    let mut short: String = last.chars().take(60).collect();
    if last.chars().count() > 60 {
        short.push_str("...");
    }
    short
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
