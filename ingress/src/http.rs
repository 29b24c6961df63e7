//! Public HTTP listener: accepts TCP connections, serves HTTP/1.1 and prior-knowledge HTTP/2 on
//! each, and routes every request by its Host to a tunnel.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use std::time::Duration;

use http::{HeaderValue, StatusCode};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use transport::SharedTcp;

use crate::error::ProxyError;
use crate::h1_check::{CheckLog, Checked, HeadCheck};
use crate::limits::ConnectionPermit;
use crate::shared_stream::{LateWrite, SharedStream};
use crate::{forward, ProxyBody, State};

/// Accepts public connections until the listener fails.
pub(crate) async fn accept_clients(
    listener: TcpListener,
    state: Arc<State>,
    connections: TaskTracker,
    draining: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Running out of file descriptors is the usual cause; back off instead of
                // spinning on the same error.
                tracing::warn!(%err, "failed to accept public connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let span = tracing::debug_span!("client", %peer);
        // A trusted proxy carries many clients, so its connections are not counted.
        let admission = if state.proxies.trusts(peer.ip()) {
            Admission::TrustedProxy
        } else {
            match state.connection_limiter.acquire(peer.ip()) {
                Some(permit) => Admission::Counted(Arc::new(permit)),
                None => {
                    tracing::debug!(%peer, "too many connections from this address; answering 503");
                    Admission::OverLimit
                }
            }
        };
        let serve = serve_client(stream, peer, admission, state.clone(), draining.clone());
        connections.spawn(serve.instrument(span));
    }
}

/// Admission of a public connection: whether it may send requests, and its slot while open.
enum Admission {
    /// Its slot under the per-address limit, held until the connection and every request on
    /// it, upgrades included, have ended.
    Counted(Arc<ConnectionPermit>),
    TrustedProxy,
    /// Its address is over the connection limit: every request on it gets 503 and the
    /// connection closes.
    OverLimit,
}

/// Connection details shared with the service for its requests.
#[derive(Clone)]
struct ConnectionInfo {
    peer: SocketAddr,
    scheme: &'static str,
    over_limit: bool,
    /// Results of the HTTP/1.1 framing check; `None` on HTTP/2.
    checks: Option<Arc<CheckLog>>,
    activity: Activity,
}

/// Serves one public connection.
async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    state: Arc<State>,
    draining: watch::Receiver<bool>,
) {
    let over_limit = matches!(admission, Admission::OverLimit);
    let slot = match admission {
        Admission::Counted(permit) => Some(permit),
        Admission::TrustedProxy | Admission::OverLimit => None,
    };
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "failed to set TCP_NODELAY");
    }
    let info = |scheme, checks| ConnectionInfo {
        peer,
        scheme,
        over_limit,
        checks,
        activity: Activity::new(slot.clone()),
    };
    let Some(acceptor) = state.public_tls.clone() else {
        // The protocol is picked by peeking at the first bytes instead of by hyper-util's auto
        // builder. The auto builder wraps the socket in a private type, and an upgraded
        // connection could then not be taken back as the plain socket that the buffer-free
        // splice needs.
        let h2 = match starts_with_h2_preface(&stream, state.config.header_read_timeout).await {
            Ok(h2) => h2,
            Err(err) => {
                tracing::debug!(error = %err, "public connection failed before the first request");
                return;
            }
        };
        if h2 {
            let _ = serve_h2(TokioIo::new(stream), info("http", None), state, draining).await;
            return;
        }
        let shared = SharedTcp::new(stream);
        serve_h1_with_408(shared, |checks| info("http", Some(checks)), state, draining).await;
        return;
    };

    let handshake = tokio::time::timeout(state.config.header_read_timeout, acceptor.accept(stream));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    if h2 {
        let _ = serve_h2(TokioIo::new(tls), info("https", None), state, draining).await;
    } else {
        let shared = SharedStream::new(tls);
        serve_h1_with_408(
            shared,
            |checks| info("https", Some(checks)),
            state,
            draining,
        )
        .await;
    }
}

