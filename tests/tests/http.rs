//! Plain request and response behaviour through the tunnel: bodies, headers, uploads and
//! compressed bodies match direct access to the upstream.

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_tests::client::{self, collect, get_all, Protocol};
use tunnel_tests::fixture::{gzip_bytes, pattern};
use tunnel_tests::{test_each_protocol, BoxError, Tunnel};

test_each_protocol!(
    get_small_matches_direct,
    get_one_mebibyte_matches_direct,
    get_chunked_matches_direct,
    upload_ten_mebibytes_intact,
    upload_empty_body,
    gzip_passes_through_untouched,
    forwarded_headers_set,
);

/// Header fields that describe the connection or the moment, not the resource.
fn end_to_end(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "date" | "connection" | "keep-alive" | "transfer-encoding"
            )
        })
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    fields.sort();
    fields
}

async fn assert_same_as_direct(protocol: Protocol, path: &str) -> usize {
    let tunnel = Tunnel::start().await;
    let direct = get_all(Protocol::Http1, &tunnel.direct_url(path)).await;
    let through = get_all(protocol, &tunnel.url(path)).await;

    assert_eq!(through.status, direct.status);
    assert_eq!(through.body.len(), direct.body.len());
    assert!(through.body == direct.body, "body bytes differ");
    assert_eq!(end_to_end(&through.headers), end_to_end(&direct.headers));
    through.body.len()
}

async fn get_small_matches_direct(protocol: Protocol) {
    let len = assert_same_as_direct(protocol, "/small").await;
    assert_eq!(len, "hello, world\n".len());
}

async fn get_one_mebibyte_matches_direct(protocol: Protocol) {
    let len = assert_same_as_direct(protocol, "/bytes/1048576").await;
    assert_eq!(len, 1 << 20);
}

async fn get_chunked_matches_direct(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let response = client::get(protocol, &tunnel.url("/chunked/300000")).await;
    assert!(response.headers().get("content-length").is_none());
    if protocol == Protocol::Http1 {
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
    }
    let body = collect(response).await.body;
    assert!(body == pattern(300_000), "chunked body differs");
    drop(tunnel);

    assert_same_as_direct(protocol, "/chunked/300000").await;
}

/// Posts `body` as a stream of 64 KiB chunks and returns the upstream's digest and count.
async fn post_streamed(protocol: Protocol, url: &str, body: Vec<u8>) -> (String, String) {
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = body
        .chunks(64 * 1024)
        .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    let body = StreamBody::new(stream::iter(chunks)).boxed();
    let request = Request::post(url).body(body).expect("valid request");
    let response = collect(client::send(protocol, request).await).await;
    assert_eq!(response.status, 200);
    let received = response.headers["x-received-bytes"]
        .to_str()
        .expect("ascii count")
        .to_string();
    let digest = String::from_utf8(response.body.to_vec()).expect("hex digest");
    (digest, received)
}

async fn upload_ten_mebibytes_intact(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let body = pattern(10 << 20);
    let expected = hex::encode(Sha256::digest(&body));
    let (digest, received) = post_streamed(protocol, &tunnel.url("/upload"), body).await;
    assert_eq!(received, (10 << 20).to_string());
    assert_eq!(digest, expected);
}

async fn upload_empty_body(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let request = Request::post(tunnel.url("/upload"))
        .body(client::full(Bytes::new()))
        .expect("valid request");
    let response = collect(client::send(protocol, request).await).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["x-received-bytes"], "0");
    assert_eq!(response.body, hex::encode(Sha256::digest(b"")));
}

async fn gzip_passes_through_untouched(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let through = get_all(protocol, &tunnel.url("/gzip")).await;
    let direct = get_all(Protocol::Http1, &tunnel.direct_url("/gzip")).await;
    assert_eq!(through.headers["content-encoding"], "gzip");
    assert_eq!(
        through.headers["content-encoding"],
        direct.headers["content-encoding"]
    );
    assert_eq!(
        through.headers["content-length"],
        direct.headers["content-length"]
    );
    assert!(through.body == gzip_bytes(), "compressed bytes changed");
}

