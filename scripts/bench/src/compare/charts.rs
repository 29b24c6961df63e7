//! PNG charts of a run, drawn with plotters' bitmap backend: latency by payload size, latency
//! by concurrency and memory over time. Text is rendered with ab_glyph from a DejaVu Sans file
//! read at run time (Debian package fonts-dejavu-core), so no font library is linked.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::format_bytes;
use super::report::{LatencyCell, MemoryCase, Report};

/// Font files tried in order; the first is where Debian and Ubuntu install DejaVu Sans.
const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1400, 600);

/// Line colours, assigned to paths and processes in order.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
/// One path's line in a latency panel: its label and (category index, p50 ms, p99 ms).
type LatencySeries = (String, Vec<(usize, f64, f64)>);

/// Draws every chart that has data and returns the files written.
///
/// # Errors
///
/// Returns an error when no font file is found or a chart cannot be drawn or saved.
pub(super) fn draw_all(dir: &Path, report: &Report) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    let path = dir.join("latency_by_size.png");
    latency_by_size(&path, report)?;
    written.push(path);
    let path = dir.join("latency_by_concurrency.png");
    if latency_by_concurrency(&path, report)? {
        written.push(path);
    }
    let path = dir.join("memory.png");
    if !report.memory.is_empty() {
        memory(&path, report)?;
        written.push(path);
    }
    Ok(written)
}

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = REGISTERED.get_or_init(|| {
        let Some(bytes) = FONT_CANDIDATES
            .iter()
            .find_map(|path| std::fs::read(path).ok())
        else {
            return Err(format!(
                "no DejaVu Sans font found (tried {}); install fonts-dejavu-core",
                FONT_CANDIDATES.join(", ")
            ));
        };
        // plotters keeps a 'static reference to the font; it is loaded once per process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| "the DejaVu Sans file is not a valid font".to_string())
    });
    outcome.clone().map_err(|message| anyhow!(message))
}

fn color(index: usize) -> RGBColor {
    COLORS[index % COLORS.len()]
}

fn paths(report: &Report) -> Vec<String> {
    report.paths.iter().map(|path| path.label.clone()).collect()
}

fn plot_error<E: std::fmt::Display>(err: E) -> anyhow::Error {
    anyhow!("failed to draw chart: {err}")
}

/// p50 (solid) and p99 (dashed) by payload size, GET on the left and POST on the right.
fn latency_by_size(path: &Path, report: &Report) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 2));
    let sizes = &report.plan.payload_sizes;
    for (panel, method) in panels.iter().zip(["GET", "POST"]) {
        let series = paths(report)
            .into_iter()
            .map(|label| {
                let points: Vec<(usize, f64, f64)> = sizes
                    .iter()
                    .enumerate()
                    .filter_map(|(index, bytes)| {
                        let cell = find_cell(report, "payload", &label, method, *bytes, 1)?;
                        cell.stats.map(|stats| (index, stats.p50_ms, stats.p99_ms))
                    })
                    .collect();
                (label, points)
            })
            .collect();
        let labels: Vec<String> = sizes.iter().map(|bytes| format_bytes(*bytes)).collect();
        let caption = format!("{method} latency by body size, 1 client");
        category_panel(panel, &caption, "body size", &labels, series)?;
    }
    root.present()
        .with_context(|| format!("failed to write {}", path.display()))
}

/// p50 (solid) and p99 (dashed) by concurrency for each concurrency workload; returns false
/// when the run has no concurrency data.
fn latency_by_concurrency(path: &Path, report: &Report) -> anyhow::Result<bool> {
    let levels = &report.plan.concurrency_levels;
    let mut workloads: Vec<(String, u64)> = Vec::new();
    for cell in report
        .latency
        .iter()
        .filter(|cell| cell.stage == "concurrency")
    {
        let key = (cell.method.clone(), cell.bytes);
        if !workloads.contains(&key) {
            workloads.push(key);
        }
    }
    if workloads.is_empty() {
        return Ok(false);
    }

    // Two panels per row, one row of SIZE per pair of workloads.
    let rows = workloads.len().div_ceil(2);
    let columns = workloads.len().min(2);
    let height = SIZE.1 * u32::try_from(rows).unwrap_or(1);
    let root = BitMapBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((rows, columns));
    for (panel, (method, bytes)) in panels.iter().zip(&workloads) {
        let series = paths(report)
            .into_iter()
            .map(|label| {
                let points = levels
                    .iter()
                    .enumerate()
                    .filter_map(|(index, clients)| {
                        let cell =
                            find_cell(report, "concurrency", &label, method, *bytes, *clients)?;
                        cell.stats.map(|stats| (index, stats.p50_ms, stats.p99_ms))
                    })
                    .collect();
                (label, points)
            })
            .collect();
        let labels: Vec<String> = levels.iter().map(|clients| clients.to_string()).collect();
        let caption = format!("{method} {} latency by concurrency", format_bytes(*bytes));
        category_panel(panel, &caption, "concurrent clients", &labels, series)?;
    }

    root.present()
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(true)
}

