//! Request limits and malformed requests on the public listener, sent over raw sockets. Each
//! gets its status (400, 408, 431, 503) or a closed connection, never a hang, and none of them
//! reaches the upstream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_tests::Tunnel;

/// Sends `request` on a new connection and returns everything the ingress wrote until it
/// closed the connection or 5 s passed.
async fn exchange(tunnel: &Tunnel, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    socket.write_all(request).await.expect("write request");
    read_for(&mut socket, Duration::from_secs(5)).await
}

async fn read_for(socket: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, socket.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).to_string()
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
        ("missing Host", b"GET /small HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
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

/// A request with both `Content-Length` and `Transfer-Encoding: chunked` is framed by its
/// chunks alone, because hyper drops the length. The upstream gets only the chunked body, so
/// the two hops cannot disagree about where the request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_with_chunked_uses_chunks_only() {
    let tunnel = Tunnel::start().await;
    let request = b"POST /echo-headers HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let response = exchange(&tunnel, request).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(!response.contains("content-length: 4"), "{response}");
    assert_eq!(upstream_hits(&tunnel), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408() {
    let tunnel =
        Tunnel::start_with(|config| config.header_read_timeout = Duration::from_millis(500)).await;
    let mut socket = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    socket
        .write_all(b"GET /small HTTP/1.1\r\nHost: app.lo")
        .await
        .expect("write part of a head");
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
    let mut socket = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    socket
        .write_all(b"GET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .expect("write request");
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
        let mut socket = TcpStream::connect(tunnel.ingress.http_addr)
            .await
            .expect("connect");
        socket.write_all(request).await.expect("write");
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
    let mut socket = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    socket.write_all(request).await.expect("write");
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
