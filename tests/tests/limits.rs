//! Request limits and malformed requests on the public listener, sent over raw sockets. Each
//! gets its status (400, 408, 431, 501, 503) or a closed connection, never a hang, and none of
//! them reaches the upstream. Also the idle timeout, HTTP/1.1 and HTTP/2.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_tests::Tunnel;

/// Sends `request` on a new connection and returns everything the ingress wrote until it
/// closed the connection or 5 s passed.
async fn exchange(tunnel: &Tunnel, request: &[u8]) -> String {
    let mut socket = connect_and_send(tunnel, request).await;
    read_for(&mut socket, Duration::from_secs(5)).await
}

/// Opens a new connection to the ingress and writes `bytes` on it.
async fn connect_and_send(tunnel: &Tunnel, bytes: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    socket.write_all(bytes).await.expect("write request bytes");
    socket
}

async fn read_for(socket: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, socket.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).to_string()
}

type Http2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// Opens a prior-knowledge HTTP/2 connection to the ingress; the caller drives the connection.
async fn http2_connection(
    tunnel: &Tunnel,
) -> (
    Http2Sender,
    impl std::future::Future<Output = hyper::Result<()>> + Send + 'static,
) {
    let tcp = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake")
}

fn upstream_hits(tunnel: &Tunnel) -> usize {
    tunnel.fixture.observed().hits.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_rejected() {
    let tunnel = Tunnel::start().await;
    let many_headers: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "differing Content-Length",
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            "obsolete line folding",
            b"GET /small HTTP/1.1\r\nHost: app.localhost\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            "too many header fields",
            format!("GET /small HTTP/1.1\r\nHost: app.localhost\r\n{many_headers}\r\n").into_bytes(),
            "HTTP/1.1 431 ",
        ),
        (
            "header over the size limit",
            format!("GET /small HTTP/1.1\r\nHost: app.localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000)).into_bytes(),
            "HTTP/1.1 431 ",
        ),
        (
            "Content-Length before Transfer-Encoding",
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            "Transfer-Encoding before Content-Length",
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            "Transfer-Encoding other than chunked last",
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            "a coding before chunked",
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.1 501 ",
        ),
        (
            "chunked twice",
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.1 501 ",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST /upload HTTP/1.0\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        ("missing Host", b"GET /small HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (
            "CONNECT",
            b"CONNECT app.localhost:443 HTTP/1.1\r\nHost: app.localhost:443\r\n\r\n".to_vec(),
            "HTTP/1.1 405 ",
        ),
        (
            "two Host fields",
            b"GET /small HTTP/1.1\r\nHost: app.localhost\r\nHost: other.localhost\r\n\r\nGET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        ("invalid method", b"G\x01T /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
    ];
    for (case, request, expected) in cases {
        let started = Instant::now();
        let response = exchange(&tunnel, &request).await;
        assert!(response.starts_with(expected), "{case}: {response:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{case} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        upstream_hits(&tunnel),
        0,
        "a malformed request reached the upstream"
    );
}

/// The smuggling pattern: a front that trusts `Content-Length` and a back that trusts the
/// chunks would disagree about where the request ends, and the second request hidden in its
/// body would reach the upstream on its own. The ingress rejects the rest of the connection:
/// the request in front gets its response, the ambiguous one gets 400, the connection closes, and
/// only the request in front reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_request_rejected() {
    let tunnel = Tunnel::start().await;
    let hidden = "GET /echo-headers HTTP/1.1\r\nHost: app.localhost\r\nX-Hidden: yes\r\n\r\n";
    let pipeline = format!(
        "GET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n\
         POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
    );
    let started = Instant::now();
    let response = exchange(&tunnel, pipeline.as_bytes()).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the connection was not closed after the 400: {:?}",
        started.elapsed()
    );
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &response[at..at + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 400"], "{response}");
    assert!(
        response.contains("x-ingress-error: length-and-chunked"),
        "{response}"
    );
    assert!(!response.contains("x-hidden"), "{response}");
    let observed = tunnel.fixture.observed();
    assert_eq!(observed.hits.get("/small"), Some(&1), "{:?}", observed.hits);
    assert_eq!(
        observed.hits.values().sum::<usize>(),
        1,
        "{:?}",
        observed.hits
    );
}

/// Chunked and sized bodies with extensions and trailers, pipelined on one connection, all
/// reach the upstream whole: the framing check finds each head where hyper does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_bodies_pass_the_check() {
    let tunnel = Tunnel::start().await;
    let pipeline =
        b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
        3;name=value\r\nabc\r\n2 \r\nde\r\n0\r\nX-Trailer: t\r\n\r\n\
        POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\n\r\nwxyz\
        GET /small HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n";
    let response = exchange(&tunnel, pipeline).await;
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &response[at..at + 12])
        .collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 200", "HTTP/1.1 200", "HTTP/1.1 200"],
        "{response}"
    );
    let observed = tunnel.fixture.observed();
    assert_eq!(
        observed.hits.get("/upload"),
        Some(&2),
        "{:?}",
        observed.hits
    );
    assert_eq!(observed.hits.get("/small"), Some(&1), "{:?}", observed.hits);
}

