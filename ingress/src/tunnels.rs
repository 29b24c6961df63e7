//! QUIC endpoint for agents: handshake on the control stream, registration, and removal when
//! the connection ends.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use protocol::{Frame, Hello, HelloReply, RefuseReason};
use quinn::{Connection, Incoming, SendStream};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use transport::{write_frame, FrameReader};

use crate::registry::{check_tunnel_name, Agent};
use crate::State;

/// Accepts agent connections until the endpoint is closed.
pub(crate) async fn accept_agents(endpoint: quinn::Endpoint, state: Arc<State>) {
    while let Some(incoming) = endpoint.accept().await {
        let peer = incoming.remote_address();
        let span = tracing::info_span!("agent", %peer, tunnel = tracing::field::Empty);
        tokio::spawn(serve_agent(incoming, state.clone()).instrument(span));
    }
}

async fn serve_agent(incoming: Incoming, state: Arc<State>) {
    let peer = incoming.remote_address();
    let handshake =
        tokio::time::timeout(state.config.handshake_timeout, handshake(incoming, &state));
    let (agent, names) = match handshake.await {
        Ok(Ok(Some(accepted))) => accepted,
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            tracing::info!(error = %format!("{err:#}"), "agent handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "agent handshake timed out");
            return;
        }
    };

    tracing::Span::current().record("tunnel", names.join(",").as_str());
    let reason = agent.connection.closed().await;
    state.registry.remove(agent.id);
    tracing::info!(%reason, "agent disconnected");
}

/// Runs the hello exchange. Returns the registered agent, or `None` after refusing it.
async fn handshake(
    incoming: Incoming,
    state: &State,
) -> anyhow::Result<Option<(Agent, Vec<String>)>> {
    let peer = incoming.remote_address();
    let connection = incoming.await.context("QUIC handshake failed")?;
    let (mut send, recv) = connection
        .accept_bi()
        .await
        .context("agent opened no control stream")?;
    let mut reader = FrameReader::new(recv, state.config.max_frame_len);
    let hello = match reader.next().await.context("failed to read hello")? {
        Some(Frame::Hello(hello)) => hello,
        Some(other) => {
            let message = format!("expected hello, got {} frame", other.frame_type().name());
            connection.close(
                transport::code(protocol::code::PROTOCOL_ERROR),
                message.as_bytes(),
            );
            return Err(anyhow!(message));
        }
        None => return Err(anyhow!("control stream ended before hello")),
    };

    let names = match check_hello(&hello, state) {
        Ok(names) => names,
        Err((reason, message)) => {
            tracing::info!(?reason, %message, agent_version = %hello.agent_version, "agent refused");
            refuse(&connection, &mut send, reason, message, state).await;
            return Ok(None);
        }
    };

    let agent = Agent {
        id: state.registry.next_agent_id(),
        peer,
        connection: connection.clone(),
    };
    let urls = names.iter().map(|name| state.public_url(name)).collect();
    let reply = Frame::HelloReply(HelloReply::Accepted {
        ingress_version: env!("CARGO_PKG_VERSION").to_string(),
        urls,
    });
    write_frame(&mut send, &reply, state.config.max_frame_len)
        .await
        .context("failed to send hello reply")?;
    state.registry.register(&names, &agent);
    crate::registry::remember_names(&state.config.state_dir, &names);
    tracing::info!(
        agent_id = agent.id,
        tunnels = %names.join(","),
        agent_version = %hello.agent_version,
        "agent connected"
    );

    tokio::spawn(watch_control(
        reader,
        send,
        agent.clone(),
        state.registry_handle(),
    ));
    Ok(Some((agent, names)))
}

