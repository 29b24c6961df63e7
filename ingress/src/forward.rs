//! One public request through a tunnel: open a stream to the agent, send the head, pump the
//! request body, and turn the reply into a streaming response, or splice an upgrade.

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use protocol::{Frame, HttpVersion, RequestHead, ResponseHead};
use quinn::{RecvStream, SendStream};
use tracing::Instrument;
use transport::{
    content_length, from_wire, remove_hop_by_hop, remove_hop_by_hop_except_upgrade, send_body,
    to_wire, write_frame, FrameReader, RecvBody, SendBodyError,
};

use crate::error::ProxyError;
use crate::{ProxyBody, State};

/// Forwards `request` to the agent serving `tunnel` and returns the response to send.
///
/// # Errors
///
/// Returns [`ProxyError`] when no response head came back; once a head has arrived, later
/// failures abort the response body instead.
pub(crate) async fn forward(
    mut request: Request<Incoming>,
    tunnel: String,
    client_addr: SocketAddr,
    scheme: &'static str,
    state: &State,
) -> Result<Response<ProxyBody>, ProxyError> {
    let lost = |err: &dyn std::fmt::Display| ProxyError::AgentLost {
        tunnel: tunnel.clone(),
        reason: err.to_string(),
    };
    let (mut send, recv) = open_stream(&tunnel, state).await?;
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
    let mut head = request_head(&parts, &tunnel, client_addr, scheme, upgrade);
    if h2_websocket {
        websocket_over_h1(&mut head);
    }
    tracing::debug!(parent: &span, method = %head.method, target = %head.target, "forwarding request");
    write_frame(
        &mut send,
        &Frame::RequestHead(head),
        state.config.max_frame_len,
    )
    .await
    .map_err(|err| lost(&err))?;

    let max_frame_len = state.config.max_frame_len;
    let send = if h2_websocket {
        // The body of an extended CONNECT is the WebSocket itself; it is spliced after the
        // upstream accepts, so the request side ends here.
        drop(body);
        write_frame(&mut send, &Frame::End, max_frame_len)
            .await
            .map_err(|err| lost(&err))?;
        Some(send)
    } else if upgrade {
        // The body of an upgrade request (almost always empty) must be complete before the
        // stream switches to raw bytes, so it is sent inline.
        send_request_body(body, &mut send, max_frame_len).await;
        Some(send)
    } else {
        tokio::spawn(pump_request(body, send, max_frame_len).instrument(span.clone()));
        None
    };

    let mut reader = FrameReader::new(recv, max_frame_len);
    let head = read_response_head(&mut reader, &tunnel, state).await?;
    let status = StatusCode::from_u16(head.status).map_err(|_| ProxyError::BadResponse {
        tunnel: tunnel.clone(),
        reason: format!("invalid status code {}", head.status),
    })?;
    let mut headers = from_wire(head.headers).map_err(|err| ProxyError::BadResponse {
        tunnel: tunnel.clone(),
        reason: err.to_string(),
    })?;

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(send), Some(on_upgrade)) = (send, on_upgrade) else {
            reader.stop(protocol::code::PROTOCOL_ERROR);
            return Err(ProxyError::BadResponse {
                tunnel,
                reason: "101 Switching Protocols for a request that asked for no upgrade".into(),
            });
        };
        let status = if h2_websocket {
            // RFC 8441: the tunnel is open once the CONNECT gets 200; HTTP/2 has no
            // connection-level upgrade fields and the accept key was for the upstream hop.
            remove_hop_by_hop(&mut headers);
            headers.remove("sec-websocket-accept");
            StatusCode::OK
        } else {
            remove_hop_by_hop_except_upgrade(&mut headers);
            status
        };
        tokio::spawn(splice_upgrade(on_upgrade, send, reader).instrument(span));
        let mut response = Response::new(crate::full_body(bytes::Bytes::new()));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(response);
    }
    if status.is_informational() {
        reader.stop(protocol::code::PROTOCOL_ERROR);
        return Err(ProxyError::BadResponse {
            tunnel,
            reason: format!("unexpected informational status {status}"),
        });
    }
    if let Some(mut send) = send {
        // An upgrade that the upstream declined: the request side is complete.
        let _ = send.finish();
    }

    remove_hop_by_hop(&mut headers);
    let length = content_length(&headers);
    let body = RecvBody::new(reader, length)
        .map_err(Into::into)
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Opens a stream to an agent of `tunnel`. An agent whose connection fails at this point has
/// seen nothing of the request, so the next agent is tried, up to [`OPEN_ATTEMPTS`] in all.
async fn open_stream(tunnel: &str, state: &State) -> Result<(SendStream, RecvStream), ProxyError> {
    let mut last_error = None;
    for _ in 0..OPEN_ATTEMPTS {
        let agent = state.registry.pick(tunnel)?;
        match agent.connection.open_bi().await {
            Ok(stream) => return Ok(stream),
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

/// Returns whether `request` is an HTTP/2 extended CONNECT for the `websocket` protocol.
fn is_h2_websocket(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_2
        && request.method() == http::Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|protocol| protocol.as_str().eq_ignore_ascii_case("websocket"))
}

/// Rewrites the head of an RFC 8441 WebSocket CONNECT as the RFC 6455 HTTP/1.1 handshake the
/// upstream expects: a GET with `Upgrade: websocket` and a fresh `Sec-WebSocket-Key`.
/// `Sec-WebSocket-Version`, `-Protocol` and `-Extensions` pass through as the client sent them.
fn websocket_over_h1(head: &mut RequestHead) {
    use base64::Engine as _;

    head.method = "GET".to_string();
    head.headers.retain(|field| {
        !matches!(
            field.name.as_str(),
            "upgrade" | "connection" | "sec-websocket-key"
        )
    });
    let key: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    head.headers
        .push(protocol::Header::new("upgrade", "websocket"));
    head.headers
        .push(protocol::Header::new("connection", "upgrade"));
    head.headers
        .push(protocol::Header::new("sec-websocket-key", key));
}

fn request_head(
    parts: &http::request::Parts,
    tunnel: &str,
    client_addr: SocketAddr,
    scheme: &str,
    upgrade: bool,
) -> RequestHead {
    let mut headers = parts.headers.clone();
    if upgrade {
        remove_hop_by_hop_except_upgrade(&mut headers);
    } else {
        remove_hop_by_hop(&mut headers);
    }
    // hyper already sent `100 Continue` when the body was first read, so the upstream must not.
    headers.remove(http::header::EXPECT);
    // HTTP/2 clients send the host as :authority; the HTTP/1.1 upstream needs a Host field.
    if !headers.contains_key(http::header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(http::header::HOST, value);
            }
        }
    }

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
        scheme: scheme.to_string(),
        headers: to_wire(&headers),
        client_addr,
        upgrade,
    }
}