fn find_cell<'a>(
    report: &'a Report,
    stage: &str,
    path: &str,
    method: &str,
    bytes: u64,
    clients: usize,
) -> Option<&'a LatencyCell> {
    report.latency.iter().find(|cell| {
        cell.stage == stage
            && cell.path == path
            && cell.method == method
            && cell.bytes == bytes
            && cell.clients == clients
    })
}

/// Draws one panel with categories on x and a log latency axis, one line pair per path.
fn category_panel(
    area: &Area<'_>,
    caption: &str,
    x_description: &str,
    categories: &[String],
    series: Vec<LatencySeries>,
) -> anyhow::Result<()> {
    let Some(y_range) = latency_range(&series) else {
        bail!("no latency data for {caption:?}");
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 26))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        // A segmented range includes its end, so the last index is len - 1.
        .build_cartesian_2d(
            (0..categories.len().saturating_sub(1)).into_segmented(),
            y_range.log_scale(),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_description)
        .y_desc("latency, ms (log scale); solid p50, dashed p99")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .x_label_formatter(&|value| match value {
            SegmentValue::CenterOf(index) => categories.get(*index).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|value| super::tables::ms(*value))
        .draw()
        .map_err(plot_error)?;
    for (index, (label, points)) in series.into_iter().enumerate() {
        let color = color(index);
        let (p50, p99): (Vec<_>, Vec<_>) = points
            .iter()
            .map(|point| {
                let x = SegmentValue::CenterOf(point.0);
                ((x.clone(), point.1), (x, point.2))
            })
            .unzip();
        chart
            .draw_series(LineSeries::new(p50.clone(), color.stroke_width(3)))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                p50.into_iter()
                    .map(|point| Circle::new(point, 4, color.filled())),
            )
            .map_err(plot_error)?;
        chart
            .draw_series(DashedLineSeries::new(p99, 8, 5, color.stroke_width(2)))
            .map_err(plot_error)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// Returns a log-axis range around every p50 and p99 in `series`, or `None` when it is empty.
fn latency_range(series: &[LatencySeries]) -> Option<std::ops::Range<f64>> {
    let values = series
        .iter()
        .flat_map(|(_, points)| points.iter().flat_map(|point| [point.1, point.2]));
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(low, high), value| {
        (low.min(value), high.max(value))
    });
    (low <= high).then(|| (low / 2.0).max(0.001)..high * 2.0)
}

/// VmRSS over time: the large transfers on the left, the idle WebSockets on the right.
fn memory(path: &Path, report: &Report) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 2));
    let transfer: Vec<&MemoryCase> = report
        .memory
        .iter()
        .filter(|case| case.case == "transfer")
        .collect();
    let idle: Vec<&MemoryCase> = report
        .memory
        .iter()
        .filter(|case| case.case == "idle-websockets" && case.websockets_open > 0)
        .collect();
    let sizes: Vec<String> = transfer
        .iter()
        .map(|case| format!("{} {}", case.path, format_bytes(case.bytes)))
        .collect();
    let transfer_caption = format!("RSS during download + upload ({})", sizes.join(", "));
    memory_panel(&panels[0], &transfer_caption, &transfer)?;
    let idle_caption = match idle.first() {
        Some(case) => format!("RSS while opening {} idle WebSockets", case.websockets_open),
        None => "RSS with idle WebSockets".to_string(),
    };
    memory_panel(&panels[1], &idle_caption, &idle)?;
    root.present()
        .with_context(|| format!("failed to write {}", path.display()))
}

fn memory_panel(area: &Area<'_>, caption: &str, cases: &[&MemoryCase]) -> anyhow::Result<()> {
    let lines: Vec<(String, &[(f64, u64)])> = cases
        .iter()
        .flat_map(|case| {
            case.processes.iter().map(|process| {
                let label = format!("{} / {}", case.path, process.name);
                (label, process.samples.as_slice())
            })
        })
        .filter(|(_, samples)| !samples.is_empty())
        .collect();
    let samples = lines.iter().flat_map(|(_, samples)| samples.iter());
    let (max_t, max_kib) = samples.fold((0.0f64, 0u64), |(t, kib), sample| {
        (t.max(sample.0), kib.max(sample.1))
    });
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            0.0..max_t.max(0.1) * 1.05,
            0.0..(max_kib as f64 / 1024.0).max(1.0) * 1.1,
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the case started")
        .y_desc("VmRSS, MiB")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(plot_error)?;
    for (index, (label, samples)) in lines.into_iter().enumerate() {
        let color = color(index);
        let points = samples
            .iter()
            .map(|sample| (sample.0, sample.1 as f64 / 1024.0));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}
