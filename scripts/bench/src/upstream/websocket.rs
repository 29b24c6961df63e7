//! WebSocket echo endpoint of the demo upstream: completes the upgrade by hand on hyper's
//! upgraded connection and sends every text and binary message back unchanged.

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{empty_body, full_body, Body};

/// Responds to a WebSocket upgrade with 101 and spawns the echo task, and to any other
/// request with 426 Upgrade Required.
pub(super) fn accept(mut request: Request<Incoming>) -> Response<Body> {
    let Some(accept_key) = accept_key(&request) else {
        let mut response = Response::new(full_body("expected a WebSocket upgrade request\n"));
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response.headers_mut().insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        return response;
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let stream =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(stream).await;
            }
            Err(err) => tracing::debug!(%err, "WebSocket upgrade failed"),
        }
    });

    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Returns the `Sec-WebSocket-Accept` value when the request is a version 13 WebSocket
/// upgrade (RFC 6455, section 4.2.1).
fn accept_key(request: &Request<Incoming>) -> Option<String> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION)? != "13" {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    Some(derive_accept_key(key.as_bytes()))
}

async fn echo(mut stream: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) {
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                tracing::debug!(%err, "WebSocket read failed");
                return;
            }
        };
        match message {
            Message::Text(_) | Message::Binary(_) => {
                if let Err(err) = stream.send(message).await {
                    tracing::debug!(%err, "WebSocket write failed");
                    return;
                }
            }
            // tungstenite queues the pong or the closing reply and sends it on the next read,
            // which then ends the stream after a close.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
