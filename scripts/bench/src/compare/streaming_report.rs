//! `streaming-report`: turns the `results.json` of one local compare-latency run into the
//! streaming report: the architecture, a walkthrough of the proxy code path whose links are
//! checked against the source, and the run's tables, charts, transcripts and limits. It
//! measures nothing itself; `scripts/streaming-report` runs the measurement first.

mod findings;
mod walkthrough;

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;

use super::report::{Direction, Report};
use super::tables::{self, Table};
use super::{format_bytes, KIB};
use walkthrough::SourceLinks;

const LONG_ABOUT: &str = "\
Writes the streaming report, a markdown page, from the results.json of one local \
compare-latency run. The page links to the PNG charts in --charts and to the source files of \
the repository, so both must sit where the links from --output lead. Generation fails when a \
function or type that the walkthrough names no longer exists in its file.

scripts/streaming-report runs the measurement, copies the charts and calls this binary.";

/// Command-line arguments of `streaming-report`.
#[derive(Debug, Parser)]
#[command(name = "streaming-report", version, about, long_about = LONG_ABOUT)]
pub struct Args {
    /// `results.json` written by a local compare-latency run.
    #[arg(long)]
    pub results: PathBuf,

    /// Markdown file to write.
    #[arg(long)]
    pub output: PathBuf,

    /// Folder that contains the run's PNG charts. It must be inside the folder of --output.
    #[arg(long)]
    pub charts: PathBuf,

    /// Repository root that the walkthrough's links point into. Defaults to the root of the
    /// repository this binary was built from.
    #[arg(long)]
    pub repo_root: Option<PathBuf>,

    /// Command line shown as the one that produced the run. Defaults to the compare-latency
    /// command stored in results.json.
    #[arg(long)]
    pub command: Option<String>,
}

/// Charts that compare-latency draws, with the caption each gets in the report.
const CHARTS: [(&str, &str); 3] = [
    (
        "latency_by_size.png",
        "Request latency by body size, one client: p50 solid, p99 dashed, log scale",
    ),
    (
        "latency_by_concurrency.png",
        "Request latency by number of concurrent clients: p50 solid, p99 dashed, log scale",
    ),
    (
        "memory.png",
        "Resident memory of each process over the memory cases",
    ),
];

/// Writes the report.
///
/// # Errors
///
/// Returns an error when results.json cannot be read or is not from a local run, when the
/// folders do not nest as the links need, when a walkthrough link no longer resolves, or when
/// the report cannot be written.
pub fn run(args: Args) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(&args.results)
        .with_context(|| format!("failed to read {}", args.results.display()))?;
    let report: Report = serde_json::from_str(&json).with_context(|| {
        format!(
            "{} is not a compare-latency results file",
            args.results.display()
        )
    })?;
    if report.mode != "local" {
        bail!(
            "{} is from a run in mode {:?}, not a local run: run scripts/compare-latency without --url",
            args.results.display(),
            report.mode
        );
    }

    let layout = Layout::resolve(&args)?;
    let mut links = SourceLinks::new(layout.repo_root.clone(), layout.repo_prefix.clone());
    let markdown = render(&report, &args, &layout, &mut links)?;
    std::fs::write(&args.output, markdown)
        .with_context(|| format!("failed to write {}", args.output.display()))?;
    println!("wrote {}", args.output.display());
    Ok(())
}

/// Locations of the repository and the charts, and the relative links to them from the
/// report's folder.
struct Layout {
    repo_root: PathBuf,
    /// Path from the report's folder to the repository root, such as `../`.
    repo_prefix: String,
    charts_dir: PathBuf,
    /// Path from the report's folder to the charts folder, such as `report-assets/`.
    charts_prefix: String,
}

impl Layout {
    fn resolve(args: &Args) -> anyhow::Result<Self> {
        let repo_root = match &args.repo_root {
            Some(root) => root.clone(),
            // The crate sits at scripts/bench, two levels below the repository root.
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        };
        let repo_root = canonical(&repo_root)?;
        let output_dir = match args.output.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&output_dir)
            .with_context(|| format!("failed to create {}", output_dir.display()))?;
        let output_dir = canonical(&output_dir)?;
        let charts_dir = canonical(&args.charts)?;

