//! Demo upstream: the HTTP/1.1 service that every measured path leads to. Each endpoint
//! exercises one behaviour of a proxy: small and large bodies, streamed uploads, slow chunked
//! responses, server-sent events and WebSocket echo.

mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};

use crate::pattern::{self, Checker};
use crate::{clock, empty_body, full_body, serve, Body};

/// Largest `n` that `/bytes` serves: 64 GiB.
const MAX_BYTES: u64 = 64 << 30;
/// Maximum duration of a `/drip` or `/sse` response.
const MAX_STREAM_DURATION: Duration = Duration::from_secs(600);

/// HTTP/1.1 demo service for latency comparisons. Endpoints: GET /ping (empty 200),
/// GET /bytes?n=N (N pattern bytes), POST /upload (counts and checks the body),
/// GET /drip?lines=N&interval_ms=M (one chunked line per interval),
/// GET /sse?events=N&interval_ms=M (text/event-stream, each event's data is its emit time in
/// microseconds since the UNIX epoch), GET /ws (WebSocket echo of text and binary messages).
#[derive(Debug, Parser)]
#[command(name = "demo-upstream", version)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout
    /// as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
}

/// Serves the demo endpoints until SIGINT or SIGTERM.
///
/// # Errors
///
/// Returns an error when the listen address cannot be bound.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = serve::bind_and_announce(args.listen).await?;
    serve::serve_http1(listener, handle, serve::shutdown_signal()).await;
    Ok(())
}

async fn handle(request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.as_str()) {
        (Method::GET, "/ping") => Response::new(empty_body()),
        (Method::GET, "/bytes") => bytes(&request),
        (Method::POST, "/upload") => upload(request).await,
        (Method::GET, "/drip") => drip(&request),
        (Method::GET, "/sse") => sse(&request),
        (Method::GET, "/ws") => websocket::accept(request),
        _ => text(StatusCode::NOT_FOUND, format!("no endpoint {path}\n")),
    }
}

fn bytes(request: &Request<Incoming>) -> Response<Body> {
    let total = match query_u64(request, "n", 0, MAX_BYTES) {
        Ok(total) => total,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let frames = futures_util::stream::iter(pattern::chunks(total))
        .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(total));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Reads the body frame by frame, so memory stays flat whatever its size, and returns
/// `bytes=N pattern=ok` or `bytes=N pattern=mismatch offset=M`.
async fn upload(request: Request<Incoming>) -> Response<Body> {
    let mut body = request.into_body();
    let mut checker = Checker::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    checker.update(data);
                }
            }
            Err(err) => {
                tracing::debug!(%err, received = checker.received(), "upload aborted");
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("failed to read body: {err}\n"),
                );
            }
        }
    }
    let verdict = match checker.first_mismatch() {
        None => "pattern=ok".to_string(),
        Some(offset) => format!("pattern=mismatch offset={offset}"),
    };
    text(
        StatusCode::OK,
        format!("bytes={} {verdict}\n", checker.received()),
    )
}

fn drip(request: &Request<Incoming>) -> Response<Body> {
    let (count, interval) = match stream_params(request, "lines") {
        Ok(params) => params,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let body = timed_frames(count, interval, |index, emitted_us| {
        format!("line {index} emitted_us={emitted_us}\n")
    });
    with_content_type(Response::new(body), "text/plain; charset=utf-8")
}

fn sse(request: &Request<Incoming>) -> Response<Body> {
    let (count, interval) = match stream_params(request, "events") {
        Ok(params) => params,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let body = timed_frames(count, interval, |index, emitted_us| {
        format!("id: {index}\ndata: {emitted_us}\n\n")
    });
    let mut response = with_content_type(Response::new(body), "text/event-stream");
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// Builds a body that yields frame `i` at `i * interval` after the call, the first one at
/// once. hyper writes each frame as a chunk when it is yielded; nothing is held back.
fn timed_frames(count: u64, interval: Duration, render: fn(u64, u64) -> String) -> Body {
    let start = tokio::time::Instant::now();
    let frames = futures_util::stream::unfold(0u64, move |index| async move {
        if index >= count {
            return None;
        }
        let due = start + interval.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
        // tokio's timer has 1 ms granularity, so even a deadline already passed would wait
        // for the next tick. Skipping the timer then sends the first frame at once.
        if tokio::time::Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        let line = render(index, clock::unix_micros());
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
            index + 1,
        ))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// Reads the count parameter `name` and `interval_ms` and checks that the whole stream ends
/// within [`MAX_STREAM_DURATION`]; the error is the message for a 400 response.
fn stream_params(request: &Request<Incoming>, name: &str) -> Result<(u64, Duration), String> {
    let count = query_u64(request, name, 1, 100_000)?;
    let interval_ms = query_u64(request, "interval_ms", 0, 60_000)?;
    let interval = Duration::from_millis(interval_ms);
    let total = interval.saturating_mul(u32::try_from(count).unwrap_or(u32::MAX));
    if total > MAX_STREAM_DURATION {
        return Err(format!(
            "{name} × interval_ms must stay under {} s\n",
            MAX_STREAM_DURATION.as_secs()
        ));
    }
    Ok((count, interval))
}

/// Reads the query parameter `name` as an integer in `min..=max`; the error is the message
/// for a 400 response.
fn query_u64(request: &Request<Incoming>, name: &str, min: u64, max: u64) -> Result<u64, String> {
    let query = request.uri().query().unwrap_or("");
    let Some(raw) = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
    else {
        return Err(format!("missing query parameter {name}\n"));
    };
    match raw.parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(format!(
            "invalid {name}={raw:?}: expected an integer from {min} to {max}\n"
        )),
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = with_content_type(
        Response::new(full_body(message)),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = status;
    response
}

fn with_content_type(mut response: Response<Body>, value: &'static str) -> Response<Body> {
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(value),
    );
    response
}
