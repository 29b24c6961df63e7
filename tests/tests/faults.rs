//! Faults the tunnel survives: NAT rebinding and agent address changes (QUIC connection
//! migration), packet loss and reordering, and several agents serving one tunnel through
//! an agent restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tunnel_tests::client::{self, collect, get_all, Protocol};
use tunnel_tests::fixture::pattern;
use tunnel_tests::relay::{Impairment, Relay};
use tunnel_tests::{loopback, Fixture, RunningAgent, RunningIngress, TempDir, TOKEN};

/// An ingress and a fixture with the agent connected through a relay.
struct Setup {
    _fixture: Fixture,
    ingress: RunningIngress,
    relay: Relay,
    agent: RunningAgent,
    _state: TempDir,
}

impl Setup {
    async fn start(impairment: Impairment) -> Setup {
        tunnel_tests::init_tracing();
        let fixture = Fixture::start().await;
        let state = TempDir::new("faults");
        let ingress = RunningIngress::start(loopback(0), loopback(0), state.path.clone(), |_| {})
            .await
            .expect("start ingress");
        let relay = Relay::start(ingress.quic_addr, impairment, 7).await;
        let mut agent = RunningAgent::start(
            relay.addr,
            &ingress.cert_sha256,
            TOKEN,
            &[("app", fixture.addr)],
        )
        .expect("start agent");
        agent
            .wait_connected(Duration::from_secs(15))
            .await
            .expect("tunnel up through the relay");
        Setup {
            _fixture: fixture,
            ingress,
            relay,
            agent,
            _state: state,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://app.localhost:{}{path}",
            self.ingress.http_addr.port()
        )
    }
}

async fn open_websocket(setup: &Setup) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let request = setup
        .url("/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .expect("valid URL");
    let tcp = TcpStream::connect(setup.ingress.http_addr)
        .await
        .expect("connect to ingress");
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake succeeds");
    socket
}

/// Sends `count` numbered messages, one every `gap`, calling `disturb` once halfway, and checks
/// every echo arrives in order.
async fn echo_through(
    socket: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    count: usize,
    gap: Duration,
    disturb: impl FnOnce(),
) {
    let mut disturb = Some(disturb);
    for i in 0..count {
        if i == count / 2 {
            if let Some(disturb) = disturb.take() {
                disturb();
            }
        }
        socket
            .send(Message::Text(format!("message {i}")))
            .await
            .expect("send");
        let echo = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("echo of message {i} not back within 10 s"))
            .expect("socket open")
            .expect("valid message");
        assert_eq!(echo, Message::Text(format!("message {i}")));
        tokio::time::sleep(gap).await;
    }
}

/// Downloads `/drip` (3 s of lines) while `disturb` runs, and checks every line arrived.
async fn slow_download(setup: &Setup) -> tokio::task::JoinHandle<String> {
    let url = setup.url("/drip?lines=30&interval_ms=100");
    tokio::spawn(async move {
        let response = client::get(Protocol::Http1, &url).await;
        let body = collect(response).await.body;
        String::from_utf8(body.to_vec()).expect("utf-8 lines")
    })
}

