//! Header conversion between `http` types and wire fields, and hop-by-hop removal.

use http::header::{HeaderName, HeaderValue, CONNECTION, TE, UPGRADE};
use http::HeaderMap;
use protocol::Header;

/// Fields that describe one connection and never travel past it (RFC 9110, section 7.6.1).
/// Names listed in a `Connection` field are removed as well.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A wire field that is not a valid HTTP field name or value.
#[derive(Debug, thiserror::Error)]
#[error("invalid header field {name:?}")]
pub struct InvalidHeader {
    pub name: String,
}

/// Converts a header map to wire fields, keeping the map's order and duplicate fields.
pub fn to_wire(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| Header::new(name.as_str(), value.as_bytes()))
        .collect()
}

/// Converts wire fields to a header map.
///
/// # Errors
///
/// Returns [`InvalidHeader`] for the first name or value that HTTP does not allow.
pub fn from_wire(fields: Vec<Header>) -> Result<HeaderMap, InvalidHeader> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(&field.value);
        match (name, value) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => return Err(InvalidHeader { name: field.name }),
        }
    }
    Ok(map)
}

/// Returns the `Upgrade` value when the fields ask for a protocol upgrade: a `Connection` field
/// with the `upgrade` token and an `Upgrade` field.
pub fn is_upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop fields and every field that `Connection` names, except `Host`. A
/// `TE: trailers` field is kept because gRPC needs it end to end; other `TE` values are
/// removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // `Host` is meant for every recipient, so a sender may not name it (RFC 9110, section
    // 7.6.1). Removing it would send the upstream's own address in its place.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| *name != http::header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }

    let keep_te = headers
        .get_all(TE)
        .iter()
        .all(|value| value.as_bytes().eq_ignore_ascii_case(b"trailers"))
        && headers.contains_key(TE);
    for name in HOP_BY_HOP {
        if *name == "te" && keep_te {
            continue;
        }
        headers.remove(*name);
    }
}

/// Removes hop-by-hop fields like [`remove_hop_by_hop`] but keeps the `Upgrade` field and sets
/// `Connection: upgrade`, for the head of an upgrade request or of a `101` response.
pub fn remove_hop_by_hop_except_upgrade(headers: &mut HeaderMap) {
    let upgrade = headers.get(UPGRADE).cloned();
    remove_hop_by_hop(headers);
    if let Some(value) = upgrade {
        headers.insert(UPGRADE, value);
    }
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-kept"], "yes");
    }

    #[test]
    fn host_named_in_connection_kept() {
        let mut headers = map(&[
            ("host", "app.example.com"),
            ("connection", "host, x-private"),
            ("x-private", "1"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["host"], "app.example.com");
    }

    #[test]
    fn upgrade_fields_kept_for_upgrades() {
        let mut headers = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "abc"),
        ]);
        remove_hop_by_hop_except_upgrade(&mut headers);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["sec-websocket-key"], "abc");
    }

    #[test]
    fn te_trailers_kept() {
        let mut headers = map(&[("te", "trailers"), ("content-type", "application/grpc")]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers["te"], "trailers");
    }

    #[test]
    fn upgrade_detected() {
        let headers = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(is_upgrade_request(&headers).unwrap(), "websocket");
        let no_token = map(&[("upgrade", "websocket")]);
        assert!(is_upgrade_request(&no_token).is_none());
    }

    #[test]
    fn wire_round_trip_keeps_duplicates() {
        let headers = map(&[("set-cookie", "a=1"), ("x-a", "1"), ("set-cookie", "b=2")]);
        let back = from_wire(to_wire(&headers)).unwrap();
        let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn invalid_wire_field_rejected() {
        let err = from_wire(vec![Header::new("bad name", "x")]).unwrap_err();
        assert_eq!(err.name, "bad name");
        assert!(from_wire(vec![Header::new("x", b"a\nb".to_vec())]).is_err());
    }
}
