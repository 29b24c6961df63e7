//! Long-poll relay, the design ingress-tunnel replaces, kept as a baseline for the comparison.
//!
//! The front reads each public request whole and queues it. The agent keeps a `GET /_poll`
//! open until the front hands it a request, or returns 204 after the poll timeout. The agent
//! replays that request against the upstream with the body buffered and posts the buffered
//! response to `POST /_respond/<id>`, which the front then sends to the waiting client.
//! Neither side streams, so WebSocket upgrades and incremental responses cannot pass through.
//!
//! A queued request travels in the poll response: its body is the request body, and the
//! method, target and original header fields ride in `x-longpoll-*` header fields. The
//! agent's response travels back the same way.

pub mod agent;
pub mod front;

use http::header::{self, HeaderMap, HeaderName};

/// Path the agent polls for the next queued request.
pub const POLL_PATH: &str = "/_poll";
/// Path prefix the agent posts a response to, followed by the request id.
pub const RESPOND_PREFIX: &str = "/_respond/";

/// Id of a queued request, in the poll response.
pub const ID_HEADER: &str = "x-longpoll-id";
/// Method of a queued request, in the poll response.
pub const METHOD_HEADER: &str = "x-longpoll-method";
/// Path and query of a queued request, in the poll response.
pub const TARGET_HEADER: &str = "x-longpoll-target";
/// Status code of the upstream response, in the agent's post.
pub const STATUS_HEADER: &str = "x-longpoll-status";
/// Prefix for each original header field carried inside a poll response or a post.
pub const FIELD_PREFIX: &str = "x-longpoll-field-";

/// Copies the end-to-end fields of `source` into `target` under [`FIELD_PREFIX`].
pub fn wrap_fields(source: &HeaderMap, target: &mut HeaderMap) {
    for (name, value) in source {
        if is_hop_by_hop(source, name) {
            continue;
        }
        let wrapped = format!("{FIELD_PREFIX}{}", name.as_str());
        if let Ok(wrapped) = HeaderName::from_bytes(wrapped.as_bytes()) {
            target.append(wrapped, value.clone());
        }
    }
}

/// Returns the fields that [`wrap_fields`] stored in `source`, without the prefix.
pub fn unwrap_fields(source: &HeaderMap) -> HeaderMap {
    let mut fields = HeaderMap::new();
    for (name, value) in source {
        let Some(original) = name.as_str().strip_prefix(FIELD_PREFIX) else {
            continue;
        };
        if let Ok(original) = HeaderName::from_bytes(original.as_bytes()) {
            fields.append(original, value.clone());
        }
    }
    fields
}

/// Reports whether a field applies to one connection only (RFC 9110, section 7.6.1), so a
/// relay must not forward it. Content-Length is left out as well because each leg recomputes
/// it from the buffered body.
fn is_hop_by_hop(fields: &HeaderMap, name: &HeaderName) -> bool {
    let fixed = matches!(
        name.as_str(),
        "connection"
            | "content-length"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    );
    if fixed {
        return true;
    }
    fields.get_all(header::CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
        })
    })
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderMap, HeaderValue};

    use super::{unwrap_fields, wrap_fields};

    #[test]
    fn fields_round_trip() {
        let mut original = HeaderMap::new();
        original.insert("host", HeaderValue::from_static("example.test"));
        original.append("x-multi", HeaderValue::from_static("a"));
        original.append("x-multi", HeaderValue::from_static("b"));
        let mut wrapped = HeaderMap::new();
        wrap_fields(&original, &mut wrapped);
        let restored = unwrap_fields(&wrapped);
        assert_eq!(restored.get("host").unwrap(), "example.test");
        assert_eq!(restored.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn hop_by_hop_fields_dropped() {
        let mut original = HeaderMap::new();
        original.insert("connection", HeaderValue::from_static("upgrade, x-private"));
        original.insert("upgrade", HeaderValue::from_static("websocket"));
        original.insert("x-private", HeaderValue::from_static("1"));
        original.insert("content-length", HeaderValue::from_static("5"));
        original.insert("sec-websocket-key", HeaderValue::from_static("abc"));
        let mut wrapped = HeaderMap::new();
        wrap_fields(&original, &mut wrapped);
        let restored = unwrap_fields(&wrapped);
        assert!(restored.get("connection").is_none());
        assert!(restored.get("upgrade").is_none());
        assert!(restored.get("x-private").is_none());
        assert!(restored.get("content-length").is_none());
        assert!(restored.get("sec-websocket-key").is_some());
    }
}