/// Serves HTTP/1.1 on `shared` behind the framing check, and sends 408 when a request head
/// that has started misses the header read timeout.
async fn serve_h1_with_408<S>(
    shared: S,
    info: impl FnOnce(Arc<CheckLog>) -> ConnectionInfo,
    state: Arc<State>,
    draining: watch::Receiver<bool>,
) where
    S: LateWrite + tokio::io::AsyncRead + tokio::io::AsyncWrite + Clone + Unpin + Send + 'static,
{
    let (checked, checks) = checked(shared.clone(), &state);
    let result = serve_h1(TokioIo::new(checked), info(checks.clone()), state, draining).await;
    if let Err(err) = result {
        if err.is_timeout() && checks.head_pending() {
            let written = shared.write_and_close(REQUEST_TIMEOUT_RESPONSE);
            let _ = tokio::time::timeout(LATE_WRITE_LIMIT, written).await;
        }
    }
}

/// Sent for a request head that did not arrive within the header read timeout.
const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
    content-length: 0\r\nx-ingress-error: header-timeout\r\n\r\n";

/// How long the 408 may take to write before the connection is dropped without it.
const LATE_WRITE_LIMIT: Duration = Duration::from_secs(2);

/// hyper's HTTP/1.1 read buffer, which bounds a request head; it does not accept less than
/// 8 KiB.
fn h1_buffer_len(state: &State) -> usize {
    (state.config.max_header_bytes as usize).max(8192)
}

/// Wraps an HTTP/1.1 connection in the framing check. The check follows heads longer than
/// hyper's buffer holds, so it never gives up on a head that hyper accepts.
fn checked<I>(io: I, state: &State) -> (Checked<I>, Arc<CheckLog>) {
    let max_head = h1_buffer_len(state) + 8192;
    Checked::new(io, max_head, state.config.max_header_fields)
}

/// Serves prior-knowledge or ALPN-negotiated HTTP/2 until the connection closes.
async fn serve_h2<I>(
    io: TokioIo<I>,
    info: ConnectionInfo,
    state: Arc<State>,
    draining: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(state.config.max_header_bytes)
        .enable_connect_protocol()
        // A peer that does not acknowledge a ping within 20 s is gone; its connection and
        // streams are dropped instead of held open.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let activity = info.activity.clone();
    let idle = activity.idle_for(state.config.idle_timeout, None);
    let service = service(info, state);
    let connection = builder.serve_connection(io, service);
    let result = drive(connection, draining, idle, &activity).await;
    if let Err(err) = &result {
        tracing::debug!(error = %err, "public connection ended with an error");
    }
    result
}

/// Serves HTTP/1.1, with upgrades, until the connection closes or is upgraded.
async fn serve_h1<I>(
    io: TokioIo<I>,
    info: ConnectionInfo,
    state: Arc<State>,
    draining: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A request head over the buffer size gets 431.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .max_headers(state.config.max_header_fields)
        .max_buf_size(h1_buffer_len(&state));
    let activity = info.activity.clone();
    let idle = activity.idle_for(state.config.idle_timeout, info.checks.clone());
    let service = service(info, state);
    let connection = builder.serve_connection(io, service).with_upgrades();
    let result = drive(connection, draining, idle, &activity).await;
    if let Err(err) = &result {
        tracing::debug!(error = %err, "public connection ended with an error");
    }
    result
}

