//! Crashes, as `kill -9` does them, of the real binaries on loopback: the other side notices
//! within seconds, not after an idle timeout, and traffic flows again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tunnel_tests::client::{get_all, Protocol};
use tunnel_tests::process::{binary, wait_for_line};
use tunnel_tests::{Fixture, TempDir};

/// Child processes killed by PID when the test ends.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

fn start_ingress(http: u16, quic: u16, state: &TempDir) -> (Child, String) {
    spawn_ingress(http, quic, state, &["--token".into(), "crash-token".into()])
}

/// Starts the ingress binary on loopback with `auth` (its token flags) and returns it with the
/// certificate fingerprint it prints.
fn spawn_ingress(
    http: u16,
    quic: u16,
    state: &TempDir,
    auth: &[std::ffi::OsString],
) -> (Child, String) {
    let mut child = Command::new(binary("ingress"))
        .args([
            "--http",
            &format!("127.0.0.1:{http}"),
            "--quic",
            &format!("127.0.0.1:{quic}"),
        ])
        .args(auth)
        .arg("--state-dir")
        .arg(&state.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ingress");
    let stdout = child.stdout.take().expect("ingress stdout");
    let line = wait_for_line(stdout, "QUIC certificate SHA-256:");
    let fingerprint = line.rsplit(' ').next().expect("fingerprint").to_string();
    (child, fingerprint)
}

fn start_agent(quic: u16, fingerprint: &str, upstream: std::net::SocketAddr) -> Child {
    Command::new(binary("tunnel-agent"))
        .args([
            "--ingress",
            &format!("127.0.0.1:{quic}"),
            "--cert-sha256",
            fingerprint,
        ])
        .args([
            "--token",
            "crash-token",
            "--tunnel",
            &format!("app=http://{upstream}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent")
}

/// Polls `url` until it returns 200 and returns how long that took.
async fn time_until_ok(url: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        // The test client panics on a refused connection, so each try runs in its own task and
        // a panic counts as "not yet".
        let owned = url.to_string();
        let attempt = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(2), get_all(Protocol::Http1, &owned)).await
        });
        if let Ok(Ok(response)) = attempt.await {
            if response.status == 200 {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < limit, "no 200 within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fixture, an ingress process and an agent process, with the tunnel up.
struct Running {
    fixture: Fixture,
    state: TempDir,
    http: u16,
    quic: u16,
    /// The ingress first, then the agent.
    children: Children,
    fingerprint: String,
    /// URL of the fixture's `/small` through the tunnel.
    url: String,
}

async fn start_running() -> Running {
    tunnel_tests::init_tracing();
    let fixture = Fixture::start().await;
    let state = TempDir::new("crash");
    let (http, quic) = (free_port(), free_port());
    let mut children = Children::default();
    let (ingress, fingerprint) = start_ingress(http, quic, &state);
    children.0.push(ingress);
    children
        .0
        .push(start_agent(quic, &fingerprint, fixture.addr));
    let url = format!("http://app.localhost:{http}/small");
    time_until_ok(&url, Duration::from_secs(15)).await;
    Running {
        fixture,
        state,
        http,
        quic,
        children,
        fingerprint,
        url,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_recovers_from_ingress_crash() {
    // Bound with `_` names, not ignored, so the fixture lives to the end.
    let Running {
        fixture: _fixture,
        state,
        http,
        quic,
        mut children,
        fingerprint: _fingerprint,
        url,
    } = start_running().await;

    // SIGKILL: the old process sends nothing, not even a close.
    let mut crashed = children.0.remove(0);
    crashed.kill().expect("kill ingress");
    let _ = crashed.wait();
    let (ingress, _) = start_ingress(http, quic, &state);
    children.0.push(ingress);

    // The agent's next keep-alive reaches the new process, which resets the old connection
    // with the stateless reset key it kept; the agent reconnects at once.
    let during = get_all(Protocol::Http1, &url).await;
    assert_eq!(
        during.status, 502,
        "a known tunnel without its agent must be 502, not 404"
    );
    let took = time_until_ok(&url, Duration::from_secs(15)).await;
    eprintln!("after kill -9 and restart of the ingress, traffic flowed again after {took:?}");
    assert!(took < Duration::from_secs(6), "tunnel back after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routes_around_killed_agent() {
    // Bound with `_` names, not ignored, so the fixture and the state folder live to the end.
    let Running {
        fixture,
        state: _state,
        http: _http,
        quic,
        mut children,
        fingerprint,
        url,
    } = start_running().await;

    // kill -9 the agent and start a new one at once, as a supervisor would.
    let mut killed = children.0.remove(1);
    killed.kill().expect("kill agent");
    let _ = killed.wait();
    children
        .0
        .push(start_agent(quic, &fingerprint, fixture.addr));
    time_until_ok(&url, Duration::from_secs(15)).await;

    // Once the dead connection has gone quiet, every request goes to the live agent.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for _ in 0..10 {
        let started = Instant::now();
        let response = get_all(Protocol::Http1, &url).await;
        assert_eq!(response.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_tokens_file() {
    tunnel_tests::init_tracing();
    let state = TempDir::new("sighup");
    let tokens = state.path.join("tokens.toml");
    std::fs::write(&tokens, "[tokens]\n\"first\" = [\"app\"]\n").expect("write tokens file");
    let quic = free_port();
    let auth = ["--tokens-file".into(), tokens.clone().into_os_string()];
    let (child, _) = spawn_ingress(free_port(), quic, &state, &auth);
    let mut children = Children(vec![child]);
    let ingress: std::net::SocketAddr = format!("127.0.0.1:{quic}").parse().expect("address");

    let refused = tunnel_tests::rogue::RogueAgent::connect(ingress, "second", &["app"])
        .await
        .expect("reply");
    assert!(matches!(
        refused.reply,
        protocol::HelloReply::Refused { .. }
    ));

    std::fs::write(&tokens, "[tokens]\n\"second\" = [\"app\"]\n").expect("rewrite tokens file");
    let pid = children.0[0].id().to_string();
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let agent = tunnel_tests::rogue::RogueAgent::connect(ingress, "second", &["app"])
            .await
            .expect("reply");
        if matches!(agent.reply, protocol::HelloReply::Accepted { .. }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new token was not accepted after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The process is still the same one: SIGHUP reloaded, it did not stop.
    assert!(children.0[0].try_wait().expect("child status").is_none());
}