/// An upgrade the upstream declines ends the connection after the response, since what the
/// client sends next may be the other protocol's bytes. A request written after it is not
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_upgrade_closes_connection() {
    let tunnel = Tunnel::start().await;
    let pipeline = b"GET /small HTTP/1.1\r\nHost: app.localhost\r\nUpgrade: websocket\r\n\
        Connection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
        GET /echo-headers HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    let started = Instant::now();
    let response = exchange(&tunnel, pipeline).await;
    assert!(started.elapsed() < Duration::from_secs(4), "{response}");
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("connection: close\r\n"), "{response}");
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert_eq!(upstream_hits(&tunnel), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408() {
    let tunnel =
        Tunnel::start_with(|config| config.header_read_timeout = Duration::from_millis(500)).await;
    let mut socket = connect_and_send(&tunnel, b"GET /small HTTP/1.1\r\nHost: app.lo").await;
    let started = Instant::now();
    let response = read_for(&mut socket, Duration::from_secs(5)).await;
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response:?}"
    );
    assert!(
        response.contains("x-ingress-error: header-timeout"),
        "{response}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "answered after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    assert_eq!(upstream_hits(&tunnel), 0);
}

/// An idle keep-alive connection is closed at the header timeout without a 408, since no
/// request was in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_closed_quietly() {
    let tunnel =
        Tunnel::start_with(|config| config.header_read_timeout = Duration::from_millis(500)).await;
    let mut socket = connect_and_send(
        &tunnel,
        b"GET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    )
    .await;
    let response = read_for(&mut socket, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(!response.contains("408"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_limited() {
    let tunnel = Tunnel::start_with(|config| config.max_connections_per_ip = 2).await;
    let request = b"GET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut socket = connect_and_send(&tunnel, request).await;
        let mut buf = vec![0u8; 1024];
        let read = socket.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..read]).starts_with("HTTP/1.1 200 "));
        held.push(socket);
    }

    let response = exchange(&tunnel, request).await;
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    assert!(
        response.contains("x-ingress-error: too-many-connections"),
        "{response}"
    );

    // Closing one frees its slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut socket = connect_and_send(&tunnel, request).await;
    let mut buf = vec![0u8; 1024];
    let read = socket.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..read]).starts_with("HTTP/1.1 200 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_closed() {
    let tunnel =
        Tunnel::start_with(|config| config.header_read_timeout = Duration::from_millis(500)).await;
    let mut socket = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
    let read = read
        .expect("silent connection closed within 5 s")
        .unwrap_or(0);
    assert_eq!(read, 0);
    assert!(started.elapsed() >= Duration::from_millis(400));
}