/// Builds the service for the requests of one connection.
fn service(
    info: ConnectionInfo,
    state: Arc<State>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone {
    service_fn(move |request| {
        let state = state.clone();
        let info = info.clone();
        async move {
            let busy = info.activity.begin();
            if info.over_limit {
                return Ok(ProxyError::TooManyConnections.into_response());
            }
            let check = match &info.checks {
                Some(checks) => match checks.next_head() {
                    Some(check) => Some(check),
                    None => return Ok(ProxyError::UncheckedFraming.into_response()),
                },
                None => None,
            };
            match check {
                Some(HeadCheck::LengthAndChunked) => {
                    return Ok(ProxyError::LengthAndChunked.into_response())
                }
                Some(HeadCheck::UnsupportedCoding) => {
                    return Ok(ProxyError::UnsupportedCoding.into_response())
                }
                Some(HeadCheck::Clean | HeadCheck::Upgrade) | None => {}
            }
            let mut response = handle(request, &info, state, busy).await;
            if check == Some(HeadCheck::Upgrade)
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                // The framing check stopped at the upgrade request, so the next request on
                // this connection would go unchecked; the client opens a new one instead.
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        }
    })
}

/// Requests in flight on one client connection, watched for the idle timeout.
#[derive(Clone)]
pub(crate) struct Activity {
    count: Arc<watch::Sender<usize>>,
    slot: Option<Arc<ConnectionPermit>>,
}

/// One request in flight; dropping it ends the request for the idle timeout. Responses keep
/// it until their body ends, upgrades until the splice ends. It also keeps the connection's
/// slot under the per-address limit, which an upgraded connection would otherwise give up
/// when hyper lets go of it.
pub(crate) struct Busy {
    count: Arc<watch::Sender<usize>>,
    _slot: Option<Arc<ConnectionPermit>>,
}

impl Activity {
    fn new(slot: Option<Arc<ConnectionPermit>>) -> Self {
        Self {
            count: Arc::new(watch::Sender::new(0)),
            slot,
        }
    }

    fn in_flight(&self) -> usize {
        *self.count.borrow()
    }

    fn begin(&self) -> Busy {
        self.count.send_modify(|count| *count += 1);
        Busy {
            count: self.count.clone(),
            _slot: self.slot.clone(),
        }
    }

    /// Completes once no request has been in flight for `limit`. On HTTP/1.1, `checks` reports
    /// whether the next request head has started to arrive. Such a head is left to the
    /// header read timeout, which sends 408 for it.
    async fn idle_for(&self, limit: Duration, checks: Option<Arc<CheckLog>>) {
        let mut count = self.count.subscribe();
        loop {
            // `self` keeps the sender, so these waits cannot fail.
            let _ = count.wait_for(|count| *count == 0).await;
            let busy_again = tokio::time::timeout(limit, count.wait_for(|count| *count > 0));
            if busy_again.await.is_ok() {
                continue;
            }
            if checks.as_ref().is_some_and(|checks| checks.head_pending()) {
                continue;
            }
            tracing::debug!(?limit, "closing idle connection");
            return;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.count.send_modify(|count| *count -= 1);
    }
}

/// A hyper server connection that can be asked to finish its in-flight requests and close.
trait Drainable: Future<Output = hyper::Result<()>> {
    fn start_draining(self: Pin<&mut Self>);
}

impl<I, S, B> Drainable for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn start_draining(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Drainable for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn start_draining(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `connection` to its end; once `draining` turns true or `idle` completes it finishes
/// the requests in flight (HTTP/2 sends GOAWAY) and closes.
async fn drive<C: Drainable>(
    connection: C,
    mut draining: watch::Receiver<bool>,
    idle: impl Future<Output = ()>,
    activity: &Activity,
) -> hyper::Result<()> {
    let mut connection = std::pin::pin!(connection);
    let idle_close = tokio::select! {
        result = connection.as_mut() => return result,
        _ = draining.wait_for(|draining| *draining) => false,
        () = idle => true,
    };
    connection.as_mut().start_draining();
    if !idle_close {
        return connection.await;
    }
    // With no request in flight, HTTP/2's graceful close waits only for the client to
    // acknowledge a ping. A client that never does is dropped after a short grace, instead of
    // after hyper's keep-alive timeout.
    // A request that arrived as the close began is still served to its end.
    if let Ok(result) = tokio::time::timeout(IDLE_CLOSE_GRACE, connection.as_mut()).await {
        return result;
    }
    if activity.in_flight() > 0 {
        return connection.await;
    }
    tracing::debug!("idle connection did not finish closing; dropping it");
    Ok(())
}

/// Time an idle connection gets to close gracefully once the idle timeout has passed.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Returns whether the client opened with the HTTP/2 connection preface (prior knowledge),
/// without consuming any bytes. Waits at most `limit` for enough bytes to decide, so a
/// connection that sends nothing is closed after the header read timeout like a slow one.
async fn starts_with_h2_preface(stream: &TcpStream, limit: Duration) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 24];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no request bytes in time")
            })??;
        if peeked == 0 || buf[..peeked] != PREFACE[..peeked] {
            return Ok(false);
        }
        if peeked == PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface arrived; peeking again at once would return the same bytes, so
        // wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn handle(
    request: Request<Incoming>,
    info: &ConnectionInfo,
    state: Arc<State>,
    busy: Busy,
) -> Response<ProxyBody> {
    let head_size = head_size(&request);
    if head_size > state.config.max_header_bytes as usize {
        let err = ProxyError::HeadTooLarge {
            size: head_size,
            max: state.config.max_header_bytes,
        };
        tracing::debug!(error = %err, "request rejected");
        return err.into_response();
    }
    if request.method() == http::Method::CONNECT && !crate::upgrade::is_h2_websocket(&request) {
        let err = ProxyError::ConnectNotSupported;
        tracing::debug!(error = %err, "request rejected");
        return err.into_response();
    }
    // hyper counts the fields of an HTTP/1.1 head itself; HTTP/2 bounds only their bytes.
    let fields = request.headers().len();
    if fields > state.config.max_header_fields {
        let err = ProxyError::TooManyFields {
            count: fields,
            max: state.config.max_header_fields,
        };
        tracing::debug!(error = %err, "request rejected");
        return err.into_response();
    }
    let routed = match (
        tunnel_name(&request, &state.config.domain),
        &state.config.default_tunnel,
    ) {
        (Err(ProxyError::ForeignHost(_)), Some(default)) => Ok(default.clone()),
        (routed, _) => routed,
    };
    let tunnel = match routed {
        Ok(tunnel) => tunnel,
        Err(err) => {
            tracing::debug!(error = %err, "request not routed");
            return err.into_response();
        }
    };
    let client = forward::Client {
        peer: info.peer,
        addr: state.proxies.client_addr(info.peer, request.headers()),
        scheme: info.scheme,
        busy,
    };
    match forward::forward(request, tunnel, client, &state).await {
        Ok(response) => response,
        Err(err @ ProxyError::BadResponse { .. }) => {
            // The agent broke the protocol: worth an operator's attention, unlike a dead upstream.
            tracing::warn!(error = %err, "invalid response from agent");
            err.into_response()
        }
        Err(err) => {
            tracing::debug!(error = %err, status = err.status().as_u16(), "request failed");
            err.into_response()
        }
    }
}

