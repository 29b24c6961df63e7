//! One request stream from the ingress: read the head, forward to the upstream, and stream the
//! response back, or splice an upgraded connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use protocol::{Failure, FailureKind, Frame, RequestHead, ResponseHead};
use quinn::{RecvStream, SendStream};
use transport::{
    content_length, remove_hop_by_hop, remove_hop_by_hop_except_upgrade, send_body, to_wire,
    write_frame, FrameReader, RecvBody, SendBodyError,
};

use crate::upstream::{build_request, Upstreams};

/// Shared by every stream task.
pub(crate) struct StreamContext {
    pub(crate) upstreams: Upstreams,
    pub(crate) max_frame_len: u32,
}

// The ingress writes the head right after opening the stream, so a missing head means a broken
// or hostile peer.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

// Upgrade requests (WebSocket handshakes) have no body in practice; this bounds what is
// buffered for one that does.
const MAX_UPGRADE_BODY: usize = 64 * 1024;

/// Serves one request stream to its end.
pub(crate) async fn handle_stream(
    mut send: SendStream,
    recv: RecvStream,
    context: Arc<StreamContext>,
) {
    let mut reader = FrameReader::new(recv, context.max_frame_len);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(Frame::RequestHead(head)))) => head,
        Ok(Ok(Some(other))) => {
            tracing::warn!(
                frame = other.frame_type().name(),
                "stream did not start with a request head"
            );
            abort(&mut send, &mut reader, protocol::code::PROTOCOL_ERROR);
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "failed to read request head");
            abort(&mut send, &mut reader, protocol::code::PROTOCOL_ERROR);
            return;
        }
        Err(_) => {
            tracing::warn!("no request head within {} s", HEAD_TIMEOUT.as_secs());
            abort(&mut send, &mut reader, protocol::code::PROTOCOL_ERROR);
            return;
        }
    };
    tracing::debug!(method = %head.method, target = %head.target, tunnel = %head.tunnel, upgrade = head.upgrade, "request");

    let Some(upstream) = context.upstreams.get(&head.tunnel).cloned() else {
        let failure = Failure {
            kind: FailureKind::UnknownTunnel,
            message: format!("this agent does not serve tunnel {:?}", head.tunnel),
        };
        fail(&mut send, failure, context.max_frame_len).await;
        return;
    };

    if head.upgrade {
        forward_upgrade(head, &upstream, reader, send, &context).await;
    } else {
        forward_http(head, &upstream, reader, send, &context).await;
    }
}

async fn forward_http(
    head: RequestHead,
    upstream: &crate::config::Upstream,
    reader: FrameReader,
    mut send: SendStream,
    context: &StreamContext,
) {
    let body = if head.empty_body {
        RecvBody::empty(reader)
    } else {
        RecvBody::new(reader, request_length(&head))
    };
    let request = match build_request(head, upstream, body) {
        Ok(request) => request,
        Err(failure) => return fail(&mut send, failure, context.max_frame_len).await,
    };

    // The ingress stops the stream when its client leaves or its header timeout fires. The
    // upstream request is dropped then, because no client will read its response.
    let stopped = send.stopped();
    let response = tokio::select! {
        response = context.upstreams.send(upstream, request) => response,
        _ = stopped => {
            tracing::debug!("ingress cancelled the request before the response head");
            return;
        }
    };
    match response {
        Ok(response) => send_response(response, send, context.max_frame_len).await,
        Err(failure) => {
            tracing::debug!(kind = ?failure.kind, message = %failure.message, "upstream failed");
            fail(&mut send, failure, context.max_frame_len).await;
        }
    }
}