async fn read_response_head(
    reader: &mut FrameReader,
    tunnel: &str,
    state: &State,
) -> Result<ResponseHead, ProxyError> {
    let timeout = state.config.response_header_timeout;
    let frame = match tokio::time::timeout(timeout, reader.next()).await {
        Ok(frame) => frame,
        Err(_) => {
            reader.stop(protocol::code::STREAM_CANCELLED);
            return Err(ProxyError::HeaderTimeout {
                tunnel: tunnel.to_string(),
                seconds: timeout.as_secs(),
            });
        }
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
        Ok(None) => Err(ProxyError::AgentLost {
            tunnel: tunnel.to_string(),
            reason: "stream closed before a response head".to_string(),
        }),
        Err(err) => Err(ProxyError::AgentLost {
            tunnel: tunnel.to_string(),
            reason: err.to_string(),
        }),
    }
}

async fn pump_request(body: Incoming, mut send: SendStream, max_frame_len: u32) {
    if send_request_body(body, &mut send, max_frame_len).await {
        let _ = send.finish();
    }
}

/// Sends the request body; on failure resets the stream so the agent sees an abort, not a
/// complete body. Returns whether the body was sent whole.
async fn send_request_body(body: Incoming, send: &mut SendStream, max_frame_len: u32) -> bool {
    match send_body(body, send, max_frame_len).await {
        Ok(bytes) => {
            tracing::trace!(bytes, "request body sent");
            true
        }
        Err(SendBodyError::Source(err)) => {
            tracing::debug!(error = %err, "client request body failed; resetting stream");
            let _ = send.reset(transport::code(protocol::code::STREAM_ABORTED));
            false
        }
        Err(err @ (SendBodyError::Write(_) | SendBodyError::Stopped)) => {
            // The agent stopped reading because its upstream responded without the rest of the body.
            tracing::debug!(error = %err, "agent stopped reading request body");
            false
        }
    }
}

async fn splice_upgrade(on_upgrade: OnUpgrade, send: SendStream, reader: FrameReader) {
    let (recv, pending): (RecvStream, bytes::Bytes) = reader.into_parts();
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!(error = %err, "client connection failed during upgrade");
            let mut send = send;
            let _ = send.reset(transport::code(protocol::code::STREAM_ABORTED));
            return;
        }
    };
    match transport::splice_upgraded(upgraded, send, recv, pending).await {
        Ok(outcome) => tracing::debug!(
            to_agent = outcome.to_stream,
            to_client = outcome.from_stream,
            "upgraded connection closed"
        ),
        Err(err) => tracing::debug!(error = %err, "upgraded connection failed"),
    }
}
