//! WebSocket measurements: echo round trips of small and 64 KiB messages, and the echo rate
//! of a burst, on one connection per path.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, HOST};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::client::Target;
use super::latency::{new_histogram, percentiles, record};
use super::report::{Report, WebSocketExchange, WebSocketResult};
use super::{PathSpec, Plan, Progress};
use crate::clock;

/// Client side of one WebSocket.
pub(super) type Socket = WebSocketStream<TcpStream>;

/// Time allowed for the TCP connection and the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Round trips kept with timestamps in the transcript.
const TRANSCRIPT_LEN: usize = 10;

/// Measures every path.
pub(super) async fn stage(
    paths: &[PathSpec],
    plan: &Plan,
    progress: Progress,
    report: &mut Report,
) {
    progress.line("WebSocket round trips and message rate");
    for path in paths {
        let result = measure(&path.target, plan).await;
        let summary = match (&result.error, &result.small, &result.large) {
            (Some(error), _, _) => error.clone(),
            (None, Some(small), Some(large)) => format!(
                "small p50 {:.3} ms, 64 KiB p50 {:.3} ms, {:.0} msg/s",
                small.p50_ms,
                large.p50_ms,
                result.messages_per_s.unwrap_or(0.0)
            ),
            _ => "incomplete".to_string(),
        };
        progress.line(&format!("  {}: {summary}", result.path));
        report.websocket.push(result);
    }
}

/// Connects to `/ws` on the target; the upgrade carries the tunnel Host where there is one.
///
/// # Errors
///
/// Returns an error when the TCP connection or the upgrade fails or times out.
pub(super) async fn connect(target: &Target) -> anyhow::Result<Socket> {
    let handshake = async {
        let stream = TcpStream::connect(&target.authority)
            .await
            .with_context(|| format!("failed to connect to {}", target.authority))?;
        stream
            .set_nodelay(true)
            .context("failed to set TCP_NODELAY")?;
        let url = format!("ws://{}{}/ws", target.authority, target.prefix);
        let mut request = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("invalid WebSocket URL {url}"))?;
        if let Some(host) = &target.host {
            let host = HeaderValue::from_str(host).context("invalid Host")?;
            request.headers_mut().insert(HOST, host);
        }
        let (socket, _response) = tokio_tungstenite::client_async(request, stream)
            .await
            .context("WebSocket upgrade failed")?;
        anyhow::Ok(socket)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(result) => result,
        Err(_) => bail!(
            "WebSocket upgrade timed out after {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

async fn measure(target: &Target, plan: &Plan) -> WebSocketResult {
    let mut result = WebSocketResult {
        path: target.label.clone(),
        small_bytes: plan.ws_small_bytes,
        large_bytes: plan.ws_large_bytes,
        ..WebSocketResult::default()
    };
    if let Err(err) = measure_into(target, plan, &mut result).await {
        result.error = Some(format!("{err:#}"));
    }
    result
}

async fn measure_into(
    target: &Target,
    plan: &Plan,
    result: &mut WebSocketResult,
) -> anyhow::Result<()> {
    let mut socket = connect(target).await?;
    let small = Payload::text(plan.ws_small_bytes);
    let large = Payload::binary(plan.ws_large_bytes);
    let limits = (plan.ws_small_count, plan.ws_deadline);
    result.small = Some(round_trips(&mut socket, &small, limits, &mut result.transcript).await?);
    let limits = (plan.ws_large_count, plan.ws_deadline);
    result.large = Some(round_trips(&mut socket, &large, limits, &mut Vec::new()).await?);
    result.messages_per_s =
        Some(burst(socket, &small, plan.ws_burst_count, plan.ws_deadline).await?);
    Ok(())
}

/// A message to echo, of a fixed kind and size.
struct Payload {
    binary: bool,
    bytes: Vec<u8>,
}

impl Payload {
    fn text(len: usize) -> Self {
        Self {
            binary: false,
            bytes: vec![b'x'; len],
        }
    }

    fn binary(len: usize) -> Self {
        let bytes = crate::pattern::chunks(len as u64)
            .flat_map(|chunk| chunk.to_vec())
            .collect();
        Self {
            binary: true,
            bytes,
        }
    }

    fn message(&self) -> Message {
        if self.binary {
            Message::Binary(self.bytes.clone())
        } else {
            Message::Text(String::from_utf8_lossy(&self.bytes).into_owned())
        }
    }

    fn matches(&self, message: &Message) -> bool {
        match message {
            Message::Binary(data) => self.binary && *data == self.bytes,
            Message::Text(text) => !self.binary && text.as_bytes() == self.bytes,
            _ => false,
        }
    }
}

/// Sends one message at a time and waits for its echo, `count` times or until the deadline.
async fn round_trips(
    socket: &mut Socket,
    payload: &Payload,
    (count, deadline): (u64, Duration),
    transcript: &mut Vec<WebSocketExchange>,
) -> anyhow::Result<super::report::Percentiles> {
    let mut histogram = new_histogram();
    let stop_at = Instant::now() + deadline;
    for _ in 0..count {
        if Instant::now() >= stop_at {
            break;
        }
        let sent_unix_us = clock::unix_micros();
        let sent = Instant::now();
        socket
            .send(payload.message())
            .await
            .context("WebSocket send failed")?;
        let echo = tokio::time::timeout_at(stop_at.into(), next_data(socket))
            .await
            .context("no echo before the deadline")??;
        if !payload.matches(&echo) {
            bail!("echo differs from the message sent");
        }
        record(&mut histogram, sent.elapsed());
        if transcript.len() < TRANSCRIPT_LEN {
            transcript.push(WebSocketExchange {
                bytes: payload.bytes.len(),
                sent_unix_us,
                received_unix_us: clock::unix_micros(),
            });
        }
    }
    percentiles(&histogram).context("no round trip completed")
}

/// Sends `count` messages without waiting and reads the echoes concurrently; returns echoes
/// received per second.
async fn burst(
    socket: Socket,
    payload: &Payload,
    count: u64,
    deadline: Duration,
) -> anyhow::Result<f64> {
    let (mut sink, mut stream) = socket.split();
    let started = Instant::now();
    let send_all = async {
        for _ in 0..count {
            sink.feed(payload.message()).await?;
        }
        sink.flush().await?;
        anyhow::Ok(())
    };
    let receive_all = async {
        let mut received = 0u64;
        while received < count {
            match stream.next().await {
                Some(Ok(message)) if payload.matches(&message) => received += 1,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => bail!("unexpected message during burst: {other:?}"),
                Some(Err(err)) => return Err(err).context("WebSocket read failed"),
                None => bail!("WebSocket closed after {received} of {count} echoes"),
            }
        }
        anyhow::Ok(received)
    };
    let received = tokio::time::timeout(deadline, async {
        let ((), received) = tokio::try_join!(send_all, receive_all)?;
        anyhow::Ok(received)
    })
    .await
    .with_context(|| {
        format!(
            "burst of {count} messages did not finish within {} s",
            deadline.as_secs()
        )
    })??;
    let rate = received as f64 / started.elapsed().as_secs_f64();
    if let Ok(mut socket) = sink.reunite(stream) {
        let _ = socket.close(None).await;
    }
    Ok(rate)
}

/// Reads the next text or binary message, skipping control frames.
async fn next_data(socket: &mut Socket) -> anyhow::Result<Message> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => bail!("WebSocket closed by the peer: {frame:?}"),
            Some(Ok(message)) => return Ok(message),
            Some(Err(err)) => return Err(err).context("WebSocket read failed"),
            None => bail!("WebSocket closed"),
        }
    }
}
