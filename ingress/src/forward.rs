//! One public request through a tunnel: open a stream to the agent, send the head, pump the
//! request body, and turn the reply into a streaming response, or hand an upgrade to
//! `upgrade.rs`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame as BodyFrame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use protocol::{Frame, HttpVersion, RequestHead, ResponseHead};
use quinn::{RecvStream, SendStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tracing::Instrument;
use transport::{
    content_length, from_wire, remove_hop_by_hop, remove_hop_by_hop_except_upgrade, send_body,
    to_wire, write_frame, FrameReader, RecvBody, SendBodyError,
};

use crate::error::ProxyError;
use crate::http::Busy;
use crate::upgrade::{is_h2_websocket, switch_protocols, websocket_over_h1};
use crate::{ProxyBody, State};

/// Sender of a request, and the scheme it came over.
pub(crate) struct Client {
    /// The TCP peer.
    pub(crate) peer: SocketAddr,
    /// The client's address: the peer, or the one a trusted proxy in front reports.
    pub(crate) addr: SocketAddr,
    pub(crate) scheme: &'static str,
    /// Holds the client connection open against the idle timeout until the exchange ends.
    pub(crate) busy: Busy,
}

/// Forwards `request` to the agent serving `tunnel` and returns the response to send.
///
/// # Errors
///
/// Returns [`ProxyError`] when no response head came back; once a head has arrived, later
/// failures abort the response body instead.
pub(crate) async fn forward(
    mut request: Request<Incoming>,
    tunnel: String,
    client: Client,
    state: &State,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut send, recv, permit) = open_stream(&tunnel, state).await?;
    let stream_id = send.id().index();

    // HTTP/1.1 requests an upgrade with `Connection: upgrade`. HTTP/2 opens a WebSocket with an
    // extended CONNECT (RFC 8441), which goes to the upstream as an HTTP/1.1 upgrade.
    let h2_websocket = is_h2_websocket(&request);
    let upgrade = h2_websocket
        || (request.version() == Version::HTTP_11
            && transport::is_upgrade_request(request.headers()).is_some());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let kind = if upgrade { "upgrade" } else { "http" };
    let span = tracing::debug_span!("stream", stream_id, kind, tunnel = %tunnel);

    let (parts, body) = request.into_parts();
    // The body of an extended CONNECT is the WebSocket itself, spliced once the upstream
    // accepts, so the request has no body of its own.
    let empty_body = h2_websocket || body.is_end_stream();
    let mut head = request_head(&parts, &tunnel, &client, upgrade, empty_body, state);
    if h2_websocket {
        websocket_over_h1(&mut head);
    }
    tracing::debug!(parent: &span, method = %head.method, target = %head.target, "forwarding request");
    let max_frame_len = state.config.max_frame_len;
    write_frame(&mut send, &Frame::RequestHead(head), max_frame_len)
        .await
        .map_err(|err| ProxyError::AgentLost {
            tunnel: tunnel.clone(),
            reason: err.to_string(),
        })?;

    let (send, request_sent) =
        send_request_body_for(body, send, empty_body, upgrade, max_frame_len, &span).await;

    let mut reader = FrameReader::new(recv, max_frame_len);
    let head = read_response_head(&mut reader, &tunnel, request_sent, state).await?;
    let (status, headers) = check_head(head.status, head.headers, &tunnel, &mut reader)?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(send), Some(on_upgrade)) = (send, on_upgrade) else {
            reader.stop(protocol::code::PROTOCOL_ERROR);
            return Err(ProxyError::BadResponse {
                tunnel,
                reason: "101 Switching Protocols for a request that asked for no upgrade".into(),
            });
        };
        let response = switch_protocols(
            headers,
            h2_websocket,
            on_upgrade,
            send,
            reader,
            (permit, client.busy),
            span,
        );
        return Ok(response);
    }
    if let Some(mut send) = send {
        // An upgrade that the upstream declined: the request side is complete.
        let _ = send.finish();
    }
    Ok(streaming_response(
        status,
        headers,
        head.empty_body,
        reader,
        (permit, client.busy),
    ))
}

/// Outcome of sending the request body, for the response-head wait: `Ok` once it is
/// sent whole, or the reason the client's body was invalid. The signal is dropped when the
/// agent stopped reading.
type BodySent = Result<(), String>;