        let below_root = output_dir.strip_prefix(&repo_root).with_context(|| {
            format!(
                "the report's folder {} is outside the repository {}, so it cannot link to the source",
                output_dir.display(),
                repo_root.display()
            )
        })?;
        let charts_below = charts_dir.strip_prefix(&output_dir).with_context(|| {
            format!(
                "--charts {} must be inside the report's folder {}",
                charts_dir.display(),
                output_dir.display()
            )
        })?;
        let depth = below_root
            .components()
            .filter(|part| matches!(part, Component::Normal(_)))
            .count();
        Ok(Self {
            repo_root,
            repo_prefix: "../".repeat(depth),
            charts_dir: charts_dir.clone(),
            charts_prefix: folder_prefix(charts_below),
        })
    }
}

fn canonical(path: &Path) -> anyhow::Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("failed to resolve {}", path.display()))
}

/// Returns `path` with forward slashes and a trailing slash, or nothing for an empty path.
fn folder_prefix(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}/", parts.join("/"))
    }
}

fn render(
    report: &Report,
    args: &Args,
    layout: &Layout,
    links: &mut SourceLinks,
) -> anyhow::Result<String> {
    let mut text = introduction(report, args, layout);

    text.push_str("## Architecture\n\n");
    text.push_str(ARCHITECTURE_INTRO);
    text.push_str(&walkthrough::architecture());
    text.push_str("\n## The proxy code path, step by step\n\n");
    text.push_str(WALKTHROUGH_INTRO);
    text.push_str(&walkthrough::walkthrough(links)?);

    text.push_str(&how_measured(report, args, layout));
    text.push_str(&latency_section(report, layout));
    text.push_str(&streaming_section(report));
    text.push_str(&transcripts_section(report));
    text.push_str(&throughput_section(report));
    text.push_str(&findings::memory_section(report));
    text.push_str(&chart(layout, "memory.png"));

    text.push_str("## Targets\n\n");
    text.push_str(
        "The project's benchmark targets, checked by compare-latency against this run. \
         Each target spells out the formula behind its figure.\n\n",
    );
    text.push_str(&markdown_table(&tables::targets_table(report)));
    text.push_str(&findings::unmeasured_section(report, links)?);

    if !report.notes.is_empty() {
        text.push_str("## Notes from the run\n\n");
        for note in &report.notes {
            let _ = writeln!(text, "- {note}");
        }
        text.push('\n');
    }
    Ok(text)
}

const ARCHITECTURE_INTRO: &str = "\
Left: the data flow of ingress-tunnel. The agent dials one QUIC connection out through the \
NAT and keeps it open; the ingress opens one bidirectional stream on it per public request. \
Heads and bodies are frames on that stream, sent as they are produced. Each stream has its \
own 4 MiB flow-control window inside the connection's 16 MiB, so a slow reader holds back its \
own request and at most one stream window of the connection's. After a \
`101 Switching Protocols` the stream carries raw bytes. Stream numbers are QUIC stream IDs: \
0 is the first stream the agent opens, and the ingress, the QUIC server, opens 1, 5, 9 and \
so on. Right: the long-poll relay it replaces, as implemented for this comparison.\n\n";

const WALKTHROUGH_INTRO: &str = "\
One request, from the public socket to the upstream and back. Each name links to its \
definition. The report generator checks every link against the source when it writes this \
page, so a renamed or removed function stops the generation instead of leaving a stale \
name.\n\n";

fn introduction(report: &Report, args: &Args, layout: &Layout) -> String {
    let results = display_path(&args.results, &layout.repo_root);
    format!(
        "# Streaming report: ingress-tunnel against a long-poll relay\n\n\
         <!-- Generated by scripts/streaming-report from {results}. Edit the generator in \
         scripts/bench/src/compare/streaming_report.rs and its modules, then run the script \
         again; do not edit this file by hand. -->\n\n\
         ingress-tunnel carries each public request on its own QUIC stream from the ingress \
         to the agent behind NAT, and streams bodies in both directions. This page shows how \
         a request travels through the code and compares it, in one run on one machine, with \
         a long-poll relay (the design it replaces) and with direct access to the same \
         upstream. Every figure comes from the {kind} run of {started}; its `results.json` \
         (under `results/`, which git ignores) contains them all.\n\n",
        kind = if report.quick {
            "quick (`--quick`)"
        } else {
            "full"
        },
        started = readable_stamp(&report.started_at_utc),
    )
}

