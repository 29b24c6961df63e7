//! The connection to the ingress: dial, hello, serve streams, and reconnect with capped
//! exponential backoff and jitter when the connection drops.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use protocol::{Frame, Hello, HelloReply, RefuseReason};
use quinn::{Connection, Endpoint, SendStream};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use transport::{write_frame, FrameReader};

use crate::config::Config;
use crate::streams::{handle_stream, StreamContext};
use crate::{AgentError, Status};

/// Connects and reconnects until `shutdown` completes or the ingress refuses the agent for a
/// reason that retrying cannot fix.
pub(crate) async fn run(
    config: Config,
    client_config: quinn::ClientConfig,
    context: Arc<StreamContext>,
    status: watch::Sender<Status>,
    mut rebind: watch::Receiver<u64>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let mut endpoint: Option<(Endpoint, bool)> = None;
    let mut last_error = String::new();

    loop {
        let attempt = connect(&config, &client_config, &mut endpoint);
        let session = tokio::select! {
            session = attempt => session,
            _ = &mut shutdown => return Ok(()),
        };
        match session {
            Ok(session) => {
                backoff.reset();
                last_error.clear();
                tracing::info!(ingress = %session.peer, urls = %session.urls.join(" "), "tunnel up");
                let _ = status.send(Status::Connected {
                    urls: session.urls.clone(),
                });
                let local = endpoint.as_ref().map(|(endpoint, _)| endpoint.clone());
                let serving = serve(
                    session,
                    &context,
                    &config,
                    local,
                    &mut rebind,
                    shutdown.as_mut(),
                );
                match serving.await {
                    SessionEnd::Shutdown => {
                        // Wait for the close to reach the ingress, so it drops this agent now
                        // rather than after its idle timeout.
                        if let Some((endpoint, _)) = &endpoint {
                            let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
                        }
                        return Ok(());
                    }
                    SessionEnd::Lost(reason) => {
                        tracing::warn!(%reason, "tunnel down; reconnecting");
                        let _ = status.send(Status::Disconnected { reason });
                    }
                }
            }
            Err(Attempt::Refused { reason, message }) if !reason.is_retryable() => {
                let _ = status.send(Status::Refused {
                    message: message.clone(),
                });
                return Err(AgentError::Refused { reason, message });
            }
            Err(err) => {
                let text = err.to_string();
                // The same failure on every retry is logged once, then at debug level.
                if text != last_error {
                    tracing::warn!(error = %text, "failed to connect to ingress; retrying");
                    last_error = text.clone();
                } else {
                    tracing::debug!(error = %text, "failed to connect to ingress; retrying");
                }
                let _ = status.send(Status::Disconnected { reason: text });
            }
        }

        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

struct Session {
    connection: Connection,
    control: SendStream,
    control_reader: FrameReader,
    peer: SocketAddr,
    urls: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error("ingress refused the agent: {message}")]
    Refused {
        reason: RefuseReason,
        message: String,
    },
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Attempt {
    fn from(err: anyhow::Error) -> Self {
        Self::Failed(err)
    }
}

async fn connect(
    config: &Config,
    client_config: &quinn::ClientConfig,
    endpoint: &mut Option<(Endpoint, bool)>,
) -> Result<Session, Attempt> {
    let peer = resolve(&config.ingress).await?;
    let endpoint = local_endpoint(endpoint, peer.is_ipv6(), client_config)?;
    let connecting = endpoint
        .connect(peer, &config.server_name)
        .with_context(|| format!("failed to start QUIC connection to {peer}"))?;
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow!("QUIC handshake with {peer} timed out"))?
        .with_context(|| format!("QUIC handshake with {peer} failed"))?;

    let (mut control, recv) = connection
        .open_bi()
        .await
        .context("failed to open control stream")?;
    let hello = Frame::Hello(Hello {
        protocol_version: protocol::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        token: config.token.clone(),
        tunnels: config.tunnels.keys().cloned().collect(),
    });
    write_frame(&mut control, &hello, config.max_frame_len)
        .await
        .context("failed to send hello")?;

    let mut control_reader = FrameReader::new(recv, config.max_frame_len);
    let reply = tokio::time::timeout(CONNECT_TIMEOUT, control_reader.next())
        .await
        .map_err(|_| anyhow!("no hello reply from {peer}"))?
        .context("failed to read hello reply")?;
    match reply {
        Some(Frame::HelloReply(HelloReply::Accepted { urls, .. })) => Ok(Session {
            connection,
            control,
            control_reader,
            peer,
            urls,
        }),
        Some(Frame::HelloReply(HelloReply::Refused { reason, message })) => {
            connection.close(
                transport::code(protocol::code::HANDSHAKE_REFUSED),
                b"refused",
            );
            Err(Attempt::Refused { reason, message })
        }
        Some(other) => Err(anyhow!(
            "expected hello reply, got {} frame",
            other.frame_type().name()
        )
        .into()),
        None => Err(anyhow!("ingress closed the control stream without a reply").into()),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum wait on shutdown for the connection close to be sent and acknowledged.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

async fn resolve(ingress: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(ingress)
        .await
        .with_context(|| format!("failed to resolve ingress address {ingress:?}"))?;
    addrs
        .next()
        .with_context(|| format!("ingress address {ingress:?} resolved to nothing"))
}

/// Returns the local endpoint, making one for the peer's address family when needed. The
/// endpoint is kept across reconnects so the agent keeps its source port.
fn local_endpoint<'a>(
    slot: &'a mut Option<(Endpoint, bool)>,
    ipv6: bool,
    client_config: &quinn::ClientConfig,
) -> anyhow::Result<&'a Endpoint> {
    if slot.as_ref().is_some_and(|(_, v6)| *v6 != ipv6) {
        *slot = None;
    }
    if slot.is_none() {
        let bind: SocketAddr = if ipv6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = transport::bind_endpoint(bind, None)
            .with_context(|| format!("failed to bind UDP socket on {bind}"))?;
        endpoint.set_default_client_config(client_config.clone());
        *slot = Some((endpoint, ipv6));
    }
    match slot {
        Some((endpoint, _)) => Ok(endpoint),
        None => Err(anyhow!("no local endpoint")),
    }
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

async fn serve(
    mut session: Session,
    context: &Arc<StreamContext>,
    config: &Config,
    endpoint: Option<Endpoint>,
    rebind: &mut watch::Receiver<u64>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> SessionEnd {
    let tracker = TaskTracker::new();
    let mut control_open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => break,
            Ok(()) = rebind.changed() => rebind_socket(endpoint.as_ref(), &session),
            stream = session.connection.accept_bi() => match stream {
                Ok((send, recv)) => spawn_stream(&tracker, send, recv, context),
                Err(err) => return SessionEnd::Lost(err.to_string()),
            },
            frame = session.control_reader.next(), if control_open => {
                // The ingress sends nothing after its reply; an end here means it is closing.
                if !matches!(frame, Ok(Some(_))) {
                    control_open = false;
                }
            }
        }
    }

    drain(session, tracker, context, config).await;
    SessionEnd::Shutdown
}

/// Moves the endpoint to a new UDP socket on a new port. The connection migrates: the ingress
/// validates the new path and carries on, with streams intact.
fn rebind_socket(endpoint: Option<&Endpoint>, session: &Session) {
    let Some(endpoint) = endpoint else {
        return;
    };
    let bind: SocketAddr = if session.peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let result = transport::bind_udp(bind).and_then(|socket| endpoint.rebind(socket));
    match (result, endpoint.local_addr()) {
        (Ok(()), Ok(local)) => tracing::info!(%local, "rebound UDP socket; connection migrates"),
        (Ok(()), Err(_)) => tracing::info!("rebound UDP socket; connection migrates"),
        (Err(err), _) => tracing::warn!(%err, "failed to rebind UDP socket"),
    }
}

fn spawn_stream(
    tracker: &TaskTracker,
    send: SendStream,
    recv: quinn::RecvStream,
    context: &Arc<StreamContext>,
) {
    let span = tracing::debug_span!("stream", stream_id = send.id().index());
    tracker.spawn(handle_stream(send, recv, context.clone()).instrument(span));
}

/// Tells the ingress the agent is leaving, keeps serving streams it had already routed here,
/// and closes once they finish or the grace period ends.
async fn drain(
    mut session: Session,
    tracker: TaskTracker,
    context: &Arc<StreamContext>,
    config: &Config,
) {
    tracing::info!(grace = ?config.drain_grace, "draining: no new requests will be routed here");
    if let Err(err) = write_frame(&mut session.control, &Frame::Drain, config.max_frame_len).await {
        tracing::debug!(error = %err, "failed to send drain");
    }

    let finished = async {
        // Streams the ingress opened before it saw the drain frame may still arrive.
        tokio::time::sleep(DRAIN_SETTLE).await;
        tracker.close();
        tracker.wait().await;
    };
    let accept = async {
        while let Ok((send, recv)) = session.connection.accept_bi().await {
            spawn_stream(&tracker, send, recv, context);
        }
    };
    let waited = tokio::time::timeout(config.drain_grace, async {
        tokio::select! {
            _ = finished => {}
            _ = accept => {}
        }
    });
    if waited.await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "drain grace period over; closing with requests in flight"
        );
    }
    session.connection.close(
        transport::code(protocol::code::GOING_AWAY),
        b"agent shutting down",
    );
}

const DRAIN_SETTLE: Duration = Duration::from_millis(300);

/// Exponential backoff with full jitter in the upper half of each step.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut delays = Vec::new();
        for _ in 0..8 {
            delays.push(backoff.next_delay());
        }
        assert!(delays[0] >= Duration::from_millis(50));
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[7] >= Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