/// Sends the request body the way its kind needs, and returns the send stream when the stream
/// may still switch to raw bytes (an upgrade), with a signal that completes once the request
/// is sent whole. The response-header timeout starts at that signal, so a slow upload is not
/// mistaken for a slow upstream.
async fn send_request_body_for(
    body: Incoming,
    mut send: SendStream,
    empty_body: bool,
    upgrade: bool,
    max_frame_len: u32,
    span: &tracing::Span,
) -> (Option<SendStream>, oneshot::Receiver<BodySent>) {
    let (body_sent, request_sent) = oneshot::channel();
    let send = if empty_body {
        drop(body);
        let _ = body_sent.send(Ok(()));
        if !upgrade {
            let _ = send.finish();
        }
        upgrade.then_some(send)
    } else if upgrade {
        // The body of an upgrade request must be complete before the stream switches to raw
        // bytes, so it is sent inline.
        send_request_body(body, &mut send, max_frame_len, body_sent).await;
        Some(send)
    } else {
        let pump = pump_request(body, send, max_frame_len, body_sent);
        tokio::spawn(pump.instrument(span.clone()));
        None
    };
    (send, request_sent)
}

/// Checks the status and fields of a response head from the agent.
fn check_head(
    status: u16,
    fields: Vec<protocol::Header>,
    tunnel: &str,
    reader: &mut FrameReader,
) -> Result<(StatusCode, http::HeaderMap), ProxyError> {
    let bad = |reason: String| ProxyError::BadResponse {
        tunnel: tunnel.to_string(),
        reason,
    };
    let checked = match StatusCode::from_u16(status) {
        Ok(code) if code.is_informational() && code != StatusCode::SWITCHING_PROTOCOLS => {
            Err(bad(format!("unexpected informational status {code}")))
        }
        Ok(code) => from_wire(fields)
            .map(|headers| (code, headers))
            .map_err(|err| bad(err.to_string())),
        Err(_) => Err(bad(format!("invalid status code {status}"))),
    };
    if checked.is_err() {
        reader.stop(protocol::code::PROTOCOL_ERROR);
    }
    checked
}

