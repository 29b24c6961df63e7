//! WebSocket through the tunnel: the upgrade is spliced as raw bytes, messages keep their order
//! and content both ways, the subprotocol is negotiated end to end, and close codes cross.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tunnel_tests::Tunnel;

type Socket = WebSocketStream<TcpStream>;

/// Opens a WebSocket to the fixture through the ingress, offering `protocols`.
async fn connect(tunnel: &Tunnel, protocols: &str) -> (Socket, http::Response<Option<Vec<u8>>>) {
    let mut request = tunnel
        .url("/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .expect("valid URL");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocols.parse().expect("valid header"),
    );
    let tcp = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect to ingress");
    tcp.set_nodelay(true).expect("set TCP_NODELAY");
    let handshake = tokio_tungstenite::client_async(request, tcp);
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .expect("handshake within 5 s")
        .expect("handshake succeeds")
}

async fn next_message(socket: &mut Socket) -> Message {
    tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("message within 5 s")
        .expect("socket still open")
        .expect("valid message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_echo_in_order() {
    let tunnel = Tunnel::start().await;
    let (mut socket, _) = connect(&tunnel, "chat.v2,chat.v1").await;

    for i in 0..100 {
        socket
            .feed(Message::Text(format!("client text {i}")))
            .await
            .expect("send text");
        socket
            .feed(Message::Binary(vec![(i % 256) as u8; 1 + i * 7]))
            .await
            .expect("send binary");
    }
    socket.flush().await.expect("flush");
    for i in 0..100 {
        assert_eq!(
            next_message(&mut socket).await,
            Message::Text(format!("client text {i}"))
        );
        assert_eq!(
            next_message(&mut socket).await,
            Message::Binary(vec![(i % 256) as u8; 1 + i * 7])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_messages_arrive_in_order() {
    let tunnel = Tunnel::start().await;
    let (mut socket, _) = connect(&tunnel, "chat.v1").await;
    socket
        .send(Message::Text("burst".into()))
        .await
        .expect("send burst");
    for i in 0..100 {
        assert_eq!(
            next_message(&mut socket).await,
            Message::Text(format!("server text {i}"))
        );
        assert_eq!(
            next_message(&mut socket).await,
            Message::Binary(vec![i as u8; 1 + i])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_negotiated() {
    let tunnel = Tunnel::start().await;
    let (_socket, response) = connect(&tunnel, "chat.v2,chat.v1").await;
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
    assert_eq!(
        response.headers()["upgrade"]
            .to_str()
            .map(str::to_ascii_lowercase)
            .ok()
            .as_deref(),
        Some("websocket")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_code_reaches_server() {
    let tunnel = Tunnel::start().await;
    let (mut socket, _) = connect(&tunnel, "chat.v1").await;
    let frame = CloseFrame {
        code: CloseCode::from(4321),
        reason: "client done".into(),
    };
    socket.close(Some(frame)).await.expect("send close");
    // The server replies to the close, then the socket ends.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {}

    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if tunnel.fixture.observed().ws_close_codes.contains(&4321) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server never saw close code 4321"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_close_code_reaches_client() {
    let tunnel = Tunnel::start().await;
    let (mut socket, _) = connect(&tunnel, "chat.v1").await;
    socket
        .send(Message::Text("close:4002".into()))
        .await
        .expect("send close request");
    match next_message(&mut socket).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason, "fixture closing");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Declining an upgrade is an ordinary response: a plain GET to the WebSocket route without
/// a key gets the fixture's 400 through the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_upgrade_is_normal_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tunnel = Tunnel::start().await;
    let mut tcp = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect to ingress");
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: app.localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("write request");
    // The head and the body may come in separate segments; read until the body is in.
    let mut received = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !received.ends_with(b"not a WebSocket request\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let read = tokio::time::timeout(left, tcp.read(&mut buf))
            .await
            .expect("response within 5 s")
            .expect("read response");
        assert!(
            read > 0,
            "closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..read]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
}

/// RFC 8441: an HTTP/2 client opens a WebSocket with an extended CONNECT on one stream of its
/// connection. The ingress carries it to the HTTP/1.1 upstream as an ordinary upgrade. A quiet
/// WebSocket counts as a request in flight, so the idle timeout does not close its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_connect() {
    let tunnel =
        Tunnel::start_with(|config| config.idle_timeout = Duration::from_millis(300)).await;
    let tcp = TcpStream::connect(tunnel.ingress.http_addr)
        .await
        .expect("connect to ingress");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("HTTP/2 connection ready");
    // The server's SETTINGS frame, which offers extended CONNECT, may arrive a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !client.is_extended_connect_protocol_enabled() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ingress did not offer extended CONNECT"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(tunnel.url("/ws"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat.v1")
        .body(())
        .expect("valid request");
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (response, mut send) = client.send_request(request, false).expect("send CONNECT");
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("response within 5 s")
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
    let mut recv = response.into_body();
    tokio::time::sleep(Duration::from_millis(900)).await;
    // Had the connection been taken for idle, GOAWAY would refuse this new stream.
    let small = http::Request::get(tunnel.url("/small"))
        .body(())
        .expect("valid request");
    let mut client = client.ready().await.expect("HTTP/2 connection ready");
    let (small, _) = client
        .send_request(small, true)
        .expect("open a second stream");
    let small = tokio::time::timeout(Duration::from_secs(5), small)
        .await
        .expect("response within 5 s")
        .expect("second stream answered");
    assert_eq!(small.status(), 200);

    // One masked text frame, as a client must send it, then the unmasked echo back.
    let payload = b"over h2";
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4]),
    );
    send.send_data(bytes::Bytes::from(frame), false)
        .expect("send frame");

    let mut echoed = Vec::new();
    while echoed.len() < 2 + payload.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(5), recv.data())
            .await
            .expect("echo within 5 s")
            .expect("stream open")
            .expect("data");
        let _ = recv.flow_control().release_capacity(chunk.len());
        echoed.extend_from_slice(&chunk);
    }
    assert_eq!(&echoed[..2], &[0x81, payload.len() as u8]);
    assert_eq!(&echoed[2..], payload);
}

/// An open WebSocket keeps its connection's slot under `--max-connections-per-ip` after hyper
/// has let go of the upgraded connection; closing it frees the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_counts_against_connection_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let tunnel = Tunnel::start_with(|config| config.max_connections_per_ip = 1).await;
    let (mut socket, _) = connect(&tunnel, "chat.v1").await;
    socket
        .send(Message::Text("hold".into()))
        .await
        .expect("send text");
    assert_eq!(
        next_message(&mut socket).await,
        Message::Text("hold".into())
    );

    let status_of_new_connection = || async {
        let mut tcp = TcpStream::connect(tunnel.ingress.http_addr)
            .await
            .expect("connect");
        tcp.write_all(b"GET /small HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut received = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut received)).await;
        String::from_utf8_lossy(&received)
            .chars()
            .take(12)
            .collect::<String>()
    };
    assert_eq!(status_of_new_connection().await, "HTTP/1.1 503");

    socket.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {}
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = status_of_new_connection().await;
        if status == "HTTP/1.1 200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not freed after the WebSocket closed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The upstream gets an upgrade request in origin form (`GET /path?query`), with the routed
/// Host, because servers route on the path. The agent's internal address must not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_target_reaches_upstream_in_origin_form() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    tunnel_tests::init_tracing();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let upstream_addr = upstream.local_addr().expect("upstream address");
    // A raw upstream: records the head it gets, switches protocols and echoes.
    let recorded = tokio::spawn(async move {
        let (mut tcp, _) = upstream.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).await.expect("read head");
            head.push(byte[0]);
        }
        tcp.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n",
        )
        .await
        .expect("write 101");
        let mut buf = [0u8; 64];
        let read = tcp.read(&mut buf).await.expect("read after upgrade");
        tcp.write_all(&buf[..read]).await.expect("echo");
        String::from_utf8_lossy(&head).to_string()
    });

    let state_dir = tunnel_tests::TempDir::new("origin-form");
    let ingress = tunnel_tests::RunningIngress::start(
        tunnel_tests::loopback(0),
        tunnel_tests::loopback(0),
        state_dir.path.clone(),
        |_| {},
    )
    .await
    .expect("start ingress");
    let _agent = tunnel_tests::RunningAgent::start_connected(
        ingress.quic_addr,
        &ingress.cert_sha256,
        tunnel_tests::TOKEN,
        &[("raw", upstream_addr)],
    )
    .await;

    let mut client = TcpStream::connect(ingress.http_addr)
        .await
        .expect("connect");
    client
        .write_all(b"GET /chat/room?id=7 HTTP/1.1\r\nHost: raw.localhost\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n")
        .await
        .expect("write request");
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut byte))
            .await
            .expect("response within 5 s")
            .expect("read response");
        response.push(byte[0]);
    }
    let response = String::from_utf8_lossy(&response).to_string();
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    client
        .write_all(b"ping")
        .await
        .expect("write after upgrade");
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut echoed))
        .await
        .expect("echo within 5 s")
        .expect("read echo");
    assert_eq!(&echoed, b"ping");

    let head = recorded.await.expect("upstream task");
    assert!(
        head.starts_with("GET /chat/room?id=7 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("\r\nhost: raw.localhost\r\n"),
        "{head}"
    );
    assert!(!head.contains(&upstream_addr.to_string()), "{head}");
}