/// A keep-alive connection with no request in flight is closed at the idle timeout, well
/// before the header read timeout, and without a 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connection_closed() {
    let tunnel =
        Tunnel::start_with(|config| config.idle_timeout = Duration::from_millis(500)).await;
    let mut socket = connect_and_send(
        &tunnel,
        b"GET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    )
    .await;
    let started = Instant::now();
    let response = read_for(&mut socket, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(!response.contains("408"), "{response}");
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
}

/// HTTP/2: a response that streams for longer than the idle timeout is not cut, and once it
/// ends the idle connection closes (GOAWAY) at the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connection_closed_after_streaming() {
    use http_body_util::BodyExt;

    let tunnel =
        Tunnel::start_with(|config| config.idle_timeout = Duration::from_millis(600)).await;
    let (mut sender, connection) = http2_connection(&tunnel).await;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = connection.await;
        let _ = closed_tx.send(Instant::now());
    });

    // Four lines 400 ms apart: 1.2 s of streaming, twice the idle timeout.
    let request = http::Request::get(tunnel.url("/drip?lines=4&interval_ms=400"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("valid request");
    let response = sender.send_request(request).await.expect("response head");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body streamed whole")
        .to_bytes();
    let body_done = Instant::now();
    let lines = String::from_utf8_lossy(&body).lines().count();
    assert_eq!(lines, 4, "{}", String::from_utf8_lossy(&body));

    let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("idle HTTP/2 connection closed within 5 s")
        .expect("connection task ended");
    let idle = closed.duration_since(body_done);
    assert!(
        idle >= Duration::from_millis(400),
        "closed {idle:?} after the last response"
    );
}

/// `--max-header-fields` bounds the fields of a head over HTTP/1.1, where hyper counts them,
/// and over HTTP/2, where the ingress does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_field_count_limited() {
    let tunnel = Tunnel::start_with(|config| config.max_header_fields = 8).await;
    let fields: String = (0..10).map(|i| format!("X-{i}: v\r\n")).collect();
    let request = format!("GET /small HTTP/1.1\r\nHost: app.localhost\r\n{fields}\r\n");
    let response = exchange(&tunnel, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");

    let (mut sender, connection) = http2_connection(&tunnel).await;
    tokio::spawn(connection);
    let mut request = http::Request::get(tunnel.url("/small"));
    for i in 0..10 {
        request = request.header(format!("x-{i}"), "v");
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("valid request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 431);
    assert_eq!(response.headers()["x-ingress-error"], "too-many-fields");

    let request = http::Request::get(tunnel.url("/small"))
        .header("x-one", "v")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("valid request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream_hits(&tunnel), 1);
}

/// A chunked body that breaks its framing midway is the client's fault: 400, although the
/// head has already gone to the upstream, which gets the request aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunked_body_gets_400() {
    let tunnel = Tunnel::start().await;
    for body in [&b"5\r\nhelloXX\r\n"[..], b"zz\r\n", b"5;a\nb\r\nhello\r\n"] {
        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        request.extend_from_slice(body);
        let response = exchange(&tunnel, &request).await;
        let shown = String::from_utf8_lossy(body);
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{shown:?}: {response}"
        );
        assert!(
            response.contains("x-ingress-error: bad-request-body"),
            "{shown:?}: {response}"
        );
    }
}

/// A request head that starts arriving on a keep-alive connection is left to the header read
/// timeout, and gets its 408, even when the idle timeout is shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_second_head_gets_408_not_idle_close() {
    let tunnel = Tunnel::start_with(|config| {
        config.idle_timeout = Duration::from_millis(300);
        config.header_read_timeout = Duration::from_millis(1200);
    })
    .await;
    let mut socket = connect_and_send(
        &tunnel,
        b"GET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    )
    .await;
    let first = read_for(&mut socket, Duration::from_millis(150)).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    socket
        .write_all(b"GET /small HTTP/1.1\r\nHo")
        .await
        .expect("write part of a head");
    let rest = read_for(&mut socket, Duration::from_secs(5)).await;
    assert!(
        rest.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{rest:?}"
    );
}

/// An idle HTTP/2 client that never acknowledges the server's ping (which hyper's graceful
/// close waits for) is still dropped soon after the idle timeout, not after hyper's 40 s of
/// keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_client_without_ping_ack_dropped() {
    let tunnel =
        Tunnel::start_with(|config| config.idle_timeout = Duration::from_millis(300)).await;
    // The connection preface and an empty SETTINGS frame, then silence.
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut socket = connect_and_send(&tunnel, &opening).await;
    let started = Instant::now();
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(15), socket.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was still open after 15 s");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(8),
        "dropped only after {elapsed:?}"
    );
    // Walk the frames the server sent: a GOAWAY (type 7) came before the close.
    let mut frame_types = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frame_types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(
        frame_types.contains(&7),
        "no GOAWAY among frames {frame_types:?}"
    );
}