/// Checks the hello and returns the lower-cased tunnel names, or why it is refused.
fn check_hello(hello: &Hello, state: &State) -> Result<Vec<String>, (RefuseReason, String)> {
    if let Err(err) = protocol::check_version(hello.protocol_version) {
        return Err((RefuseReason::UnsupportedVersion, err.to_string()));
    }
    if !tokens_match(&hello.token, &state.config.token) {
        return Err((RefuseReason::BadToken, "invalid token".to_string()));
    }
    if hello.tunnels.is_empty() {
        return Err((
            RefuseReason::InvalidName,
            "hello names no tunnel".to_string(),
        ));
    }

    let mut names = Vec::with_capacity(hello.tunnels.len());
    for name in &hello.tunnels {
        let name =
            check_tunnel_name(name).map_err(|err| (RefuseReason::InvalidName, err.to_string()))?;
        if state.config.only_declared && !state.config.declared_tunnels.contains(&name) {
            return Err((
                RefuseReason::NameNotAllowed,
                format!("tunnel name {name:?} is not declared on this ingress"),
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Compares two tokens in time that depends on neither content nor length, by comparing their
/// SHA-256 digests with a fold that does not stop at the first difference.
fn tokens_match(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

async fn refuse(
    connection: &Connection,
    send: &mut SendStream,
    reason: RefuseReason,
    message: String,
    state: &State,
) {
    let reply = Frame::HelloReply(HelloReply::Refused {
        reason,
        message: message.clone(),
    });
    if write_frame(send, &reply, state.config.max_frame_len)
        .await
        .is_ok()
    {
        let _ = send.finish();
        // Give the agent a moment to read the reply and close the connection itself, so the
        // reason reaches it before the close does.
        let _ = tokio::time::timeout(REFUSAL_GRACE, connection.closed()).await;
    }
    connection.close(
        transport::code(protocol::code::HANDSHAKE_REFUSED),
        message.as_bytes(),
    );
}

const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// Reads the rest of the control stream. A drain frame takes the agent out of rotation while
/// its in-flight streams finish; the connection's end removes it for good. A stream the agent
/// opens itself is not part of the protocol and closes its connection.
async fn watch_control(
    mut reader: FrameReader,
    _send: SendStream,
    agent: Agent,
    registry: Arc<crate::registry::Registry>,
) {
    let mut control_open = true;
    loop {
        tokio::select! {
            frame = reader.next(), if control_open => {
                control_open = on_control_frame(frame, &agent, &registry);
            }
            stream = agent.connection.accept_bi() => match stream {
                Ok((send, recv)) => reject_agent_stream(send, recv, &agent),
                Err(_) => return,
            },
        }
    }
}

/// Handles one control-stream read; returns whether the control stream is still open.
fn on_control_frame(
    frame: Result<Option<Frame>, transport::ReadFrameError>,
    agent: &Agent,
    registry: &crate::registry::Registry,
) -> bool {
    match frame {
        Ok(Some(Frame::Drain)) => {
            tracing::info!(agent_id = agent.id, peer = %agent.peer, "agent is draining");
            registry.remove(agent.id);
            true
        }
        Ok(Some(other)) => {
            tracing::warn!(
                agent_id = agent.id,
                frame = other.frame_type().name(),
                "unexpected frame on control stream; closing agent connection"
            );
            agent.connection.close(
                transport::code(protocol::code::PROTOCOL_ERROR),
                b"unexpected frame on control stream",
            );
            false
        }
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(agent_id = agent.id, error = %err, "invalid control stream; closing agent connection");
            agent.connection.close(
                transport::code(protocol::code::PROTOCOL_ERROR),
                b"invalid control stream",
            );
            false
        }
    }
}

fn reject_agent_stream(mut send: SendStream, mut recv: quinn::RecvStream, agent: &Agent) {
    tracing::warn!(
        agent_id = agent.id,
        peer = %agent.peer,
        "agent opened a stream of its own; closing agent connection"
    );
    let code = transport::code(protocol::code::PROTOCOL_ERROR);
    let _ = send.reset(code);
    let _ = recv.stop(code);
    agent.connection.close(
        code,
        b"agents may not open streams after the control stream",
    );
}
