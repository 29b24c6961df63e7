//! HTTPS on the public listener: HTTP/1.1 and HTTP/2 chosen by ALPN, WebSocket over TLS, and
//! `X-Forwarded-Proto: https` towards the upstream. Uses curl and Python as real clients; each
//! test skips with a message when they are missing.

use std::path::PathBuf;
use std::process::Command;

use tunnel_tests::{TempDir, Tunnel};

/// Writes a self-signed certificate for `*.localhost` and returns (cert, key) paths.
fn make_certificate(dir: &TempDir) -> (PathBuf, PathBuf) {
    let names = vec!["app.localhost".to_string(), "localhost".to_string()];
    let generated = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    let cert = dir.path.join("public-cert.pem");
    let key = dir.path.join("public-key.pem");
    std::fs::write(&cert, generated.cert.pem()).expect("write certificate");
    std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    (cert, key)
}

async fn tls_tunnel(dir: &TempDir) -> (Tunnel, PathBuf) {
    tls_tunnel_with(dir, |_| {}).await
}

async fn tls_tunnel_with(
    dir: &TempDir,
    tweak: impl FnOnce(&mut ingress::Config),
) -> (Tunnel, PathBuf) {
    let (cert, key) = make_certificate(dir);
    let tunnel = Tunnel::start_with(|config| {
        config.public_tls = Some((cert.clone(), key));
        config.default_tunnel = Some("app".into());
        tweak(config);
    })
    .await;
    (tunnel, cert)
}

fn curl_available() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !ok {
        eprintln!("skipped: curl is not installed");
    }
    ok
}

fn curl(tunnel: &Tunnel, ca: &PathBuf, args: &[&str]) -> (String, String) {
    let connect_to = format!("::127.0.0.1:{}", tunnel.ingress.http_addr.port());
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args([
            "--connect-to",
            &connect_to,
            "--write-out",
            "\n%{http_version}",
        ])
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, version) = text.rsplit_once('\n').expect("write-out line");
    (body.to_string(), version.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_both_versions() {
    if !curl_available() {
        return;
    }
    let dir = TempDir::new("public-tls");
    let (tunnel, ca) = tls_tunnel(&dir).await;
    let url = format!(
        "https://app.localhost:{}/small",
        tunnel.ingress.http_addr.port()
    );
    let (body, version) = tokio::task::block_in_place(|| curl(&tunnel, &ca, &["--http1.1", &url]));
    assert_eq!(body, "hello, world\n");
    assert_eq!(version, "1.1");
    let (body, version) = tokio::task::block_in_place(|| curl(&tunnel, &ca, &["--http2", &url]));
    assert_eq!(body, "hello, world\n");
    assert_eq!(version, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sets_forwarded_proto() {
    if !curl_available() {
        return;
    }
    let dir = TempDir::new("public-tls");
    let (tunnel, ca) = tls_tunnel(&dir).await;
    let url = format!(
        "https://app.localhost:{}/echo-headers",
        tunnel.ingress.http_addr.port()
    );
    let (body, _) = tokio::task::block_in_place(|| curl(&tunnel, &ca, &[&url]));
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_https_listener_fails() {
    if !curl_available() {
        return;
    }
    let dir = TempDir::new("public-tls");
    let (tunnel, _) = tls_tunnel(&dir).await;
    let url = format!("http://127.0.0.1:{}/small", tunnel.ingress.http_addr.port());
    let output = Command::new("curl")
        .args(["--silent", "--max-time", "5", &url])
        .output()
        .expect("running curl");
    assert!(
        !output.status.success(),
        "plain HTTP got an answer from the HTTPS listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls() {
    let probe = Command::new("python3")
        .args(["-c", "import websockets"])
        .output();
    if !probe.is_ok_and(|output| output.status.success()) {
        eprintln!("skipped: python3 with websockets is not installed");
        return;
    }
    let dir = TempDir::new("public-tls");
    let (tunnel, ca) = tls_tunnel(&dir).await;
    let script = r#"
import asyncio, ssl, sys, websockets
async def main():
    context = ssl.create_default_context(cafile=sys.argv[2])
    async with websockets.connect(sys.argv[1], ssl=context, server_hostname="app.localhost") as socket:
        for i in range(10):
            await socket.send(f"tls {i}")
            assert await socket.recv() == f"tls {i}"
    print("ok")
asyncio.run(asyncio.wait_for(main(), 20))
"#;
    let url = format!("wss://127.0.0.1:{}/ws", tunnel.ingress.http_addr.port());
    let tunnel_url = url.clone();
    let output = tokio::task::block_in_place(|| {
        Command::new("python3")
            .args(["-c", script, &tunnel_url])
            .arg(&ca)
            .output()
            .expect("running python3")
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}

/// Over TLS, a request head that starts and does not finish within the header read timeout
/// gets 408, as over plain HTTP; a silent TLS connection is closed without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_head_over_tls_gets_408() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = TempDir::new("public-tls");
    let (tunnel, ca) = tls_tunnel_with(&dir, |config| {
        config.header_read_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca).expect("read certificate"))
        .expect("add root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let name = ServerName::try_from("app.localhost").expect("server name");

    for (head, expect_408) in [
        (&b"GET /small HTTP/1.1\r\nHost: app.lo"[..], true),
        (&b""[..], false),
    ] {
        let tcp = tokio::net::TcpStream::connect(tunnel.ingress.http_addr)
            .await
            .expect("connect");
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .expect("TLS handshake");
        tls.write_all(head).await.expect("write part of a head");
        let started = std::time::Instant::now();
        let mut received = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tls.read_to_end(&mut received),
        )
        .await
        .expect("the ingress closed the connection within 5 s");
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&received);
        if expect_408 {
            read.expect("clean TLS close after the 408");
            assert!(
                text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
                "{text:?}"
            );
        } else {
            assert!(received.is_empty(), "{text:?}");
        }
        assert!(
            elapsed >= std::time::Duration::from_millis(400),
            "closed after {elapsed:?}"
        );
    }
    assert_eq!(tunnel.fixture.observed().hits.values().sum::<usize>(), 0);
}
