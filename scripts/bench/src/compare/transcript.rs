//! Short transcripts captured through the tunnel for the report: one WebSocket conversation
//! with every message in both directions, and one server-sent event stream with each event's
//! emission and arrival time. Unlike the measurements, they keep the payloads.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::client::{self, HttpClient};
use super::report::{
    Direction, Report, SseTranscript, TranscriptEvent, TranscriptMessage, WebSocketTranscript,
};
use super::streaming::{bounded, for_each_line};
use super::websocket::{self, Socket};
use super::{PathSpec, Progress, Role};
use crate::clock;

/// Text messages the client sends. The demo upstream echoes each one.
const WS_MESSAGES: u64 = 10;
/// Pause after each echo before the next message, so the transcript shows separate exchanges.
const WS_GAP: Duration = Duration::from_millis(50);
const SSE_EVENTS: u64 = 5;
const SSE_INTERVAL: Duration = Duration::from_millis(100);
/// Time each transcript may take, the upgrade or the request included.
const DEADLINE: Duration = Duration::from_secs(2);

/// Captures both transcripts on the tunnel path, or adds a note when the run has none.
pub(super) async fn stage(
    client: &HttpClient,
    paths: &[PathSpec],
    progress: Progress,
    report: &mut Report,
) {
    let Some(path) = paths
        .iter()
        .find(|path| matches!(path.role, Role::Tunnel | Role::Remote))
    else {
        report
            .notes
            .push("no tunnel path, so no transcripts were captured".into());
        return;
    };
    let url = path.target.display_url();
    progress.line(&format!(
        "transcripts through the tunnel ({url}): {WS_MESSAGES} WebSocket messages each way, {SSE_EVENTS} SSE events"
    ));

    let mut ws = WebSocketTranscript {
        path: path.target.label.clone(),
        url: url.clone(),
        started_unix_us: clock::unix_micros(),
        pause_ms: WS_GAP.as_millis() as u64,
        ..WebSocketTranscript::default()
    };
    let started = Instant::now();
    let outcome = tokio::time::timeout(DEADLINE, converse(path, started, &mut ws)).await;
    ws.error = deadline_error(outcome, "WebSocket transcript");
    progress.line(&format!(
        "  {}: WebSocket: {} messages recorded{}",
        ws.path,
        ws.messages.len(),
        error_suffix(ws.error.as_deref())
    ));
    report.websocket_transcript = Some(ws);

    let sse = sse_transcript(client, path, url).await;
    progress.line(&format!(
        "  {}: SSE: {} events recorded{}",
        sse.path,
        sse.events.len(),
        error_suffix(sse.error.as_deref())
    ));
    report.sse_transcript = Some(sse);
}

fn error_suffix(error: Option<&str>) -> String {
    error.map_or_else(String::new, |error| format!(" ({error})"))
}

fn deadline_error(
    outcome: Result<anyhow::Result<()>, tokio::time::error::Elapsed>,
    what: &str,
) -> Option<String> {
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(format!("{err:#}")),
        Err(_) => Some(format!(
            "{what} did not finish within {} s",
            DEADLINE.as_secs()
        )),
    }
}

/// Sends [`WS_MESSAGES`] text messages one at a time, records each echo, then closes the
/// WebSocket and records the close handshake.
async fn converse(
    path: &PathSpec,
    started: Instant,
    transcript: &mut WebSocketTranscript,
) -> anyhow::Result<()> {
    let mut socket = websocket::connect(&path.target).await?;
    transcript.upgrade_ms = Some(ms_since(started));
    for index in 1..=WS_MESSAGES {
        let payload = format!("message {index} of {WS_MESSAGES}");
        socket
            .send(Message::Text(payload.clone()))
            .await
            .context("WebSocket send failed")?;
        transcript.messages.push(TranscriptMessage {
            direction: Direction::ClientToServer,
            at_ms: ms_since(started),
            kind: "text".into(),
            payload,
        });
        let reply = next_message(&mut socket).await?;
        transcript.messages.push(received(reply, started));
        tokio::time::sleep(WS_GAP).await;
    }

    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "transcript done".into(),
    };
    transcript.messages.push(TranscriptMessage {
        direction: Direction::ClientToServer,
        at_ms: ms_since(started),
        kind: "close".into(),
        payload: close_text(Some(&close)),
    });
    socket
        .close(Some(close))
        .await
        .context("WebSocket close failed")?;
    // The peer replies with its own close frame, after which the stream ends.
    while let Some(message) = socket.next().await {
        let message = message.context("WebSocket read failed after close")?;
        if matches!(message, Message::Close(_)) {
            transcript.messages.push(received(message, started));
        }
    }
    Ok(())
}

