//! Checks of the `wire_headers` target.
//!
//! The input is a stream of frames, decoded with the default maximum. The header list of every
//! request head, response head and trailers frame goes through `transport::from_wire`, which
//! both the ingress and the agent use before a field reaches hyper, and through the hop-by-hop
//! removal that follows it. The checks compare the results with the field name and value rules
//! of RFC 9110 as the `http` crate (1.5) applies them, and with what the removal functions
//! document.

use bytes::BytesMut;
use http::header::{CONNECTION, TE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use protocol::{Frame, FrameDecoder, Header};
use transport::{
    content_length, from_wire, is_upgrade_request, remove_hop_by_hop,
    remove_hop_by_hop_except_upgrade, to_wire, HOP_BY_HOP,
};

/// Runs the target on one input.
///
/// # Panics
///
/// Panics when a conversion breaks one of the properties in the module header.
pub fn run(data: &[u8]) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let fields = match frame {
            Frame::RequestHead(head) => head.headers,
            Frame::ResponseHead(head) => head.headers,
            Frame::Trailers(fields) => fields,
            _ => continue,
        };
        check_fields(fields);
    }
}

/// Runs every check on one header list.
///
/// # Panics
///
/// Panics when a conversion breaks one of the properties in the module header.
pub fn check_fields(fields: Vec<Header>) {
    let first_invalid = fields
        .iter()
        .find(|field| !is_valid_name(field.name.as_bytes()) || !is_valid_value(&field.value))
        .map(|field| field.name.clone());
    let map = match (from_wire(fields.clone()), first_invalid) {
        (Ok(map), None) => map,
        (Err(err), Some(name)) => {
            assert_eq!(
                err.name, name,
                "from_wire names another field than the first invalid"
            );
            return;
        }
        (Ok(_), Some(name)) => panic!("from_wire accepted invalid field {name:?}"),
        (Err(err), None) => panic!("from_wire rejected valid fields: {err}"),
    };

    check_map_matches_fields(&map, &fields);
    let again = from_wire(to_wire(&map)).expect("fields from a header map convert back");
    assert_eq!(again, map, "to_wire then from_wire changed the map");

    check_hop_by_hop_removed(&map);
    check_upgrade_kept(&map);
    check_upgrade_detected(&map);
    if let Some(length) = content_length(&map) {
        let values: Vec<&HeaderValue> = map.get_all(http::header::CONTENT_LENGTH).iter().collect();
        assert_eq!(
            values.len(),
            1,
            "content length {length} from several fields"
        );
        let text = values[0].to_str().expect("a parsed length is ASCII");
        assert_eq!(
            text.trim().parse::<u64>(),
            Ok(length),
            "content length {length}"
        );
    }
}

/// Checks that `map` has every field of `fields`, names lower-cased, and the values of each
/// name in their order on the wire.
fn check_map_matches_fields(map: &HeaderMap, fields: &[Header]) {
    assert_eq!(map.len(), fields.len(), "fields lost or added");
    for (name, _) in map {
        let bytes = name.as_str().as_bytes();
        assert!(
            !bytes.iter().any(u8::is_ascii_uppercase),
            "name {name} not lower-cased"
        );
    }
    for field in fields {
        let name = field.name.to_ascii_lowercase();
        let expected: Vec<&[u8]> = fields
            .iter()
            .filter(|other| other.name.eq_ignore_ascii_case(&name))
            .map(|other| other.value.as_slice())
            .collect();
        let actual: Vec<&[u8]> = map
            .get_all(name.as_str())
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(actual, expected, "values of {name:?}");
    }
}

/// Checks `remove_hop_by_hop`: no hop-by-hop field is left but `TE: trailers`, no field that
/// `Connection` names is left but `Host`, and every other field is kept as it was.
fn check_hop_by_hop_removed(map: &HeaderMap) {
    let mut removed = map.clone();
    remove_hop_by_hop(&mut removed);
    // `Host` stays even when `Connection` names it, because every recipient needs it.
    let named: Vec<String> = connection_tokens(map)
        .into_iter()
        .filter(|token| token != "host")
        .collect();
    for (name, value) in &removed {
        assert!(
            !named.contains(&name.as_str().to_string()),
            "{name} named by Connection kept"
        );
        if HOP_BY_HOP.contains(&name.as_str()) {
            assert_eq!(name, TE, "hop-by-hop {name} kept");
            assert!(
                value.as_bytes().eq_ignore_ascii_case(b"trailers"),
                "TE: {value:?} kept"
            );
        }
    }
    for name in map.keys() {
        let hop = HOP_BY_HOP.contains(&name.as_str()) || named.contains(&name.as_str().to_string());
        if !hop {
            let before: Vec<_> = map.get_all(name).iter().collect();
            let after: Vec<_> = removed.get_all(name).iter().collect();
            assert_eq!(after, before, "end-to-end field {name} changed");
        }
    }
}

/// Checks `remove_hop_by_hop_except_upgrade`: `Connection: upgrade` alone, and the first
/// `Upgrade` value when there was one.
fn check_upgrade_kept(map: &HeaderMap) {
    let mut kept = map.clone();
    remove_hop_by_hop_except_upgrade(&mut kept);
    let connection: Vec<_> = kept.get_all(CONNECTION).iter().collect();
    assert_eq!(
        connection,
        [HeaderValue::from_static("upgrade")],
        "Connection"
    );
    let upgrade: Vec<_> = kept.get_all(UPGRADE).iter().collect();
    let expected: Vec<_> = map.get(UPGRADE).into_iter().collect();
    assert_eq!(upgrade, expected, "Upgrade");
}

/// Checks `is_upgrade_request` against the tokens of `Connection` and the `Upgrade` field.
fn check_upgrade_detected(map: &HeaderMap) {
    let asks = connection_tokens(map)
        .iter()
        .any(|token| token == "upgrade");
    let expected = if asks { map.get(UPGRADE) } else { None };
    assert_eq!(
        is_upgrade_request(map).as_ref(),
        expected,
        "upgrade detection"
    );
}

/// Lower-cased comma-separated tokens of every `Connection` value that is visible ASCII.
fn connection_tokens(map: &HeaderMap) -> Vec<String> {
    let mut tokens = Vec::new();
    for value in map.get_all(CONNECTION) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for token in text.split(',') {
            let token = token.trim().to_ascii_lowercase();
            if !token.is_empty() && HeaderName::from_bytes(token.as_bytes()).is_ok() {
                tokens.push(token);
            }
        }
    }
    tokens
}

/// Returns whether `name` is a field name as RFC 9110 defines it: one or more `tchar`. The
/// `http` crate (1.5) also caps a name at 65535 bytes.
fn is_valid_name(name: &[u8]) -> bool {
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty() && name.len() <= usize::from(u16::MAX) && name.iter().all(tchar)
}

/// Returns whether `value` is a field value as the `http` crate (1.5) accepts it: horizontal
/// tab, space, visible ASCII and obs-text (0x80 to 0xff), so never CR, LF, NUL or another
/// control byte.
fn is_valid_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}