fn assert_all_lines(text: &str, count: usize) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), count, "{text}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("line {i} ")),
            "line {i} is {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_keeps_streams() {
    let setup = Setup::start(Impairment::default()).await;
    let download = slow_download(&setup).await;
    let mut socket = open_websocket(&setup).await;
    let relay = &setup.relay;
    echo_through(&mut socket, 40, Duration::from_millis(25), || {
        relay.rebind()
    })
    .await;
    let text = tokio::time::timeout(Duration::from_secs(15), download)
        .await
        .expect("download finishes")
        .expect("download task");
    assert_all_lines(&text, 30);
    let after_rebind = setup.relay.stats.after_rebind.load(Ordering::Relaxed);
    assert!(after_rebind > 0, "no datagram left from the new port");
    // The agent never noticed: no reconnect happened.
    assert!(matches!(
        *setup.agent.status.borrow(),
        tunnel_agent::Status::Connected { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rebind_keeps_streams() {
    let setup = Setup::start(Impairment::default()).await;
    let download = slow_download(&setup).await;
    let mut socket = open_websocket(&setup).await;
    let rebinder = setup.agent.rebinder.clone();
    echo_through(&mut socket, 40, Duration::from_millis(25), move || {
        rebinder.rebind()
    })
    .await;
    let text = tokio::time::timeout(Duration::from_secs(15), download)
        .await
        .expect("download finishes")
        .expect("download task");
    assert_all_lines(&text, 30);
    let agent_addrs = setup
        .relay
        .stats
        .agent_addrs
        .lock()
        .expect("relay stats")
        .clone();
    assert_eq!(
        agent_addrs.len(),
        2,
        "agent source addresses: {agent_addrs:?}"
    );
    assert!(matches!(
        *setup.agent.status.borrow(),
        tunnel_agent::Status::Connected { .. }
    ));
}

async fn transfers_survive(loss: f64) {
    let setup = Setup::start(Impairment {
        loss,
        reorder: 0.02,
    })
    .await;
    let size = 10 << 20;

    let started = Instant::now();
    let download = get_all(Protocol::Http1, &setup.url(&format!("/bytes/{size}"))).await;
    let down_secs = started.elapsed().as_secs_f64();
    assert_eq!(download.body.len(), size);
    assert!(download.body == pattern(size), "download bytes differ");

    let body = pattern(size);
    let expected = hex::encode(Sha256::digest(&body));
    let request = Request::post(setup.url("/upload"))
        .body(client::full(body))
        .expect("valid request");
    let started = Instant::now();
    let upload = collect(client::send(Protocol::Http1, request).await).await;
    let up_secs = started.elapsed().as_secs_f64();
    assert_eq!(upload.body, expected);

    let mut socket = open_websocket(&setup).await;
    echo_through(&mut socket, 50, Duration::ZERO, || {}).await;

    let stats = &setup.relay.stats;
    eprintln!(
        "loss {:.0}%: 10 MiB down {:.1} MiB/s, up {:.1} MiB/s; relay forwarded {} dropped {} reordered {}",
        loss * 100.0,
        10.0 / down_secs,
        10.0 / up_secs,
        stats.forwarded.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        stats.reordered.load(Ordering::Relaxed),
    );
    assert!(
        stats.dropped.load(Ordering::Relaxed) > 0,
        "the relay dropped nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_one_percent_loss() {
    transfers_survive(0.01).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_five_percent_loss() {
    transfers_survive(0.05).await;
}

/// Starts an ingress and two agents for tunnel `app`, each in front of its own fixture.
async fn two_agents() -> (RunningIngress, [Fixture; 2], [RunningAgent; 2], TempDir) {
    tunnel_tests::init_tracing();
    let state = TempDir::new("agents");
    let ingress = RunningIngress::start(loopback(0), loopback(0), state.path.clone(), |_| {})
        .await
        .expect("start ingress");
    let fixtures = [Fixture::start().await, Fixture::start().await];
    let mut agents = Vec::new();
    for fixture in &fixtures {
        let tunnels = [("app", fixture.addr)];
        let agent =
            RunningAgent::start_connected(ingress.quic_addr, &ingress.cert_sha256, TOKEN, &tunnels)
                .await;
        agents.push(agent);
    }
    let agents: [RunningAgent; 2] = agents.try_into().unwrap_or_else(|_| unreachable!());
    (ingress, fixtures, agents, state)
}

fn hits(fixture: &Fixture) -> usize {
    fixture.observed().hits.get("/small").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_across_agents() {
    let (ingress, fixtures, agents, _state) = two_agents().await;
    let url = format!("http://app.localhost:{}/small", ingress.http_addr.port());
    for _ in 0..20 {
        assert_eq!(get_all(Protocol::Http1, &url).await.status, 200);
    }
    assert_eq!(hits(&fixtures[0]) + hits(&fixtures[1]), 20);
    assert!(
        hits(&fixtures[0]) >= 5,
        "first agent served {}",
        hits(&fixtures[0])
    );
    assert!(
        hits(&fixtures[1]) >= 5,
        "second agent served {}",
        hits(&fixtures[1])
    );

    let [first, second] = agents;
    first.stop().await;
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(get_all(Protocol::Http1, &url).await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_request() {
    let (ingress, fixtures, agents, _state) = two_agents().await;
    let url = Arc::new(format!(
        "http://app.localhost:{}/drip?lines=3&interval_ms=50",
        ingress.http_addr.port()
    ));
    let stop_at = Instant::now() + Duration::from_secs(6);

    // Two clients in a bounded loop: each request takes about 100 ms while it is in flight.
    let mut load = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        load.push(tokio::spawn(async move {
            let client = client::client(Protocol::Http1);
            let mut outcomes = Vec::new();
            while Instant::now() < stop_at && outcomes.len() < 400 {
                let request = Request::get(url.as_str())
                    .body(client::empty())
                    .expect("valid request");
                let outcome = match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        match response.into_body().collect().await {
                            Ok(body) => {
                                let body = body.to_bytes();
                                if body.ends_with(b"\n") {
                                    Ok(())
                                } else {
                                    Err(format!("short body of {} bytes", body.len()))
                                }
                            }
                            Err(err) => Err(format!("body failed: {err}")),
                        }
                    }
                    Ok(response) => Err(format!("status {}", response.status())),
                    Err(err) => Err(format!("request failed: {err}")),
                };
                outcomes.push(outcome);
            }
            outcomes
        }));
    }

    // Restart each agent in turn while the load runs.
    let mut restarted = Vec::new();
    for (agent, fixture) in agents.into_iter().zip(&fixtures) {
        tokio::time::sleep(Duration::from_millis(800)).await;
        agent.stop().await;
        let tunnels = [("app", fixture.addr)];
        let agent =
            RunningAgent::start_connected(ingress.quic_addr, &ingress.cert_sha256, TOKEN, &tunnels)
                .await;
        restarted.push(agent);
    }

    let mut total = 0;
    for task in load {
        let outcomes = task.await.expect("load task");
        total += outcomes.len();
        let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {failures:?}",
            failures.len(),
            outcomes.len()
        );
    }
    eprintln!("rolling restart: {total} requests, none failed");
    assert!(total >= 20, "only {total} requests ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_shutdown_finishes_requests() {
    let tunnel = tunnel_tests::Tunnel::start().await;
    let tunnel_tests::Tunnel {
        fixture,
        ingress,
        agent,
        state_dir,
    } = tunnel;
    let url = format!(
        "http://app.localhost:{}/drip?lines=10&interval_ms=100",
        ingress.http_addr.port()
    );
    let in_flight =
        tokio::spawn(async move { collect(client::get(Protocol::Http1, &url).await).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    ingress.stop().await;
    let stopped_after = started.elapsed();
    let response = in_flight.await.expect("request task");
    assert_eq!(response.status, 200);
    assert_eq!(String::from_utf8_lossy(&response.body).lines().count(), 10);
    // It waited for the request (about 0.7 s left) but not for the whole grace period.
    assert!(
        stopped_after >= Duration::from_millis(400),
        "stopped after {stopped_after:?}"
    );
    assert!(
        stopped_after < Duration::from_secs(5),
        "stopped after {stopped_after:?}"
    );
    drop((fixture, agent, state_dir));
}
