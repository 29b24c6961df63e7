//! Upstream fixture server: a small HTTP/1.1 (and h2c) application with one route per
//! behaviour the tests check, plus a record of what it saw.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::BoxError;

type FixtureBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// What the fixture observed, for assertions.
#[derive(Debug, Default)]
pub struct Observed {
    /// Close codes received from WebSocket clients.
    pub ws_close_codes: Vec<u16>,
    /// Number of streamed responses whose body was dropped before its end.
    pub streams_dropped: usize,
    /// Number of requests per path.
    pub hits: HashMap<String, usize>,
}

/// A running fixture on a loopback port.
pub struct Fixture {
    pub addr: SocketAddr,
    pub observed: Arc<Mutex<Observed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fixture {
    /// Starts the fixture on an ephemeral loopback port.
    pub async fn start() -> Fixture {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binding a loopback port for the fixture")
    }

    /// Starts the fixture on `addr`.
    ///
    /// # Errors
    ///
    /// Returns an error when `addr` cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Fixture> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let observed = Arc::new(Mutex::new(Observed::default()));
        let shared = observed.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let observed = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| route(request, observed.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Fixture {
            addr,
            observed,
            task,
        })
    }

    /// Locks and returns what the fixture observed so far.
    pub fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().expect("fixture state lock")
    }
}

/// Deterministic body of `len` bytes used by `/bytes/N` and the upload tests.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

/// Text that `/gzip` serves compressed.
pub const GZIP_TEXT: &str = "compressible text that must reach the client still compressed\n";