fn how_measured(report: &Report, args: &Args, layout: &Layout) -> String {
    let mut text = String::from("## How the numbers were made\n\n");
    text.push_str(&command_line(report, args, layout));
    text.push_str(&machine_line(report));
    let _ = writeln!(
        text,
        "- Run: started {}, took {:.0} s. The client, the demo upstream, ingress, \
         tunnel-agent and the baseline all ran on this machine and talked over 127.0.0.1.",
        readable_stamp(&report.started_at_utc),
        report.duration_s
    );
    text.push_str(&workload_line(report));
    text.push_str(
        "- Method: every path is measured with the same Rust client (hyper, HTTP/1.1, \
         TCP_NODELAY, pooled connections). A request counts from sending its head to \
         receiving its last body byte, every body is checked byte for byte, and percentiles \
         come from an HDR histogram.\n\nPaths:\n\n",
    );

    for path in &report.paths {
        let _ = writeln!(text, "- **{}** ({}): {}", path.label, path.role, path.url);
    }
    text.push('\n');
    text
}

fn command_line(report: &Report, args: &Args, layout: &Layout) -> String {
    // Paths inside the repository are shown relative to its root.
    let root = format!("{}/", layout.repo_root.display());
    let inner = report.command.replace(&root, "");
    match &args.command {
        Some(command) => format!(
            "- Command: `{command}`, which built the release binaries with \
             `scripts/compare-latency` and ran `{inner}`.\n"
        ),
        None => format!("- Command: `{inner}`.\n"),
    }
}

fn machine_line(report: &Report) -> String {
    let machine = &report.machine;
    let load = if machine.load_average.is_empty() {
        "load average not recorded".to_string()
    } else {
        format!(
            "load average {} (1, 5 and 15 minutes) when the run started",
            machine.load_average
        )
    };
    format!(
        "- Machine: {} CPUs (nproc), {}, {:.1} GiB of memory, Linux {}; {load}.\n",
        machine.cpus,
        non_empty(&machine.cpu_model, "CPU model unknown"),
        machine.memory_total_kib as f64 / (1024.0 * 1024.0),
        non_empty(&machine.kernel, "unknown"),
    )
}

fn workload_line(report: &Report) -> String {
    let plan = &report.plan;
    let sizes: Vec<String> = plan
        .payload_sizes
        .iter()
        .map(|bytes| format_bytes(*bytes))
        .collect();
    let levels: Vec<String> = plan
        .concurrency_levels
        .iter()
        .map(usize::to_string)
        .collect();
    let mut concurrent: Vec<String> = Vec::new();
    for cell in report
        .latency
        .iter()
        .filter(|cell| cell.stage == "concurrency")
    {
        if !concurrent.contains(&cell.request) {
            concurrent.push(cell.request.clone());
        }
    }
    let concurrent = concurrent.join(", ");
    let polls = match plan.baseline_pollers.max(1) {
        1 => "one poll".to_string(),
        pollers => format!("{pollers} polls"),
    };
    format!(
        "- Workload: GET and POST bodies of {} with one client, and {concurrent} with {} \
         concurrent clients. \
         Throughput: one {} transfer each way. Memory: {} through the tunnel, {} through the \
         baseline, and {} idle WebSockets. The baseline agent kept {polls} open at a time.\n",
        sizes.join(", "),
        levels.join(", "),
        format_bytes(plan.throughput_bytes),
        format_bytes(plan.memory_bytes),
        format_bytes(plan.baseline_memory_bytes),
        plan.idle_websockets,
    )
}

fn latency_section(report: &Report, layout: &Layout) -> String {
    let mut text = String::from("## Latency: before (baseline), after (tunnel) and direct\n\n");
    text.push_str(
        "First the p50 that each relay adds over direct access with one client, and the \
         p99 under concurrency, then the full tables. On loopback a network round trip costs \
         microseconds, which hides most of what long polling costs in a deployment; see \
         [What the numbers do not show yet](#what-the-numbers-do-not-show-yet).\n\n",
    );
    text.push_str(&markdown_table(&findings::added_latency_table(report)));
    text.push_str(&markdown_table(&findings::concurrency_p99_table(report)));
    text.push_str(&markdown_table(&tables::payload_table(report)));
    text.push_str(&chart(layout, "latency_by_size.png"));
    text.push_str(&markdown_table(&tables::concurrency_table(report)));
    text.push_str(&chart(layout, "latency_by_concurrency.png"));
    text
}

fn streaming_section(report: &Report) -> String {
    let mut text = String::from("## Streaming responses\n\n");
    text.push_str(&findings::streaming_summary(report));
    text.push_str(&markdown_table(&tables::drip_table(report)));
    text.push_str(&markdown_table(&tables::sse_table(report)));
    text.push_str("## WebSocket\n\n");
    text.push_str(&findings::websocket_summary(report));
    text.push_str(&markdown_table(&tables::websocket_table(report)));
    text
}

