//! The tunnel used by real clients: curl over HTTP/1.1 and HTTP/2, and the Python websockets
//! and aiohttp WebSocket clients. Each test skips with a message when its client is missing;
//! `.ci/run` installs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tunnel_tests::fixture::{now_micros, pattern};
use tunnel_tests::Tunnel;

fn available(program: &str, probe: &[&str]) -> bool {
    let found = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if !found {
        eprintln!(
            "skipped: {program} {} failed or is not installed",
            probe.join(" ")
        );
    }
    found
}

/// Runs curl with `args` plus a mapping of every host to the ingress, returning stdout.
fn curl(tunnel: &Tunnel, args: &[&str]) -> Vec<u8> {
    let connect_to = format!("::127.0.0.1:{}", tunnel.ingress.http_addr.port());
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--connect-to",
            &connect_to,
        ])
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_download_and_upload_intact() {
    if !available("curl", &["--version"]) {
        return;
    }
    let tunnel = Tunnel::start().await;
    let url = tunnel.url("/bytes/3000000");
    let expected = hex::encode(Sha256::digest(pattern(3_000_000)));
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let body = tokio::task::block_in_place(|| curl(&tunnel, &[version, &url]));
        assert_eq!(body.len(), 3_000_000, "{version}");
        assert_eq!(hex::encode(Sha256::digest(&body)), expected, "{version}");
    }

    let upload = std::env::temp_dir().join(format!("curl-upload-{}", std::process::id()));
    std::fs::write(&upload, pattern(5_000_000)).expect("write upload file");
    let upload_arg = format!("@{}", upload.display());
    let upload_url = tunnel.url("/upload");
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        // curl sends `Expect: 100-continue` for an HTTP/1.1 body this large.
        let digest = tokio::task::block_in_place(|| {
            curl(
                &tunnel,
                &[version, "--data-binary", &upload_arg, &upload_url],
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&digest),
            hex::encode(Sha256::digest(pattern(5_000_000))),
            "{version}"
        );
    }
    let _ = std::fs::remove_file(upload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_sse_events_as_emitted() {
    if !available("curl", &["--version"]) {
        return;
    }
    let tunnel = Tunnel::start().await;
    let connect_to = format!("::127.0.0.1:{}", tunnel.ingress.http_addr.port());
    let url = tunnel.url("/sse?events=5&interval_ms=200");
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let delays = tokio::task::block_in_place(|| {
            let mut child = Command::new("curl")
                .args(["--silent", "--no-buffer", "--max-time", "20"])
                .args(["--connect-to", &connect_to, version, &url])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawning curl");
            let stdout = child.stdout.take().expect("curl stdout");
            let mut delays = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("utf-8 line from curl");
                if let Some(stamp) = line.strip_prefix("data: ") {
                    let emitted: u64 = stamp.parse().expect("timestamp");
                    delays.push(now_micros().saturating_sub(emitted));
                }
            }
            let _ = child.wait();
            delays
        });
        assert_eq!(delays.len(), 5, "{version}");
        for delay in delays {
            assert!(delay < 300_000, "{version}: event delayed by {delay} us");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_clients_work() {
    if !available("python3", &["-c", "import websockets, aiohttp"]) {
        return;
    }
    let tunnel = Tunnel::start_with(|config| config.default_tunnel = Some("app".into())).await;
    let url = format!("ws://127.0.0.1:{}/ws", tunnel.ingress.http_addr.port());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ws_clients.py");
    let started = Instant::now();
    let output = tokio::task::block_in_place(|| {
        Command::new("python3")
            .args([script, &url])
            .output()
            .expect("running python3")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("websockets ok"), "{stdout}");
    assert!(stdout.contains("aiohttp ok"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(40));

    let deadline = Instant::now() + Duration::from_secs(3);
    while !tunnel.fixture.observed().ws_close_codes.contains(&4005) {
        assert!(
            Instant::now() < deadline,
            "server never saw close code 4005"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
