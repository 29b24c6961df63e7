//! Upgraded requests: HTTP/1.1 `Upgrade` and HTTP/2 WebSocket extended CONNECT (RFC 8441),
//! turned into a raw byte splice between the client and the QUIC stream once the upstream
//! switches protocols.

use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use protocol::RequestHead;
use quinn::{RecvStream, SendStream};
use tracing::Instrument;
use transport::{remove_hop_by_hop, remove_hop_by_hop_except_upgrade, FrameReader, SharedTcp};

use crate::forward::Held;
use crate::h1_check::Checked;
use crate::ProxyBody;

/// Returns whether `request` is an HTTP/2 extended CONNECT for the `websocket` protocol.
pub(crate) fn is_h2_websocket(request: &Request<Incoming>) -> bool {
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
pub(crate) fn websocket_over_h1(head: &mut RequestHead) {
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

/// Builds the client's response to an upstream `101` and starts the splice in its own task. An HTTP/2
/// WebSocket client gets `200` instead, as RFC 8441 specifies.
pub(crate) fn switch_protocols(
    mut headers: HeaderMap,
    h2_websocket: bool,
    on_upgrade: OnUpgrade,
    send: SendStream,
    reader: FrameReader,
    held: Held,
    span: tracing::Span,
) -> Response<ProxyBody> {
    let status = if h2_websocket {
        // HTTP/2 has no connection-level upgrade fields, and the accept key was for the
        // upstream hop.
        remove_hop_by_hop(&mut headers);
        headers.remove("sec-websocket-accept");
        StatusCode::OK
    } else {
        remove_hop_by_hop_except_upgrade(&mut headers);
        StatusCode::SWITCHING_PROTOCOLS
    };
    tokio::spawn(splice(on_upgrade, send, reader, held).instrument(span));
    let mut response = Response::new(crate::full_body(bytes::Bytes::new()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

async fn splice(on_upgrade: OnUpgrade, mut send: SendStream, reader: FrameReader, _held: Held) {
    let (recv, pending): (RecvStream, bytes::Bytes) = reader.into_parts();
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!(error = %err, "client connection failed during upgrade");
            let _ = send.reset(transport::code(protocol::code::STREAM_ABORTED));
            return;
        }
    };
    // The public listener's plain HTTP/1.1 connections are a TCP socket under the framing
    // check; unwrapped, they take the splice without copy buffers.
    let spliced = match upgraded.downcast::<TokioIo<Checked<SharedTcp>>>() {
        Ok(parts) => {
            let local = parts.io.into_inner().into_inner().stream().clone();
            transport::splice_tcp(local, parts.read_buf, send, recv, pending).await
        }
        Err(upgraded) => transport::splice_upgraded(upgraded, send, recv, pending).await,
    };
    match spliced {
        Ok(outcome) => tracing::debug!(
            to_agent = outcome.to_stream,
            to_client = outcome.from_stream,
            "upgraded connection closed"
        ),
        Err(err) => tracing::debug!(error = %err, "upgraded connection failed"),
    }
}
