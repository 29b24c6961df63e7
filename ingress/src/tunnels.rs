//! QUIC endpoint for agents: handshake on the control stream, registration, and removal when
//! the connection ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use protocol::{Frame, Hello, HelloReply, RefuseReason};
use quinn::{Connection, Incoming, SendStream};
use tokio::sync::Semaphore;
use tracing::Instrument;
use transport::{write_frame, FrameReader};

use crate::auth::{FailureLimiter, TokenId, Tokens};
use crate::registry::{check_tunnel_name, Agent};
use crate::{Config, State};

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
    let hello = read_hello(&mut reader, &connection).await?;

    let checked = check_hello(
        &hello,
        peer.ip(),
        &state.config,
        &state.tokens(),
        &state.failures,
    );
    let (token_id, names) = match checked {
        Ok(checked) => checked,
        Err((reason, message)) => {
            tracing::info!(?reason, %message, agent_version = %hello.agent_version, "agent refused");
            refuse(&connection, &mut send, reason, message, state).await;
            return Ok(None);
        }
    };

    let agent = Agent {
        id: state.registry.next_agent_id(),
        peer,
        token_id,
        connection: connection.clone(),
        streams: Arc::new(Semaphore::new(state.config.max_streams_per_agent as usize)),
        heard: Arc::new(std::sync::Mutex::new((0, Instant::now()))),
    };
    // Registering before the reply makes the name check and the claim one step, so two agents
    // of different tokens cannot both win a name.
    if let Err(name) = state.registry.register(&names, &agent) {
        let message = format!("tunnel {name:?} is already served under another token");
        tracing::info!(%message, "agent refused");
        refuse(
            &connection,
            &mut send,
            RefuseReason::NameTaken,
            message,
            state,
        )
        .await;
        return Ok(None);
    }
    let urls = names.iter().map(|name| state.public_url(name)).collect();
    let reply = Frame::HelloReply(HelloReply::Accepted {
        ingress_version: env!("CARGO_PKG_VERSION").to_string(),
        urls,
    });
    if let Err(err) = write_frame(&mut send, &reply, state.config.max_frame_len).await {
        state.registry.remove(agent.id);
        return Err(err).context("failed to send hello reply");
    }
    crate::registry::remember_names(&state.config.state_dir, &names);
    tracing::info!(
        agent_id = agent.id,
        tunnels = %names.join(","),
        agent_version = %hello.agent_version,
        token = %agent.token_id,
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

/// Reads the first frame of the control stream, which must be a hello. Anything else closes
/// the connection with the reason.
async fn read_hello(reader: &mut FrameReader, connection: &Connection) -> anyhow::Result<Hello> {
    let message = match reader.next().await {
        Ok(Some(Frame::Hello(hello))) => return Ok(hello),
        Ok(Some(other)) => format!("expected hello, got {} frame", other.frame_type().name()),
        Ok(None) => return Err(anyhow!("control stream ended before hello")),
        Err(err) => format!("invalid hello: {err}"),
    };
    connection.close(
        transport::code(protocol::code::PROTOCOL_ERROR),
        message.as_bytes(),
    );
    Err(anyhow!(message))
}

/// Checks the hello against the configuration and the accepted tokens, counting failures in
/// `failures`, and returns the token's id and the lower-cased tunnel names, or why it is
/// refused. Names already served under another token are checked at registration.
pub(crate) fn check_hello(
    hello: &Hello,
    peer: std::net::IpAddr,
    config: &Config,
    tokens: &Tokens,
    failures: &FailureLimiter,
) -> Result<(TokenId, Vec<String>), (RefuseReason, String)> {
    let now = Instant::now();
    if failures.is_limited(peer, now) {
        return Err((
            RefuseReason::RateLimited,
            "too many failed handshakes from this address; try again in a minute".to_string(),
        ));
    }
    if let Err(err) = protocol::check_version(hello.protocol_version) {
        return Err((RefuseReason::UnsupportedVersion, err.to_string()));
    }
    let Some((token_id, allowed)) = tokens.check(&hello.token) else {
        let count = failures.record(peer, now);
        return Err((
            RefuseReason::BadToken,
            format!("invalid token (failure {count} from this address this minute)"),
        ));
    };
    if hello.tunnels.is_empty() {
        return Err((
            RefuseReason::InvalidName,
            "hello names no tunnel".to_string(),
        ));
    }
    if hello.tunnels.len() > protocol::MAX_TUNNELS_PER_HELLO {
        return Err((
            RefuseReason::InvalidName,
            format!(
                "hello names {} tunnels; one agent may serve at most {}",
                hello.tunnels.len(),
                protocol::MAX_TUNNELS_PER_HELLO
            ),
        ));
    }

    let mut names = Vec::with_capacity(hello.tunnels.len());
    let mut seen = std::collections::HashSet::with_capacity(hello.tunnels.len());
    for name in &hello.tunnels {
        let name =
            check_tunnel_name(name).map_err(|err| (RefuseReason::InvalidName, err.to_string()))?;
        if config.only_declared && !config.declared_tunnels.contains(&name) {
            return Err((
                RefuseReason::NameNotAllowed,
                format!("tunnel name {name:?} is not declared on this ingress"),
            ));
        }
        if !allowed.permits(&name) {
            failures.record(peer, now);
            return Err((
                RefuseReason::NameNotAllowed,
                format!("this token may not serve tunnel {name:?}"),
            ));
        }
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    Ok((token_id, names))
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
        // The connection ended; its watcher in `serve_agent` logs that.
        Ok(None)
        | Err(transport::ReadFrameError::Read(_) | transport::ReadFrameError::Reset(_)) => false,
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