fn transcripts_section(report: &Report) -> String {
    let mut text = String::from("## Transcripts captured through the tunnel\n\n");
    text.push_str(
        "compare-latency captured both transcripts through the tunnel path during this run: \
         a WebSocket conversation with the demo upstream's echo endpoint, then a server-sent \
         event stream. They keep the payloads that the measurements above discard.\n\n",
    );
    match &report.websocket_transcript {
        Some(transcript) => {
            let sent = transcript
                .messages
                .iter()
                .filter(|message| {
                    message.direction == Direction::ClientToServer && message.kind == "text"
                })
                .count();
            let _ = write!(
                text,
                "The client sent {sent} text messages one at a time, pausing {} ms after each \
                 echo, then closed the WebSocket. Times are ms after the upgrade request went \
                 out. The URL shows the Host that selected the tunnel.\n\n",
                transcript.pause_ms
            );
            text.push_str(&markdown_table(&tables::websocket_transcript_table(
                transcript,
            )));
        }
        None => text.push_str("This run captured no WebSocket transcript.\n\n"),
    }
    match &report.sse_transcript {
        Some(transcript) => {
            let _ = write!(
                text,
                "The upstream emitted one event every {} ms, with its emission time in \
                 microseconds since the UNIX epoch as the data. Emitted and received times \
                 are ms after the request was sent, both on this machine's wall clock.\n\n",
                transcript.interval_ms
            );
            text.push_str(&markdown_table(&tables::sse_transcript_table(transcript)));
        }
        None => text.push_str("This run captured no SSE transcript.\n\n"),
    }
    text
}

fn throughput_section(report: &Report) -> String {
    if report.throughput.is_empty() {
        return String::new();
    }
    let mut text = String::from("## Throughput\n\n");
    text.push_str(
        "One large download and one large upload per path, one request at a time. With all \
         processes on the same CPUs, this measures CPU cost per byte as much as the design.\n\n",
    );
    text.push_str(&markdown_table(&tables::throughput_table(report)));
    text
}

fn chart(layout: &Layout, file: &str) -> String {
    let Some((_, caption)) = CHARTS.iter().find(|(name, _)| *name == file) else {
        return String::new();
    };
    if !layout.charts_dir.join(file).is_file() {
        return format!("(Chart {file} was not drawn in this run.)\n\n");
    }
    format!("![{caption}]({}{file})\n\n", layout.charts_prefix)
}

/// Renders a table under a level-3 heading, or a line saying it has no data.
fn markdown_table(table: &Table) -> String {
    if table.rows.is_empty() {
        return format!("### {}\n\nNo data in this run.\n\n", table.title);
    }
    let mut text = table.render_markdown();
    text.push('\n');
    text
}

fn display_path(path: &Path, root: &Path) -> String {
    let resolved = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    match resolved.strip_prefix(root) {
        Ok(relative) => relative.display().to_string(),
        Err(_) => resolved.display().to_string(),
    }
}

/// Formats a `YYYYMMDDTHHMMSSZ` stamp as `YYYY-MM-DD HH:MM:SS UTC`, or returns it unchanged.
fn readable_stamp(stamp: &str) -> String {
    let digits = stamp.len() == 16
        && stamp.is_ascii()
        && stamp[..8].bytes().all(|b| b.is_ascii_digit())
        && &stamp[8..9] == "T"
        && stamp[9..15].bytes().all(|b| b.is_ascii_digit())
        && stamp.ends_with('Z');
    if !digits {
        return stamp.to_string();
    }
    format!(
        "{}-{}-{} {}:{}:{} UTC",
        &stamp[..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    )
}

fn non_empty<'a>(value: &'a str, fallback: &'a str) -> &'a str {
    if value.is_empty() {
        fallback
    } else {
        value
    }
}

/// KiB as MiB with one decimal.
fn mib(kib: f64) -> String {
    format!("{:.1}", kib / KIB as f64)
}

#[cfg(test)]
mod tests {
    use super::{folder_prefix, readable_stamp};
    use std::path::Path;

    #[test]
    fn stamp_made_readable() {
        assert_eq!(
            readable_stamp("20261204T154047Z"),
            "2026-12-04 15:40:47 UTC"
        );
    }

    #[test]
    fn stamp_kept_when_malformed() {
        assert_eq!(readable_stamp("yesterday"), "yesterday");
    }

    #[test]
    fn folder_prefix_forms() {
        assert_eq!(folder_prefix(Path::new("")), "");
        assert_eq!(folder_prefix(Path::new("report-assets")), "report-assets/");
        assert_eq!(folder_prefix(Path::new("a/b")), "a/b/");
    }
}