async fn forwarded_headers_set(protocol: Protocol) {
    let tunnel = Tunnel::start().await;
    let request = Request::get(tunnel.url("/echo-headers"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-custom", "kept")
        .body(client::empty())
        .expect("valid request");
    let seen = collect(client::send(protocol, request).await).await.body;
    let seen = String::from_utf8_lossy(&seen);
    let port = tunnel.ingress.http_addr.port();
    assert!(
        seen.contains(&format!("host: app.localhost:{port}\n")),
        "{seen}"
    );
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: app.localhost:{port}\n")),
        "{seen}"
    );
    assert!(seen.contains("x-real-ip: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-custom: kept\n"), "{seen}");
}

/// Sends a request with forwarding fields of its own and returns the fields the upstream got.
async fn fields_seen_with_forged_forwarding(tunnel: &Tunnel) -> String {
    let request = Request::get(tunnel.url("/echo-headers"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.example.com")
        .header("x-real-ip", "203.0.113.8")
        .body(client::empty())
        .expect("valid request");
    let body = collect(client::send(Protocol::Http1, request).await)
        .await
        .body;
    String::from_utf8_lossy(&body).to_string()
}

/// A client cannot pass for another address, protocol or host by sending forwarding fields
/// itself; a trusted proxy in front of the ingress can. Connections from a trusted proxy do not
/// count against the per-address connection limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_fields_believed() {
    let untrusting = Tunnel::start_with(|config| {
        config.trusted_proxies = vec!["10.0.0.0/8".parse().expect("valid range")];
    })
    .await;
    let seen = fields_seen_with_forged_forwarding(&untrusting).await;
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-real-ip: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(!seen.contains("www.example.com"), "{seen}");

    let trusting = Tunnel::start_with(|config| {
        config.trusted_proxies = vec!["127.0.0.0/8".parse().expect("valid range")];
        config.max_connections_per_ip = 1;
    })
    .await;
    let seen = fields_seen_with_forged_forwarding(&trusting).await;
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-real-ip: 203.0.113.7\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-host: www.example.com\n"),
        "{seen}"
    );

    // Three connections held open at once from a trusted address, over a limit of one.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = tokio::net::TcpStream::connect(trusting.ingress.http_addr)
            .await
            .expect("connect");
        socket
            .write_all(b"GET /small HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 1024];
        let read = socket.read(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf[..read]).to_string();
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        held.push(socket);
    }
}

/// An HTTP/1.1 client that sends `Expect: 100-continue` waits for the interim response before
/// it sends the body, as curl does for large uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_with_expect_continue() {
    let tunnel = Tunnel::start().await;
    let body = pattern(200_000);
    let mut socket = tokio::net::TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect to ingress");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("write head");

    let mut interim = [0u8; 25];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_exact(&mut interim),
    )
    .await
    .expect("100 Continue within 5 s")
    .expect("read interim response");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");

    socket.write_all(&body).await.expect("write body");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let expected = hex::encode(Sha256::digest(&body));
    while !String::from_utf8_lossy(&response).contains(&expected) {
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut buf))
            .await
            .expect("response within 10 s")
            .expect("read response");
        assert!(
            read > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buf[..read]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("x-received-bytes: 200000\r\n"), "{text}");
}

/// Starts a second agent serving tunnel `grpc` from the fixture over prior-knowledge HTTP/2.
async fn start_h2c_agent(tunnel: &Tunnel) -> tunnel_tests::RunningAgent {
    let mut agent = tunnel_tests::RunningAgent::start_with_protocol(
        tunnel.ingress.quic_addr,
        &tunnel.ingress.cert_sha256,
        tunnel_tests::TOKEN,
        &[("grpc", tunnel.fixture.addr)],
        tunnel_agent::UpstreamProtocol::H2c,
    )
    .expect("start h2c agent");
    agent
        .wait_connected(std::time::Duration::from_secs(10))
        .await
        .expect("agent up");
    agent
}

