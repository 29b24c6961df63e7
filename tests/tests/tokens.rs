//! The tokens file: each token serves only its names, a name served under one token cannot be
//! taken by another, and a reload takes effect without dropping connected agents.

use std::time::Duration;

use protocol::{HelloReply, RefuseReason};
use tunnel_tests::client::{get_all, Protocol};
use tunnel_tests::rogue::RogueAgent;
use tunnel_tests::{loopback, Fixture, RunningAgent, RunningIngress, TempDir};

async fn ingress_with_tokens(file_text: &str) -> (RunningIngress, TempDir, ingress::TokenReloader) {
    tunnel_tests::init_tracing();
    let state = TempDir::new("tokens");
    let file = state.path.join("tokens.toml");
    std::fs::write(&file, file_text).expect("write tokens file");
    let mut config = ingress::Config::without_token(loopback(0), loopback(0));
    config.state_dir = state.path.clone();
    config.tokens_file = Some(file);
    let (running, reloader) = RunningIngress::start_config(config)
        .await
        .expect("start ingress");
    (running, state, reloader)
}

fn refusal(reply: &HelloReply) -> Option<(RefuseReason, String)> {
    match reply {
        HelloReply::Refused { reason, message } => Some((*reason, message.clone())),
        HelloReply::Accepted { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_serves_only_its_names() {
    let (ingress, _state, _) =
        ingress_with_tokens("[tokens]\n\"alice\" = [\"app\"]\n\"bob\" = [\"api\"]\n").await;
    let allowed = RogueAgent::connect(ingress.quic_addr, "alice", &["app"])
        .await
        .expect("reply");
    assert_eq!(refusal(&allowed.reply), None);

    let denied = RogueAgent::connect(ingress.quic_addr, "alice", &["api"])
        .await
        .expect("reply");
    let (reason, message) = refusal(&denied.reply).expect("alice may not serve api");
    assert_eq!(reason, RefuseReason::NameNotAllowed);
    assert!(message.contains("\"api\""), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_taken_by_other_token_refused() {
    let (ingress, _state, _) =
        ingress_with_tokens("[tokens]\n\"alice\" = [\"*\"]\n\"bob\" = [\"*\"]\n").await;
    let first = RogueAgent::connect(ingress.quic_addr, "alice", &["app"])
        .await
        .expect("reply");
    assert_eq!(refusal(&first.reply), None);
    // The same token may add a second agent for high availability.
    let second = RogueAgent::connect(ingress.quic_addr, "alice", &["app"])
        .await
        .expect("reply");
    assert_eq!(refusal(&second.reply), None);

    let other = RogueAgent::connect(ingress.quic_addr, "bob", &["app"])
        .await
        .expect("reply");
    let (reason, message) = refusal(&other.reply).expect("bob may not take app");
    assert_eq!(reason, RefuseReason::NameTaken);
    assert!(message.contains("another token"), "{message}");

    // Once alice's agents are gone, the name is free again.
    first.connection.close(0u32.into(), b"done");
    second.connection.close(0u32.into(), b"done");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = RogueAgent::connect(ingress.quic_addr, "bob", &["app"])
        .await
        .expect("reply");
    assert_eq!(refusal(&later.reply), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_connected_agents() {
    let (ingress, state, reloader) = ingress_with_tokens("[tokens]\n\"old\" = [\"app\"]\n").await;
    let fixture = Fixture::start().await;
    let _agent = RunningAgent::start_connected(
        ingress.quic_addr,
        &ingress.cert_sha256,
        "old",
        &[("app", fixture.addr)],
    )
    .await;
    let url = format!("http://app.localhost:{}/small", ingress.http_addr.port());
    assert_eq!(get_all(Protocol::Http1, &url).await.status, 200);

    std::fs::write(
        state.path.join("tokens.toml"),
        "[tokens]\n\"new\" = [\"app\", \"other\"]\n",
    )
    .expect("rewrite");
    assert_eq!(reloader.reload().expect("reload"), 1);

    // The connected agent keeps serving; new handshakes use the new set.
    assert_eq!(get_all(Protocol::Http1, &url).await.status, 200);
    let old = RogueAgent::connect(ingress.quic_addr, "old", &["other"])
        .await
        .expect("reply");
    assert_eq!(
        refusal(&old.reply).map(|(reason, _)| reason),
        Some(RefuseReason::BadToken)
    );
    let new = RogueAgent::connect(ingress.quic_addr, "new", &["other"])
        .await
        .expect("reply");
    assert_eq!(refusal(&new.reply), None);
    // "app" is still served under the old token, so the new one cannot take it yet.
    let taken = RogueAgent::connect(ingress.quic_addr, "new", &["app"])
        .await
        .expect("reply");
    assert_eq!(
        refusal(&taken.reply).map(|(reason, _)| reason),
        Some(RefuseReason::NameTaken)
    );

    // A broken file is rejected and the current set stays in force.
    std::fs::write(state.path.join("tokens.toml"), "not toml [").expect("rewrite");
    assert!(reloader.reload().is_err());
    let still = RogueAgent::connect(ingress.quic_addr, "new", &["other"])
        .await
        .expect("reply");
    assert_eq!(refusal(&still.reply), None);
}
