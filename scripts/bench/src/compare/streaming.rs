//! Streaming measurements: when each line of a slow chunked response arrives, and how long
//! each server-sent event takes from emission at the upstream to the client.

use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::client::{self, HttpClient, Target};
use super::latency::{new_histogram, percentiles, record};
use super::report::{DripResult, Report, SseEvent, SseResult};
use super::{PathSpec, Plan, Progress};
use crate::clock;

/// Time a streaming response may take beyond its nominal length.
const SLACK: Duration = Duration::from_secs(30);

/// Measures the drip and SSE endpoints on every path.
pub(super) async fn stage(
    client: &HttpClient,
    paths: &[PathSpec],
    plan: &Plan,
    progress: Progress,
    report: &mut Report,
) {
    progress.line(&format!(
        "streaming: {} drip lines and {} SSE events per path",
        plan.drip_lines, plan.sse_events
    ));
    for path in paths {
        let drip = drip(client, &path.target, plan.drip_lines, plan.drip_interval).await;
        progress.line(&drip_line(&drip));
        report.drip.push(drip);

        let sse = sse(client, &path.target, plan.sse_events, plan.sse_interval).await;
        progress.line(&sse_line(&sse));
        report.sse.push(sse);
    }
}

fn drip_line(drip: &DripResult) -> String {
    if let Some(error) = &drip.error {
        return format!("  {}: drip: {error}", drip.path);
    }
    let first = drip.line_arrival_ms.first().copied().unwrap_or(f64::NAN);
    let last = drip.line_arrival_ms.last().copied().unwrap_or(f64::NAN);
    format!(
        "  {}: drip: first line at {first:.1} ms, last at {last:.1} ms",
        drip.path
    )
}

fn sse_line(sse: &SseResult) -> String {
    match (&sse.error, &sse.delay) {
        (Some(error), _) => format!("  {}: sse: {error}", sse.path),
        (None, Some(delay)) => format!(
            "  {}: sse: delay p50 {:.3} ms, max {:.3} ms",
            sse.path, delay.p50_ms, delay.max_ms
        ),
        (None, None) => format!("  {}: sse: no event received", sse.path),
    }
}

/// Requests `/drip` and records when the head and each line arrive.
async fn drip(client: &HttpClient, target: &Target, lines: u64, interval: Duration) -> DripResult {
    let mut result = DripResult {
        path: target.label.clone(),
        lines,
        interval_ms: interval.as_millis() as u64,
        head_ms: None,
        line_arrival_ms: Vec::new(),
        error: None,
    };
    let nominal = interval.saturating_mul(u32::try_from(lines).unwrap_or(u32::MAX));
    let path = format!("/drip?lines={lines}&interval_ms={}", interval.as_millis());
    let started = Instant::now();
    let read = async {
        let response = client.get(target, &path, nominal + SLACK).await?;
        let response = client::expect_ok(response).await?;
        result.head_ms = Some(ms_since(started));
        for_each_line(response.into_body(), |_| {
            result.line_arrival_ms.push(ms_since(started));
        })
        .await
    };
    let outcome = bounded(nominal + SLACK, read).await;
    if let Err(err) = outcome {
        result.error = Some(format!("{err:#}"));
    }
    result
}

/// Requests `/sse` and records each event's emission and arrival times. The delay assumes
/// the upstream and this client read the same clock, which holds on one machine only.
async fn sse(client: &HttpClient, target: &Target, events: u64, interval: Duration) -> SseResult {
    let mut result = SseResult {
        path: target.label.clone(),
        events,
        interval_ms: interval.as_millis() as u64,
        delay: None,
        transcript: Vec::new(),
        error: None,
    };
    let nominal = interval.saturating_mul(u32::try_from(events).unwrap_or(u32::MAX));
    let path = format!("/sse?events={events}&interval_ms={}", interval.as_millis());
    let mut current_id = String::new();
    let read = async {
        let response = client.get(target, &path, nominal + SLACK).await?;
        let response = client::expect_ok(response).await?;
        for_each_line(response.into_body(), |line| {
            if let Some(id) = line.strip_prefix("id: ") {
                current_id = id.to_string();
            } else if let Some(emitted) = line.strip_prefix("data: ") {
                result.transcript.push(SseEvent {
                    id: current_id.clone(),
                    emitted_unix_us: emitted.trim().parse().unwrap_or(0),
                    received_unix_us: clock::unix_micros(),
                });
            }
        })
        .await
    };
    let outcome = bounded(nominal + SLACK, read).await;
    if let Err(err) = outcome {
        result.error = Some(format!("{err:#}"));
    }
    let mut histogram = new_histogram();
    for event in &result.transcript {
        let delay_us = event.received_unix_us.saturating_sub(event.emitted_unix_us);
        record(&mut histogram, Duration::from_micros(delay_us));
    }
    result.delay = percentiles(&histogram);
    result
}

/// Calls `on_line` for each complete line of the body as soon as its data arrives.
pub(super) async fn for_each_line(
    mut body: Incoming,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("response body failed")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            on_line(String::from_utf8_lossy(&line).trim_end());
        }
    }
    Ok(())
}

/// Runs `work`, failing when it takes longer than `limit`.
pub(super) async fn bounded(
    limit: Duration,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("stream did not end within {} s", limit.as_secs()),
    }
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