/// Reads the next text, binary or close message, skipping pings and pongs.
async fn next_message(socket: &mut Socket) -> anyhow::Result<Message> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(message)) => return Ok(message),
            Some(Err(err)) => return Err(err).context("WebSocket read failed"),
            None => bail!("WebSocket closed before the echo"),
        }
    }
}

fn received(message: Message, started: Instant) -> TranscriptMessage {
    let at_ms = ms_since(started);
    let (kind, payload) = match message {
        Message::Text(text) => ("text", text),
        Message::Binary(data) => ("binary", format!("{} bytes", data.len())),
        Message::Close(frame) => ("close", close_text(frame.as_ref())),
        other => ("control", format!("{other:?}")),
    };
    TranscriptMessage {
        direction: Direction::ServerToClient,
        at_ms,
        kind: kind.into(),
        payload,
    }
}

fn close_text(frame: Option<&CloseFrame<'_>>) -> String {
    match frame {
        Some(frame) => format!("{} {}", u16::from(frame.code), frame.reason),
        None => "no status code".to_string(),
    }
}

/// Reads [`SSE_EVENTS`] events from `/sse` and records each one's data, emission time and
/// arrival time. Both times come from the wall clock, as the upstream's emission time does.
async fn sse_transcript(client: &HttpClient, path: &PathSpec, url: String) -> SseTranscript {
    let mut transcript = SseTranscript {
        path: path.target.label.clone(),
        url,
        started_unix_us: clock::unix_micros(),
        interval_ms: SSE_INTERVAL.as_millis() as u64,
        ..SseTranscript::default()
    };
    let started_unix_us = transcript.started_unix_us;
    let query = format!(
        "/sse?events={SSE_EVENTS}&interval_ms={}",
        SSE_INTERVAL.as_millis()
    );
    let mut current_id = String::new();
    let mut head_ms = None;
    let mut events = Vec::new();
    let read = async {
        let response = client.get(&path.target, &query, DEADLINE).await?;
        let response = client::expect_ok(response).await?;
        head_ms = Some(relative_ms(started_unix_us, clock::unix_micros()));
        for_each_line(response.into_body(), |line| {
            if let Some(id) = line.strip_prefix("id: ") {
                current_id = id.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                events.push(event(started_unix_us, &current_id, data));
            }
        })
        .await
    };
    if let Err(err) = bounded(DEADLINE, read).await {
        transcript.error = Some(format!("{err:#}"));
    }
    transcript.head_ms = head_ms;
    transcript.events = events;
    transcript
}

fn event(started_unix_us: u64, id: &str, data: &str) -> TranscriptEvent {
    let received_unix_us = clock::unix_micros();
    let emitted_unix_us = data.trim().parse::<u64>().ok();
    TranscriptEvent {
        id: id.to_string(),
        data: data.to_string(),
        emitted_unix_us,
        received_unix_us,
        emitted_ms: emitted_unix_us.map(|emitted| relative_ms(started_unix_us, emitted)),
        received_ms: relative_ms(started_unix_us, received_unix_us),
    }
}

/// Milliseconds from `start_us` to `at_us`, negative when `at_us` is earlier.
fn relative_ms(start_us: u64, at_us: u64) -> f64 {
    (at_us as f64 - start_us as f64) / 1000.0
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
