//! An agent that breaks the protocol, on purpose or by a bug, costs only its own streams or its
//! own connection: the ingress sends the client a 502, logs, and keeps serving other
//! tunnels.

use std::time::Duration;

use protocol::{Frame, Header, ResponseHead};
use tunnel_tests::client::{get_all, Protocol};
use tunnel_tests::rogue::{encoded, RogueAgent};
use tunnel_tests::{Tunnel, TOKEN};

async fn rogue(tunnel: &Tunnel) -> RogueAgent {
    let agent = RogueAgent::connect(tunnel.ingress.quic_addr, TOKEN, &["rogue"])
        .await
        .expect("rogue agent connects");
    assert!(
        matches!(agent.reply, protocol::HelloReply::Accepted { .. }),
        "{:?}",
        agent.reply
    );
    agent
}

/// Encodes a response head with a body to follow.
fn response_head(status: u16, headers: Vec<Header>) -> Vec<u8> {
    encoded(&Frame::ResponseHead(ResponseHead {
        status,
        headers,
        empty_body: false,
    }))
}

fn rogue_url(tunnel: &Tunnel) -> String {
    format!(
        "http://rogue.localhost:{}/",
        tunnel.ingress.http_addr.port()
    )
}

/// Sends one request to the rogue tunnel, writes `bytes` as the agent's side of the stream, and
/// returns the client's status and `x-ingress-error`, after checking the honest tunnel still
/// works.
async fn answer_with(bytes: Vec<u8>) -> (u16, String) {
    let tunnel = Tunnel::start().await;
    let agent = rogue(&tunnel).await;
    let url = rogue_url(&tunnel);
    let client = tokio::spawn(async move { get_all(Protocol::Http1, &url).await });

    let (mut send, _head, _recv) =
        tokio::time::timeout(Duration::from_secs(5), agent.next_request())
            .await
            .expect("request reaches the rogue agent")
            .expect("request head");
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();

    let response = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("client answered within 5 s")
        .expect("client task");
    let cause = response
        .headers
        .get("x-ingress-error")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string();

    let honest = get_all(Protocol::Http1, &tunnel.url("/small")).await;
    assert_eq!(honest.status, 200, "the honest tunnel stopped working");
    (response.status.as_u16(), cause)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_status_code_is_502() {
    let head = response_head(1000, vec![]);
    assert_eq!(
        answer_with(head).await,
        (502, "bad-agent-response".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_status_is_502() {
    let head = response_head(103, vec![]);
    assert_eq!(
        answer_with(head).await,
        (502, "bad-agent-response".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_header_bytes_are_502() {
    let head = response_head(200, vec![Header::new("x-bad", b"line\r\nbreak".to_vec())]);
    assert_eq!(
        answer_with(head).await,
        (502, "bad-agent-response".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_502() {
    // A response head claiming 2 GiB: rejected from its length alone.
    let bytes = vec![0x04, 0x80, 0x00, 0x00, 0x00, 1, 2, 3];
    assert_eq!(answer_with(bytes).await, (502, "agent-lost".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_502() {
    let bytes = b"HTTP/1.1 200 OK\r\n\r\nnot frames".to_vec();
    assert_eq!(answer_with(bytes).await, (502, "agent-lost".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_first_frame_is_502() {
    assert_eq!(
        answer_with(encoded(&Frame::End)).await,
        (502, "bad-agent-response".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_opened_by_agent_closes_it() {
    let tunnel = Tunnel::start().await;
    let agent = rogue(&tunnel).await;
    let (mut send, _recv) = agent.connection.open_bi().await.expect("open a stream");
    let _ = send.write_all(&encoded(&Frame::End)).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), agent.connection.closed()).await;
    let reason = closed.expect("ingress closes the rogue connection within 5 s");
    assert!(
        reason.to_string().contains("may not open streams"),
        "{reason}"
    );

    assert_eq!(
        get_all(Protocol::Http1, &rogue_url(&tunnel)).await.status,
        502
    );
    assert_eq!(
        get_all(Protocol::Http1, &tunnel.url("/small")).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_hello_closes_connection() {
    let tunnel = Tunnel::start().await;
    let opening = [0x01, 0xff, 0xff, 0xff, 0xff];
    let result = RogueAgent::connect_raw(tunnel.ingress.quic_addr, &opening).await;
    assert!(result.is_err(), "an oversize hello got a reply");
    assert_eq!(
        get_all(Protocol::Http1, &tunnel.url("/small")).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_frames_after_end_are_ignored_safely() {
    // A valid response followed by junk after the end frame: the client gets the valid response.
    let mut bytes = response_head(200, vec![Header::new("content-length", "2")]);
    bytes.extend(encoded(&Frame::Data(bytes::Bytes::from_static(b"ok"))));
    bytes.extend(encoded(&Frame::End));
    bytes.extend(b"trailing junk");
    assert_eq!(answer_with(bytes).await, (200, String::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_hello_length_does_not_crash_ingress() {
    let tunnel = Tunnel::start().await;
    // A 14-byte hello whose agent version claims 2^57 bytes.
    let mut payload = vec![0x01, 0xfd];
    payload.extend_from_slice(&(1u64 << 57).to_le_bytes());
    payload.extend_from_slice(b"abc");
    let mut opening = vec![0x01];
    opening.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    opening.extend_from_slice(&payload);
    let result = RogueAgent::connect_raw(tunnel.ingress.quic_addr, &opening).await;
    assert!(result.is_err(), "a malformed hello got a reply");
    assert_eq!(
        get_all(Protocol::Http1, &tunnel.url("/small")).await.status,
        200
    );
}

/// A hello with more names than one agent may serve is rejected at once, however many names
/// it carries: 30,000 distinct names are refused as quickly as 257. (A hello much larger than
/// that is over the decoder's allocation limit and closes the connection before any check.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_too_many_names_rejected() {
    let tunnel = Tunnel::start().await;
    for count in [protocol::MAX_TUNNELS_PER_HELLO + 1, 30_000] {
        let names: Vec<String> = (0..count).map(|i| format!("n{i:x}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let agent = RogueAgent::connect(tunnel.ingress.quic_addr, TOKEN, &names)
            .await
            .expect("a reply to the hello");
        let elapsed = started.elapsed();
        match &agent.reply {
            protocol::HelloReply::Refused { reason, message } => {
                assert_eq!(*reason, protocol::RefuseReason::InvalidName, "{message}");
                assert!(message.contains("at most 256"), "{message}");
            }
            other => panic!("{count} names accepted: {other:?}"),
        }
        assert!(
            elapsed < Duration::from_secs(5),
            "{count} names took {elapsed:?}"
        );
    }
    // The tunnel of the well-behaved agent is untouched.
    let response = tunnel_tests::client::get(Protocol::Http1, &tunnel.url("/small")).await;
    assert_eq!(response.status(), 200);
}