/// An HTTP/2 client reaching an h2c upstream, as a gRPC client does, gets the body and the
/// trailers that end the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_http2_client() {
    let tunnel = Tunnel::start().await;
    let _agent = start_h2c_agent(&tunnel).await;

    let url = format!(
        "http://grpc.localhost:{}/trailers",
        tunnel.ingress.http_addr.port()
    );
    let request = Request::post(url)
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(client::full(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("valid request");
    let response = client::send(Protocol::H2c, request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let collected = response
        .into_body()
        .collect()
        .await
        .expect("body and trailers");
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "not%20found");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\0"));
}

/// A gRPC error with no message has its status in the response headers and no body. The
/// HTTP/2 client must see the stream end with those headers, or gRPC reports UNKNOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_only_response_ends_with_headers() {
    use http_body::Body as _;

    let tunnel = Tunnel::start().await;
    let _agent = start_h2c_agent(&tunnel).await;

    let url = format!(
        "http://grpc.localhost:{}/trailers-only",
        tunnel.ingress.http_addr.port()
    );
    let request = Request::post(url)
        .header("te", "trailers")
        .body(client::full(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("valid request");
    let response = client::send(Protocol::H2c, request).await;
    assert_eq!(response.headers()["grpc-status"], "5");
    assert_eq!(response.headers()["grpc-message"], "thing%20not%20found");
    // hyper's HTTP/2 client marks a body as ended when the HEADERS frame carried END_STREAM.
    assert!(
        response.body().is_end_stream(),
        "the stream did not end with the headers"
    );
}

/// Sends `request` on a new connection and returns the lower-cased response, read until the
/// ingress closes the connection, as the request's `Connection: close` makes it.
async fn raw_exchange(tunnel: &Tunnel, request: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect");
    socket.write_all(request).await.expect("write");
    let mut received = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_end(&mut received),
    )
    .await;
    assert!(read.is_ok(), "the response did not end within 5 s");
    let seen = String::from_utf8_lossy(&received).to_lowercase();
    seen
}

/// A client cannot strip `Host` by naming it in `Connection`, nor smuggle a guarded field past
/// CGI-style servers by spelling it with underscores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_fields_survive_client_tricks() {
    let tunnel = Tunnel::start().await;
    let seen = raw_exchange(
        &tunnel,
        b"GET /echo-headers HTTP/1.1\r\nHost: app.localhost\r\n\
        Connection: host, x-private, close\r\nX-Private: 1\r\n\
        X_Forwarded_For: 198.51.100.66\r\nX_Real_IP: 198.51.100.66\r\nX_Custom: kept\r\n\r\n",
    )
    .await;
    assert!(seen.starts_with("http/1.1 200 "), "{seen}");
    assert!(seen.contains("\nhost: app.localhost\n"), "{seen}");
    assert!(
        seen.contains("\nx-forwarded-host: app.localhost\n"),
        "{seen}"
    );
    assert!(!seen.contains("x-private"), "{seen}");
    assert!(!seen.contains("198.51.100.66"), "{seen}");
    assert!(seen.contains("\nx_custom: kept\n"), "{seen}");
}

/// Request trailers declared in `Trailer` reach an HTTP/1.1 upstream; `Trailer` is an
/// end-to-end field (RFC 9110, section 6.6.2), so it is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_upstream() {
    let tunnel = Tunnel::start().await;
    let seen = raw_exchange(
        &tunnel,
        b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\
        Trailer: x-checksum\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\
        X-Checksum: 2cf24dba\r\n\r\n",
    )
    .await;
    assert!(seen.starts_with("http/1.1 200 "), "{seen}");
    assert!(seen.contains("x-received-bytes: 5\r\n"), "{seen}");
    assert!(
        seen.contains("x-received-trailers: x-checksum=2cf24dba\r\n"),
        "{seen}"
    );
}
