//! Streaming through the tunnel: slow responses and server-sent events arrive as they are
//! written, an upstream that dies mid-response aborts the client's response, and a client that
//! leaves stops the upstream.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_tests::client::{self, Protocol};
use tunnel_tests::{test_each_protocol, Tunnel};

test_each_protocol!(
    drip_lines_arrive_one_by_one,
    sse_events_arrive_promptly,
    upstream_death_aborts_length_response,
    upstream_death_aborts_chunked_response,
    client_leaving_stops_upstream,
);

/// Parses the emit time the fixture writes as the last word of a line or event.
fn emitted_at(text: &str) -> u64 {
    text.split_whitespace()
        .last()
        .and_then(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {text:?}"))
}

fn micros_at(instant: Instant) -> u64 {
    // Maps a monotonic arrival time onto the wall clock the fixture stamps with.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64;
    now - Instant::now().duration_since(instant).as_micros() as u64
}

async fn drip_lines_arrive_one_by_one(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let response = client::get(protocol, &tunnel.url("/drip?lines=5&interval_ms=200")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();

    // Lines may share a chunk only if one was late; collect arrival per line.
    let mut arrivals: Vec<(u64, u64)> = Vec::new();
    let mut pending = String::new();
    for (at, chunk) in client::timed_chunks(&mut body, Duration::from_secs(10)).await {
        pending.push_str(std::str::from_utf8(&chunk).expect("utf-8 lines"));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            arrivals.push((emitted_at(&line), micros_at(at)));
        }
    }
    assert_eq!(arrivals.len(), 5, "expected 5 lines");
    for pair in arrivals.windows(2) {
        let (_, arrived) = pair[0];
        let (next_emitted, _) = pair[1];
        assert!(
            arrived < next_emitted,
            "a line arrived {} us after the next one was written",
            arrived - next_emitted
        );
    }
}

async fn sse_events_arrive_promptly(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let response = client::get(protocol, &tunnel.url("/sse?events=6&interval_ms=150")).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();

    let mut events = 0;
    let mut pending = String::new();
    for (at, chunk) in client::timed_chunks(&mut body, Duration::from_secs(10)).await {
        pending.push_str(std::str::from_utf8(&chunk).expect("utf-8 events"));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data = event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .expect("event has data");
            let delay = micros_at(at).saturating_sub(emitted_at(data));
            assert!(delay < 300_000, "event delayed by {delay} us");
            events += 1;
        }
    }
    assert_eq!(events, 6);
}

/// Reads a response whose upstream dies after 64 KiB and returns how long the error took.
async fn upstream_death(protocol: Protocol, path: &str) {
    let tunnel = Tunnel::start().await;
    let started = Instant::now();
    let response = client::get(protocol, &tunnel.url(path)).await;
    assert_eq!(response.status(), 200);
    let outcome =
        tokio::time::timeout(Duration::from_secs(3), response.into_body().collect()).await;
    match outcome {
        Ok(Ok(body)) => panic!(
            "body of {} bytes looked complete although the upstream died",
            body.to_bytes().len()
        ),
        Ok(Err(_)) => {}
        Err(_) => panic!("no error within 3 s"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn upstream_death_aborts_length_response(protocol: Protocol) {
    upstream_death(protocol, "/die/length").await;
}

async fn upstream_death_aborts_chunked_response(protocol: Protocol) {
    upstream_death(protocol, "/die/chunked").await;
}

async fn client_leaving_stops_upstream(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let response = client::get(protocol, &tunnel.url("/sse?events=1000&interval_ms=50")).await;
    let mut body = response.into_body();
    for _ in 0..2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("event within 5 s");
        assert!(frame.is_some());
    }
    drop(body);

    let deadline = Instant::now() + Duration::from_secs(3);
    while tunnel.fixture.observed().streams_dropped == 0 {
        assert!(
            Instant::now() < deadline,
            "upstream still streaming 3 s after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On HTTP/1.1 the abort is visible on the wire: the connection closes without the final
/// zero-length chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_abort_has_no_final_chunk() {
    let tunnel = Tunnel::start().await;
    let mut socket = tokio::net::TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect to ingress");
    socket
        .write_all(b"GET /die/chunked HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .expect("write request");
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(3), socket.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "connection still open 3 s after the upstream died"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("transfer-encoding: chunked\r\n"));
    assert!(
        !received.ends_with(b"0\r\n\r\n"),
        "response ended with a terminating chunk"
    );
    assert!(
        received.len() > 64 * 1024,
        "the 64 KiB sent before the failure were lost"
    );
}
