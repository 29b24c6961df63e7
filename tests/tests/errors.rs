//! Failure statuses and recovery: unknown tunnels, missing agents, dead upstreams, slow
//! upstreams, wrong tokens and an ingress restart.

use std::time::{Duration, Instant};

use tunnel_tests::client::{get_all, Protocol};
use tunnel_tests::{loopback, RunningAgent, RunningIngress, TempDir, Tunnel, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tunnel_is_404() {
    let tunnel = Tunnel::start().await;
    let url = format!(
        "http://other.localhost:{}/",
        tunnel.ingress.http_addr.port()
    );
    let response = get_all(Protocol::Http1, &url).await;
    assert_eq!(response.status, 404);
    assert_eq!(response.headers["x-ingress-error"], "unknown-tunnel");
    assert!(String::from_utf8_lossy(&response.body).contains("no tunnel named \"other\""));

    let foreign = format!("http://example.test:{}/", tunnel.ingress.http_addr.port());
    assert_eq!(get_all(Protocol::Http1, &foreign).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_without_agent_is_502() {
    let tunnel = Tunnel::start().await;
    let Tunnel {
        agent,
        ingress,
        fixture,
        state_dir,
    } = tunnel;
    agent.stop().await;

    let url = format!("http://app.localhost:{}/small", ingress.http_addr.port());
    let started = Instant::now();
    let response = get_all(Protocol::Http1, &url).await;
    assert_eq!(response.status, 502);
    assert_eq!(response.headers["x-ingress-error"], "no-agent");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "502 took {:?}",
        started.elapsed()
    );
    drop((fixture, state_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_tunnel_is_502_before_any_agent() {
    tunnel_tests::init_tracing();
    let state = TempDir::new("declared");
    let ingress = RunningIngress::start(loopback(0), loopback(0), state.path.clone(), |config| {
        config.declared_tunnels.insert("later".to_string());
    })
    .await
    .expect("start ingress");
    let url = format!("http://later.localhost:{}/", ingress.http_addr.port());
    let response = get_all(Protocol::H2c, &url).await;
    assert_eq!(response.status, 502);
    assert!(String::from_utf8_lossy(&response.body).contains("has no agent connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_not_listening_is_502() {
    let tunnel = Tunnel::start().await;
    // A port that was just free: bind, read it, drop.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port");
    let _agent = RunningAgent::start_connected(
        tunnel.ingress.quic_addr,
        &tunnel.ingress.cert_sha256,
        TOKEN,
        &[("dead", closed)],
    )
    .await;

    let url = format!("http://dead.localhost:{}/", tunnel.ingress.http_addr.port());
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let response = get_all(protocol, &url).await;
        assert_eq!(response.status, 502);
        assert_eq!(response.headers["x-ingress-error"], "upstream-refused");
        assert!(String::from_utf8_lossy(&response.body).contains("failed to connect to upstream"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_head_is_504() {
    let tunnel = Tunnel::start_with(|config| {
        config.response_header_timeout = Duration::from_millis(500);
    })
    .await;
    let started = Instant::now();
    let response = get_all(Protocol::Http1, &tunnel.url("/slow-head?ms=5000")).await;
    assert_eq!(response.status, 504);
    assert_eq!(response.headers["x-ingress-error"], "upstream-timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "504 took {:?}",
        started.elapsed()
    );
    // The tunnel still serves the next request.
    assert_eq!(
        get_all(Protocol::Http1, &tunnel.url("/small")).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_refused_with_reason() {
    let tunnel = Tunnel::start().await;
    let agent = RunningAgent::start(
        tunnel.ingress.quic_addr,
        &tunnel.ingress.cert_sha256,
        "not-the-token",
        &[("other", tunnel.fixture.addr)],
    )
    .expect("start agent");
    let outcome = tokio::time::timeout(Duration::from_secs(10), agent.task)
        .await
        .expect("agent gives up within 10 s")
        .expect("agent task did not panic");
    let err = outcome.expect_err("agent with a wrong token must stop with an error");
    let message = err.to_string();
    assert!(message.contains("invalid token"), "{message}");
    assert!(message.contains("BadToken"), "{message}");
    assert!(
        !message.contains("not-the-token"),
        "the token leaked into {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fingerprint_rejected() {
    let tunnel = Tunnel::start().await;
    let mut agent = RunningAgent::start(
        tunnel.ingress.quic_addr,
        &"00".repeat(32),
        TOKEN,
        &[("other", tunnel.fixture.addr)],
    )
    .expect("start agent");
    let status = agent
        .status
        .wait_for(|status| matches!(status, tunnel_agent::Status::Disconnected { .. }));
    let status = tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .expect("status within 10 s")
        .expect("agent alive")
        .clone();
    let tunnel_agent::Status::Disconnected { reason } = status else {
        unreachable!()
    };
    assert!(reason.contains("expected 0000"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_ingress_restart() {
    let tunnel = Tunnel::start().await;
    let Tunnel {
        fixture,
        ingress,
        mut agent,
        state_dir,
    } = tunnel;
    let (http, quic) = (ingress.http_addr, ingress.quic_addr);
    let url = format!("http://app.localhost:{}/small", http.port());
    assert_eq!(get_all(Protocol::Http1, &url).await.status, 200);

    ingress.stop().await;
    agent
        .wait_disconnected(Duration::from_secs(5))
        .await
        .expect("agent notices the restart");

    let restarted = restart_on(http, quic, &state_dir).await;
    let back = Instant::now();
    agent
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("agent reconnects");
    let took = back.elapsed();
    eprintln!("agent reconnected {took:?} after the ingress came back");
    assert!(took < Duration::from_secs(3), "reconnect took {took:?}");
    let response = get_all(Protocol::Http1, &url).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "hello, world\n");
    drop((restarted, fixture));
}

/// Starts an ingress on the same ports and state directory, retrying while the old sockets
/// are released.
async fn restart_on(
    http: std::net::SocketAddr,
    quic: std::net::SocketAddr,
    state: &TempDir,
) -> RunningIngress {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match RunningIngress::start(http, quic, state.path.clone(), |_| {}).await {
            Ok(ingress) => return ingress,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = %err, "ports not free yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("ingress could not restart on {http} and {quic}: {err:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_tokens_rate_limited() {
    let tunnel = Tunnel::start_with(|config| config.max_failed_handshakes = 3).await;
    let mut reasons = Vec::new();
    for _ in 0..4 {
        let agent =
            tunnel_tests::rogue::RogueAgent::connect(tunnel.ingress.quic_addr, "wrong", &["x"])
                .await
                .expect("handshake completes with a reply");
        match agent.reply {
            protocol::HelloReply::Refused { reason, .. } => reasons.push(reason),
            other => panic!("a wrong token was accepted: {other:?}"),
        }
    }
    use protocol::RefuseReason::{BadToken, RateLimited};
    assert_eq!(reasons, [BadToken, BadToken, BadToken, RateLimited]);
    // The right token from the same address is refused too until the minute is over.
    let agent = tunnel_tests::rogue::RogueAgent::connect(tunnel.ingress.quic_addr, TOKEN, &["x"])
        .await
        .expect("reply");
    assert!(matches!(
        agent.reply,
        protocol::HelloReply::Refused {
            reason: RateLimited,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_not_mistaken_for_slow_upstream() {
    use bytes::Bytes;
    use http_body_util::BodyExt;

    let tunnel = Tunnel::start_with(|config| {
        config.response_header_timeout = Duration::from_millis(500);
    })
    .await;
    // 8 chunks, 200 ms apart: the upload takes 1.4 s, three times the header timeout.
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, tunnel_tests::BoxError>>(1);
    tokio::spawn(async move {
        for _ in 0..8 {
            let _ = sender
                .send(Ok(hyper::body::Frame::data(Bytes::from(vec![7u8; 1000]))))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let body = http_body_util::StreamBody::new(stream).boxed();
    let request = http::Request::post(tunnel.url("/upload"))
        .body(body)
        .expect("valid request");
    let response =
        tunnel_tests::client::collect(tunnel_tests::client::send(Protocol::Http1, request).await)
            .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["x-received-bytes"], "8000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_agent_limited() {
    let tunnel = Tunnel::start_with(|config| {
        config.max_streams_per_agent = 2;
        config.response_header_timeout = Duration::from_millis(700);
    })
    .await;
    // Two slow responses take both slots; a third request waits, then gets 503.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let url = tunnel.url("/drip?lines=3&interval_ms=500");
        slow.push(tokio::spawn(
            async move { get_all(Protocol::Http1, &url).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let third = get_all(Protocol::Http1, &tunnel.url("/small")).await;
    assert_eq!(third.status, 503);
    assert_eq!(third.headers["x-ingress-error"], "agent-busy");
    assert!(started.elapsed() >= Duration::from_millis(600));
    for task in slow {
        assert_eq!(task.await.expect("slow request").status, 200);
    }
    // With the slots free again, requests go through.
    assert_eq!(
        get_all(Protocol::Http1, &tunnel.url("/small")).await.status,
        200
    );
}