/// Microseconds since the UNIX epoch; the fixture stamps drip lines and events with it.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn route(
    request: Request<Incoming>,
    observed: Arc<Mutex<Observed>>,
) -> Result<Response<FixtureBody>, Infallible> {
    let path = request.uri().path().to_string();
    if let Ok(mut observed) = observed.lock() {
        *observed.hits.entry(path.clone()).or_default() += 1;
    }
    let query = parse_query(request.uri().query().unwrap_or(""));
    let number = |key: &str, default: u64| {
        query
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };

    let response = match path.as_str() {
        "/small" => small(),
        "/echo-headers" => echo_headers(&request),
        "/upload" => upload(request).await,
        "/drip" => drip(number("lines", 5), number("interval_ms", 200), observed),
        "/sse" => sse(number("events", 5), number("interval_ms", 200), observed),
        "/gzip" => gzip(),
        "/trailers" => with_trailers(),
        "/trailers-only" => trailers_only(),
        "/die/length" => die(true),
        "/die/chunked" => die(false),
        "/slow-head" => {
            tokio::time::sleep(Duration::from_millis(number("ms", 3000))).await;
            small()
        }
        "/ws" => websocket(request, observed),
        _ => match path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
            Some(len) => bytes(len),
            None => match path.strip_prefix("/chunked/").and_then(|n| n.parse().ok()) {
                Some(len) => chunked(len),
                None => text(StatusCode::NOT_FOUND, "no such fixture route\n"),
            },
        },
    };
    Ok(response)
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn full(bytes: impl Into<Bytes>) -> FixtureBody {
    Full::new(bytes.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

fn text(status: StatusCode, body: &'static str) -> Response<FixtureBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
}

fn small() -> Response<FixtureBody> {
    let mut response = Response::new(full("hello, world\n"));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.append("x-fixture", HeaderValue::from_static("one"));
    headers.append("x-fixture", HeaderValue::from_static("two"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
    response
}

fn bytes(len: usize) -> Response<FixtureBody> {
    let mut response = Response::new(full(pattern(len)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn chunked(len: usize) -> Response<FixtureBody> {
    let data = pattern(len);
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = data
        .chunks(4096)
        .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    Response::new(BodyExt::boxed(body))
}

/// Lists the request's fields as `name: value` lines; the `x-request-version` response field
/// gives the HTTP version the request came in.
fn echo_headers(request: &Request<Incoming>) -> Response<FixtureBody> {
    let mut lines = String::new();
    for (name, value) in request.headers() {
        lines.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    let mut response = Response::new(full(lines));
    if let Ok(version) = HeaderValue::from_str(&format!("{:?}", request.version())) {
        response.headers_mut().insert("x-request-version", version);
    }
    response
}

async fn upload(request: Request<Incoming>) -> Response<FixtureBody> {
    let mut body = request.into_body();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    received += data.len() as u64;
                    hasher.update(&data);
                }
                Err(frame) => {
                    if let Ok(fields) = frame.into_trailers() {
                        for (name, value) in &fields {
                            let value = String::from_utf8_lossy(value.as_bytes());
                            trailers.push(format!("{name}={value}"));
                        }
                    }
                }
            },
            Err(_) => return text(StatusCode::BAD_REQUEST, "request body failed\n"),
        }
    }
    let digest = hex::encode(hasher.finalize());
    let mut response = Response::new(full(digest));
    response.headers_mut().insert(
        "x-received-bytes",
        HeaderValue::from_str(&received.to_string()).expect("a number is a valid header"),
    );
    if let Ok(value) = HeaderValue::from_str(&trailers.join("; ")) {
        if !trailers.is_empty() {
            response.headers_mut().insert("x-received-trailers", value);
        }
    }
    response
}

/// Streams `count` items from `produce`, one every `interval`, and records a drop of the
/// body before the end.
fn timed_stream(
    count: u64,
    interval: Duration,
    observed: Arc<Mutex<Observed>>,
    produce: fn(u64) -> String,
) -> FixtureBody {
    let (sender, receiver) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tokio::spawn(async move {
        for index in 0..count {
            if index > 0 {
                tokio::time::sleep(interval).await;
            }
            let item = Frame::data(Bytes::from(produce(index)));
            if sender.send(Ok(item)).await.is_err() {
                if let Ok(mut observed) = observed.lock() {
                    observed.streams_dropped += 1;
                }
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

fn drip(lines: u64, interval_ms: u64, observed: Arc<Mutex<Observed>>) -> Response<FixtureBody> {
    let body = timed_stream(
        lines,
        Duration::from_millis(interval_ms),
        observed,
        |index| format!("line {index} {}\n", now_micros()),
    );
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn sse(events: u64, interval_ms: u64, observed: Arc<Mutex<Observed>>) -> Response<FixtureBody> {
    let body = timed_stream(
        events,
        Duration::from_millis(interval_ms),
        observed,
        |index| format!("id: {index}\ndata: {}\n\n", now_micros()),
    );
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Builds a response whose body is followed by gRPC-style trailers, as a gRPC server ends a call.
fn with_trailers() -> Response<FixtureBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("5"));
    trailers.insert("grpc-message", HeaderValue::from_static("not%20found"));
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x00"))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Builds a gRPC "trailers-only" error: status in the headers, no body at all, so an HTTP/2
/// server ends the stream with the HEADERS frame.
fn trailers_only() -> Response<FixtureBody> {
    let mut response = Response::new(full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("5"));
    headers.insert(
        "grpc-message",
        HeaderValue::from_static("thing%20not%20found"),
    );
    response
}

/// Gzip-compressed [`GZIP_TEXT`], the same bytes on every call.
pub fn gzip_bytes() -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(GZIP_TEXT.repeat(50).as_bytes())
        .expect("writing to a Vec");
    encoder.finish().expect("finishing gzip into a Vec")
}

fn gzip() -> Response<FixtureBody> {
    let mut response = Response::new(full(gzip_bytes()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Starts a 1 MiB response, sends 64 KiB, waits long enough for them to be written, then fails
/// the body so hyper drops the connection.
fn die(with_length: bool) -> Response<FixtureBody> {
    let (sender, receiver) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tokio::spawn(async move {
        let _ = sender
            .send(Ok(Frame::data(Bytes::from(pattern(64 * 1024)))))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = sender.send(Err("fixture upstream died".into())).await;
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if with_length {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1048576"));
    }
    response
}

/// WebSocket echo. Picks the last subprotocol the client offers. The text message `burst`
/// makes it send 100 text and 100 binary messages of its own; `close:CODE` makes it close with
/// that code.
fn websocket(
    mut request: Request<Incoming>,
    observed: Arc<Mutex<Observed>>,
) -> Response<FixtureBody> {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket request\n");
    };
    let protocol = request
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).next_back().map(str::to_string));
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        serve_websocket(socket, observed).await;
    });

    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("accept key is base64"),
    );
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        headers.insert("sec-websocket-protocol", protocol);
    }
    response
}

async fn serve_websocket<S>(mut socket: WebSocketStream<S>, observed: Arc<Mutex<Observed>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Text(text) if text == "burst" => {
                for i in 0..100 {
                    let _ = socket.feed(Message::Text(format!("server text {i}"))).await;
                    let _ = socket.feed(Message::Binary(vec![i as u8; 1 + i])).await;
                }
                let _ = socket.flush().await;
            }
            Message::Text(text) if text.starts_with("close:") => {
                let code = text[6..].parse().unwrap_or(1000);
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "fixture closing".into(),
                };
                let _ = socket.close(Some(frame)).await;
            }
            Message::Close(frame) => {
                if let (Some(frame), Ok(mut observed)) = (frame, observed.lock()) {
                    observed.ws_close_codes.push(frame.code.into());
                }
            }
            Message::Text(_) | Message::Binary(_) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