async fn send_response(response: Response<Incoming>, mut send: SendStream, max_frame_len: u32) {
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    remove_hop_by_hop(&mut headers);
    // Known at head time for 204 and 304 responses, HEAD requests, `Content-Length: 0`, and an
    // HTTP/2 upstream that ended the stream with its headers (a gRPC error, for one).
    let empty_body = body.is_end_stream();
    let head = Frame::ResponseHead(ResponseHead {
        status: parts.status.as_u16(),
        headers: to_wire(&headers),
        empty_body,
    });
    if let Err(err) = write_frame(&mut send, &head, max_frame_len).await {
        tracing::debug!(error = %err, "failed to send response head");
        if matches!(err, transport::WriteFrameError::Encode(_)) {
            let failure = Failure {
                kind: FailureKind::BadResponse,
                message: format!("response head is too large: {err}"),
            };
            fail(&mut send, failure, max_frame_len).await;
        }
        return;
    }
    if empty_body {
        let _ = send.finish();
        return;
    }

    match send_body(body, &mut send, max_frame_len).await {
        Ok(bytes) => {
            tracing::debug!(bytes, status = parts.status.as_u16(), "response sent");
            let _ = send.finish();
        }
        Err(SendBodyError::Source(err)) => {
            // A reset marks the body as incomplete for the ingress, so its client gets an abort
            // rather than a short body that looks whole.
            tracing::debug!(error = %err, "upstream response body failed; aborting stream");
            let _ = send.reset(transport::code(protocol::code::STREAM_ABORTED));
        }
        Err(SendBodyError::Write(_) | SendBodyError::Stopped) => {
            tracing::debug!("ingress stopped reading the response; dropping upstream body");
        }
    }
}

async fn forward_upgrade(
    head: RequestHead,
    upstream: &crate::config::Upstream,
    mut reader: FrameReader,
    mut send: SendStream,
    context: &StreamContext,
) {
    let body = match read_small_body(&mut reader, head.empty_body).await {
        Ok(body) => body,
        Err(message) => {
            let failure = Failure {
                kind: FailureKind::BadRequest,
                message,
            };
            return fail(&mut send, failure, context.max_frame_len).await;
        }
    };
    let request = match build_request(head, upstream, Full::new(body)) {
        Ok(request) => request,
        Err(failure) => return fail(&mut send, failure, context.max_frame_len).await,
    };
    let mut response = match context.upstreams.send_upgrade(upstream, request).await {
        Ok(response) => response,
        Err(failure) => return fail(&mut send, failure, context.max_frame_len).await,
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return send_response(response, send, context.max_frame_len).await;
    }

    let on_upgrade = hyper::upgrade::on(&mut response);
    let mut headers = response.headers().clone();
    remove_hop_by_hop_except_upgrade(&mut headers);
    let head = Frame::ResponseHead(ResponseHead {
        status: StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        headers: to_wire(&headers),
        empty_body: true,
    });
    if write_frame(&mut send, &head, context.max_frame_len)
        .await
        .is_err()
    {
        return;
    }

    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!(error = %err, "upstream upgrade failed after 101");
            let _ = send.reset(transport::code(protocol::code::STREAM_ABORTED));
            return;
        }
    };
    let (recv, pending) = reader.into_parts();
    match transport::splice_upgraded(upgraded, send, recv, pending).await {
        Ok(outcome) => tracing::debug!(
            to_ingress = outcome.to_stream,
            to_upstream = outcome.from_stream,
            "upgraded connection closed"
        ),
        Err(err) => tracing::debug!(error = %err, "upgraded connection failed"),
    }
}

/// Reads body frames up to the end frame, at most [`MAX_UPGRADE_BODY`] bytes.
async fn read_small_body(reader: &mut FrameReader, empty: bool) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    if empty {
        return Ok(body.freeze());
    }
    loop {
        match reader.next().await {
            Ok(Some(Frame::Data(data))) => {
                if body.len() + data.len() > MAX_UPGRADE_BODY {
                    return Err(format!(
                        "upgrade request body is over {MAX_UPGRADE_BODY} bytes"
                    ));
                }
                body.extend_from_slice(&data);
            }
            Ok(Some(Frame::End)) => return Ok(body.freeze()),
            Ok(Some(other)) => {
                return Err(format!(
                    "unexpected {} frame in upgrade request body",
                    other.frame_type().name()
                ))
            }
            Ok(None) => return Err("stream ended inside the upgrade request body".to_string()),
            Err(err) => return Err(err.to_string()),
        }
    }
}

fn request_length(head: &RequestHead) -> Option<u64> {
    let mut map = http::HeaderMap::new();
    for field in &head.headers {
        if field.name.eq_ignore_ascii_case("content-length") {
            if let Ok(value) = HeaderValue::from_bytes(&field.value) {
                map.append(http::header::CONTENT_LENGTH, value);
            }
        }
    }
    content_length(&map)
}

async fn fail(send: &mut SendStream, failure: Failure, max_frame_len: u32) {
    if write_frame(send, &Frame::Failure(failure), max_frame_len)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

fn abort(send: &mut SendStream, reader: &mut FrameReader, code: u32) {
    let _ = send.reset(transport::code(code));
    reader.stop(code);
}