/// Builds the client's response; its body streams from the agent while it holds the agent's
/// stream permit. An empty body lets HTTP/2 end the stream with the headers.
fn streaming_response(
    status: StatusCode,
    mut headers: http::HeaderMap,
    empty_body: bool,
    reader: FrameReader,
    held: Held,
) -> Response<ProxyBody> {
    remove_hop_by_hop(&mut headers);
    let body = if empty_body {
        drop(held);
        crate::full_body(bytes::Bytes::new())
    } else {
        let length = content_length(&headers);
        let body = RecvBody::new(reader, length);
        Holding { body, _held: held }
            .map_err(Into::into)
            .boxed_unsync()
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Opens a stream to an agent of `tunnel`, first taking one of that agent's stream permits,
/// which bound the requests in flight to it. An agent whose connection fails at this point
/// has seen nothing of the request, so the next agent is tried, up to [`OPEN_ATTEMPTS`].
async fn open_stream(
    tunnel: &str,
    state: &State,
) -> Result<(SendStream, RecvStream, OwnedSemaphorePermit), ProxyError> {
    let mut last_error = None;
    for _ in 0..OPEN_ATTEMPTS {
        let agent = state.registry.pick(tunnel)?;
        let wait = state.config.response_header_timeout;
        let permit = match tokio::time::timeout(wait, agent.streams.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => continue,
            Err(_) => {
                return Err(ProxyError::AgentBusy {
                    tunnel: tunnel.to_string(),
                    limit: state.config.max_streams_per_agent,
                })
            }
        };
        match agent.connection.open_bi().await {
            Ok((send, recv)) => return Ok((send, recv, permit)),
            Err(err) => {
                tracing::debug!(agent_id = agent.id, error = %err, "agent connection failed; trying another");
                state.registry.remove(agent.id);
                last_error = Some(err);
            }
        }
    }
    Err(ProxyError::AgentLost {
        tunnel: tunnel.to_string(),
        reason: last_error.map(|err| err.to_string()).unwrap_or_default(),
    })
}

const OPEN_ATTEMPTS: usize = 3;

fn request_head(
    parts: &http::request::Parts,
    tunnel: &str,
    client: &Client,
    upgrade: bool,
    empty_body: bool,
    state: &State,
) -> RequestHead {
    let mut headers = parts.headers.clone();
    if upgrade {
        remove_hop_by_hop_except_upgrade(&mut headers);
    } else {
        remove_hop_by_hop(&mut headers);
    }
    // hyper already sent `100 Continue` when the body was first read, so the upstream must not.
    headers.remove(http::header::EXPECT);
    // The request was routed on the authority of an absolute-form or HTTP/2 target when it has
    // one, so the upstream must see that same host (RFC 9112, section 3.2.2), whatever Host
    // field the client also sent.
    if let Some(authority) = parts.uri.authority() {
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(http::header::HOST, value);
        }
    }
    remove_underscore_aliases(&mut headers);
    state
        .proxies
        .set_forwarded(&mut headers, client.peer, client.addr, client.scheme);

    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let version = match parts.version {
        Version::HTTP_10 => HttpVersion::Http10,
        Version::HTTP_2 => HttpVersion::Http2,
        _ => HttpVersion::Http11,
    };
    RequestHead {
        tunnel: tunnel.to_string(),
        method: parts.method.as_str().to_string(),
        target,
        version,
        scheme: client.scheme.to_string(),
        headers: to_wire(&headers),
        client_addr: client.addr,
        upgrade,
        empty_body,
    }
}

/// Fields that the ingress sets or relies on, which a client must not pass under another
/// spelling.
const GUARDED_FIELDS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Removes fields such as `X_Forwarded_For` or `Content_Length`. CGI-style servers (WSGI,
/// Rack, PHP) read `_` and `-` alike, so they would take such a field for the guarded one.
fn remove_underscore_aliases(headers: &mut http::HeaderMap) {
    let aliases: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| {
            name.as_str().contains('_')
                && GUARDED_FIELDS.contains(&name.as_str().replace('_', "-").as_str())
        })
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
}

/// Reads the agent's response head. The header timeout counts from the moment
/// `request_sent` completes: when the request body has been sent, or failed. A client body
/// that turned out invalid (a broken chunked framing, say) ends the wait with 400, because
/// the agent only gets an aborted stream and cannot tell whose fault it was.
async fn read_response_head(
    reader: &mut FrameReader,
    tunnel: &str,
    request_sent: oneshot::Receiver<BodySent>,
    state: &State,
) -> Result<ResponseHead, ProxyError> {
    let timeout = state.config.response_header_timeout;
    let deadline = async {
        if let Ok(Err(reason)) = request_sent.await {
            return Some(reason);
        }
        tokio::time::sleep(timeout).await;
        None
    };
    let frame = tokio::select! {
        // The body's failure is signalled before the stream is reset, so checking it first
        // reports the client's fault instead of the abort it causes at the agent.
        biased;
        failed = deadline => {
            reader.stop(protocol::code::STREAM_CANCELLED);
            return Err(match failed {
                Some(reason) => ProxyError::BadRequestBody(reason),
                None => ProxyError::HeaderTimeout {
                    tunnel: tunnel.to_string(),
                    seconds: timeout.as_secs(),
                },
            });
        }
        frame = reader.next() => frame,
    };
    let lost = |reason: String| ProxyError::AgentLost {
        tunnel: tunnel.to_string(),
        reason,
    };
    match frame {
        Ok(Some(Frame::ResponseHead(head))) => Ok(head),
        Ok(Some(Frame::Failure(failure))) => Err(ProxyError::Agent {
            tunnel: tunnel.to_string(),
            failure,
        }),
        Ok(Some(other)) => {
            reader.stop(protocol::code::PROTOCOL_ERROR);
            Err(ProxyError::BadResponse {
                tunnel: tunnel.to_string(),
                reason: format!(
                    "expected response head, got {} frame",
                    other.frame_type().name()
                ),
            })
        }
        Ok(None) => Err(lost("stream closed before a response head".to_string())),
        Err(err) => Err(lost(err.to_string())),
    }
}

async fn pump_request(
    body: Incoming,
    mut send: SendStream,
    max_frame_len: u32,
    body_sent: oneshot::Sender<BodySent>,
) {
    if send_request_body(body, &mut send, max_frame_len, body_sent).await {
        let _ = send.finish();
    }
}

/// Sends the request body and reports the outcome on `body_sent`. When the client's body
/// fails it resets the stream, so the agent gets an abort, not a complete body. Returns
/// whether the body was sent whole.
async fn send_request_body(
    body: Incoming,
    send: &mut SendStream,
    max_frame_len: u32,
    body_sent: oneshot::Sender<BodySent>,
) -> bool {
    match send_body(body, send, max_frame_len).await {
        Ok(bytes) => {
            tracing::trace!(bytes, "request body sent");
            let _ = body_sent.send(Ok(()));
            true
        }
        Err(SendBodyError::Source(err)) => {
            tracing::debug!(error = %err, "client request body failed; resetting stream");
            let _ = body_sent.send(Err(err.to_string()));
            let _ = send.reset(transport::code(protocol::code::STREAM_ABORTED));
            false
        }
        Err(err @ (SendBodyError::Write(_) | SendBodyError::Stopped)) => {
            // The agent stopped reading because its upstream responded without the rest of
            // the body.
            tracing::debug!(error = %err, "agent stopped reading request body");
            false
        }
    }
}

/// Resources a forwarded exchange keeps until it ends: the agent's stream permit, and the client
/// connection's claim against the idle timeout.
pub(crate) type Held = (OwnedSemaphorePermit, Busy);

/// A response body that keeps the exchange's resources until the body ends or is dropped.
struct Holding<B> {
    body: B,
    _held: Held,
}

impl<B: Body + Unpin> Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