/// Bytes of the request head as HTTP/1.1 would spell it: request line and header fields.
/// hyper's own HTTP/1.1 limit is a read-buffer size that a head arriving in one read can pass,
/// so the limit is checked again here on the parsed head.
fn head_size(request: &Request<Incoming>) -> usize {
    let line = request.method().as_str().len() + target_len(request.uri()) + 12;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields
}

/// Length of `uri` as it would be written, counted without formatting it, which would allocate
/// on every request.
fn target_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |scheme| scheme.len() + 3)
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len())
}

/// Finds the tunnel name in the request's authority (HTTP/2, absolute-form HTTP/1.1) or Host
/// field: the label in front of `.<domain>`, port ignored.
fn tunnel_name(request: &Request<Incoming>, domain: &str) -> Result<String, ProxyError> {
    // Two Host fields make the target ambiguous (RFC 9112, section 3.2).
    if request.headers().get_all(http::header::HOST).iter().count() > 1 {
        return Err(ProxyError::BadHost);
    }
    let host = match request.uri().authority() {
        Some(authority) => authority.host().to_string(),
        None => {
            let value = request
                .headers()
                .get(http::header::HOST)
                .and_then(|value| value.to_str().ok())
                .ok_or(ProxyError::BadHost)?;
            let authority: http::uri::Authority = value.parse().map_err(|_| ProxyError::BadHost)?;
            authority.host().to_string()
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let Some(label) = host
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        return Err(ProxyError::ForeignHost(host));
    };
    if label.is_empty() || label.contains('.') {
        return Err(ProxyError::ForeignHost(host));
    }
    Ok(label.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_len_matches_written_form() {
        for target in [
            "/",
            "/a?b=c",
            "http://app.localhost:8080/x?y",
            "app.localhost:443",
            "*",
        ] {
            let uri: http::Uri = target.parse().unwrap();
            assert_eq!(target_len(&uri), uri.to_string().len(), "{target}");
        }
    }
}
