//! `https://` upstreams: the agent speaks TLS to the upstream, HTTP/2 or HTTP/1.1 by ALPN,
//! checks its certificate against `--upstream-ca` (or skips the check with
//! `--upstream-insecure`), and carries WebSocket upgrades over TLS too. The upstream is the
//! fixture behind a TLS front with a self-signed certificate.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tunnel_agent::UpstreamProtocol;
use tunnel_tests::client::{self, collect, Protocol};
use tunnel_tests::fixture::{pattern, Fixture};
use tunnel_tests::tls_front::TlsFront;
use tunnel_tests::{loopback, RunningAgent, RunningIngress, TempDir, TOKEN};

struct Setup {
    fixture: Fixture,
    ingress: RunningIngress,
    _front: TlsFront,
    _agent: RunningAgent,
    _dir: TempDir,
}

impl Setup {
    /// Fixture behind a TLS front offering `alpn`, an ingress, and an agent serving tunnel
    /// `secure` from the front; `tweak` sets the agent's upstream trust.
    async fn start(
        alpn: &[&[u8]],
        tweak: impl FnOnce(&mut tunnel_agent::Config, &TlsFront),
    ) -> Setup {
        Self::start_marked(alpn, false, tweak).await
    }

    /// Like [`Setup::start`]; with `marked_ca` the front's certificate is marked as a CA.
    async fn start_marked(
        alpn: &[&[u8]],
        marked_ca: bool,
        tweak: impl FnOnce(&mut tunnel_agent::Config, &TlsFront),
    ) -> Setup {
        tunnel_tests::init_tracing();
        let dir = TempDir::new("https-upstream");
        let fixture = Fixture::start().await;
        let front = TlsFront::start(fixture.addr, &dir, alpn, marked_ca).await;
        let ingress = RunningIngress::start(loopback(0), loopback(0), dir.path.clone(), |_| {})
            .await
            .expect("start ingress");
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], front.addr.port()));
        let mut agent = RunningAgent::start_configured(
            ingress.quic_addr,
            &ingress.cert_sha256,
            TOKEN,
            &[("secure", upstream)],
            UpstreamProtocol::Https,
            |config| tweak(config, &front),
        )
        .expect("start agent");
        agent
            .wait_connected(Duration::from_secs(10))
            .await
            .expect("agent connected");
        Setup {
            fixture,
            ingress,
            _front: front,
            _agent: agent,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://secure.localhost:{}{path}",
            self.ingress.http_addr.port()
        )
    }
}

fn trust_front(config: &mut tunnel_agent::Config, front: &TlsFront) {
    config.upstream_ca = Some(front.ca_file.clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_chosen_by_alpn() {
    let setup = Setup::start(&[b"h2", b"http/1.1"], trust_front).await;
    let response = client::get(Protocol::Http1, &setup.url("/echo-headers")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-version"], "HTTP/2.0");
    let body = collect(response).await.body;
    let seen = String::from_utf8_lossy(&body);
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");

    // A 1 MiB upload arrives whole.
    let data = pattern(1 << 20);
    let request = Request::post(setup.url("/upload"))
        .body(client::full(data.clone()))
        .expect("valid request");
    let response = collect(client::send(Protocol::H2c, request).await).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        hex::encode(Sha256::digest(&data))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_when_upstream_offers_only_that() {
    let setup = Setup::start(&[b"http/1.1"], trust_front).await;
    let response = client::get(Protocol::H2c, &setup.url("/echo-headers")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-version"], "HTTP/1.1");
    let collected = collect(client::get(Protocol::Http1, &setup.url("/bytes/300000")).await).await;
    assert_eq!(collected.body, pattern(300_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls_upstream() {
    let setup = Setup::start(&[b"h2", b"http/1.1"], trust_front).await;
    let request = setup
        .url("/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .expect("valid URL");
    let tcp = tokio::net::TcpStream::connect(setup.ingress.http_addr)
        .await
        .expect("connect");
    let (mut socket, response) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    .expect("handshake within 5 s")
    .expect("handshake");
    assert_eq!(response.status(), 101);
    for i in 0..10 {
        let text = format!("over tls {i}");
        socket
            .send(Message::Text(text.clone()))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("echo within 5 s")
            .expect("socket open")
            .expect("message");
        assert_eq!(echoed, Message::Text(text));
    }
    assert_eq!(setup.fixture.observed().hits.get("/ws"), Some(&1));
}

/// Without the front's CA the certificate check fails: the client gets 502 naming the
/// certificate problem, and no request reaches the fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_gets_502() {
    let setup = Setup::start(&[b"h2", b"http/1.1"], |_, _| {}).await;
    let response = collect(client::get(Protocol::Http1, &setup.url("/small")).await).await;
    assert_eq!(response.status, 502);
    assert_eq!(response.headers["x-ingress-error"], "upstream-unreachable");
    let text = String::from_utf8_lossy(&response.body).to_lowercase();
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("--upstream-ca"), "{text}");
    assert!(setup.fixture.observed().hits.is_empty());
}

/// `--upstream-insecure` accepts the self-signed certificate without a CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_mode_accepts_self_signed() {
    let setup = Setup::start(&[b"h2", b"http/1.1"], |config, _| {
        config.upstream_insecure = true;
    })
    .await;
    let response = collect(client::get(Protocol::Http1, &setup.url("/small")).await).await;
    assert_eq!(response.status, 200);
    assert_eq!(setup.fixture.observed().hits.get("/small"), Some(&1));
}

/// A self-signed certificate marked as a CA, as `openssl req -x509` makes by default, is
/// accepted when `--upstream-ca` lists that very certificate. A chain check alone would reject
/// it as a CA used for a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_self_signed_ca_certificate_accepted() {
    let setup = Setup::start_marked(&[b"h2", b"http/1.1"], true, trust_front).await;
    let response = collect(client::get(Protocol::Http1, &setup.url("/small")).await).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}
