//! Seed inputs for each target, written to `fuzz/seeds/` by `examples/write_seeds.rs`.
//!
//! Without seeds the `handshake` target would never get past the token check, because the
//! ingress compares SHA-256 digests and libFuzzer cannot work a token out from them. The other
//! seeds save the fuzzer the work of finding valid bincode payloads with matching lengths.

use std::net::Ipv6Addr;

use bytes::{Bytes, BytesMut};
use protocol::{
    encode, Failure, FailureKind, Frame, Header, Hello, HelloReply, HttpVersion, RefuseReason,
    RequestHead, ResponseHead, MAX_FRAME_LEN, PROTOCOL_VERSION,
};

use crate::decoder::{Input, MAX_LENS};
use crate::handshake::{Settings, ALICE_TOKEN, BARE_TOKEN, MIXED_TOKEN, OPS_TOKEN};

/// A named seed input.
pub type Seed = (&'static str, Vec<u8>);

/// Returns one frame of each kind, with the field shapes the product sends.
pub fn sample_frames() -> Vec<(&'static str, Frame)> {
    vec![
        ("hello", Frame::Hello(hello(ALICE_TOKEN, &["app", "Blog"]))),
        (
            "hello-reply-accepted",
            Frame::HelloReply(HelloReply::Accepted {
                ingress_version: "0.1.0".into(),
                urls: vec!["http://app.localhost:8080".into()],
            }),
        ),
        (
            "hello-reply-refused",
            Frame::HelloReply(HelloReply::Refused {
                reason: RefuseReason::NameTaken,
                message: "tunnel \"app\" is already served under another token".into(),
            }),
        ),
        ("request-head", Frame::RequestHead(request_head())),
        ("response-head", Frame::ResponseHead(response_head())),
        ("data", Frame::Data(Bytes::from_static(b"body bytes"))),
        ("data-empty", Frame::Data(Bytes::new())),
        (
            "trailers",
            Frame::Trailers(vec![
                Header::new("grpc-status", "0"),
                Header::new("grpc-message", "ok"),
            ]),
        ),
        ("end", Frame::End),
        (
            "failure",
            Frame::Failure(Failure {
                kind: FailureKind::UpstreamTimeout,
                message: "upstream sent no response head in 60s".into(),
            }),
        ),
        ("drain", Frame::Drain),
    ]
}

/// Returns the seeds of every target, by target name.
pub fn all() -> [(&'static str, Vec<Seed>); 3] {
    [
        ("frame_decoder", frame_decoder()),
        ("handshake", handshake()),
        ("wire_headers", wire_headers()),
    ]
}

/// Returns the seeds of `frame_decoder`: each sample frame alone in one read, and a request
/// stream read byte by byte and in uneven read sizes.
pub fn frame_decoder() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (name, frame) in sample_frames() {
        let stream = encoded(&[frame]);
        let whole = Input {
            max_len: MAX_FRAME_LEN,
            chunk_sizes: &[],
            stream: &stream,
        };
        seeds.push((name, whole.to_bytes()));
    }

    let stream = encoded(&[
        Frame::RequestHead(request_head()),
        Frame::Data(Bytes::from_static(b"first piece")),
        Frame::Data(Bytes::from_static(b"second piece")),
        Frame::Trailers(vec![Header::new("x-checksum", "abc")]),
    ]);
    let bytewise = Input {
        max_len: MAX_LENS[4],
        chunk_sizes: &[1],
        stream: &stream,
    };
    seeds.push(("request-stream-bytewise", bytewise.to_bytes()));
    let uneven = Input {
        max_len: MAX_LENS[4],
        chunk_sizes: &[3, 0, 17, 5, 64],
        stream: &stream,
    };
    seeds.push(("request-stream-uneven", uneven.to_bytes()));
    seeds
}

/// Returns the seeds of `handshake`: a hello with each token, names the token may and may not
/// serve, and a series of bad tokens that reaches the rate limit.
pub fn handshake() -> Vec<Seed> {
    let only_declared = Settings {
        only_declared: true,
        bare_token: true,
        max_failed_handshakes: 2,
    };
    let open = Settings {
        only_declared: false,
        bare_token: false,
        max_failed_handshakes: 4,
    };
    let attempt = |peer: u8, hello: Hello| {
        let mut bytes = vec![peer];
        bytes.extend(encoded(&[Frame::Hello(hello)]));
        bytes
    };
    let input = |settings: Settings, attempts: Vec<Vec<u8>>| {
        let mut bytes = vec![settings.to_flags()];
        bytes.extend(attempts.concat());
        bytes
    };

    let mut old_version = hello(OPS_TOKEN, &["app"]);
    old_version.protocol_version = PROTOCOL_VERSION.wrapping_add(1);
    let bad_tokens = (0..5)
        .map(|_| attempt(0, hello("guess", &["app"])))
        .collect();
    let mut control_stream = attempt(1, hello(ALICE_TOKEN, &["blog"]));
    control_stream.extend(encoded(&[Frame::Drain]));
    vec![
        (
            "alice-allowed",
            input(
                open,
                vec![attempt(0, hello(ALICE_TOKEN, &["App", "blog", "app"]))],
            ),
        ),
        (
            "alice-not-allowed",
            input(open, vec![attempt(0, hello(ALICE_TOKEN, &["api"]))]),
        ),
        (
            "ops-any-name",
            input(open, vec![attempt(2, hello(OPS_TOKEN, &["x-1", "Y2"]))]),
        ),
        (
            "mixed-undeclared",
            input(
                only_declared,
                vec![attempt(1, hello(MIXED_TOKEN, &["other"]))],
            ),
        ),
        (
            "bare-declared",
            input(only_declared, vec![attempt(1, hello(BARE_TOKEN, &["api"]))]),
        ),
        (
            "invalid-names",
            input(open, vec![attempt(0, hello(OPS_TOKEN, &["-a", ""]))]),
        ),
        (
            "no-names",
            input(open, vec![attempt(0, hello(OPS_TOKEN, &[]))]),
        ),
        ("old-version", input(open, vec![attempt(0, old_version)])),
        ("bad-tokens-then-good", {
            let mut attempts: Vec<Vec<u8>> = bad_tokens;
            attempts.push(attempt(0, hello(OPS_TOKEN, &["app"])));
            input(only_declared, attempts)
        }),
        ("hello-then-drain", input(open, vec![control_stream])),
    ]
}

/// Returns the seeds of `wire_headers`: heads with hop-by-hop, upgrade, duplicate and odd
/// fields.
pub fn wire_headers() -> Vec<Seed> {
    let mut upgrade = request_head();
    upgrade.headers = vec![
        Header::new("Host", "app.localhost"),
        Header::new("Connection", "keep-alive, Upgrade, X-Private"),
        Header::new("Upgrade", "websocket"),
        Header::new("upgrade", "h2c"),
        Header::new("x-private", "1"),
        Header::new("TE", "trailers"),
        Header::new("keep-alive", "timeout=5"),
    ];
    let mut lengths = response_head();
    lengths.headers = vec![
        Header::new("content-length", " 42 "),
        Header::new("set-cookie", "a=1"),
        Header::new("set-cookie", "b=2"),
        Header::new("x-obs-text", vec![0xe9, b'\t', 0x80]),
        Header::new("te", "gzip"),
    ];
    vec![
        ("upgrade-request", encoded(&[Frame::RequestHead(upgrade)])),
        (
            "response-and-trailers",
            encoded(&[
                Frame::ResponseHead(lengths),
                Frame::Data(Bytes::from_static(b"x")),
                Frame::Trailers(vec![Header::new("grpc-status", "0")]),
            ]),
        ),
        (
            "invalid-value",
            encoded(&[Frame::Trailers(vec![
                Header::new("x-ok", "1"),
                Header::new("x-bad", b"a\r\nb".to_vec()),
            ])]),
        ),
    ]
}

fn hello(token: &str, tunnels: &[&str]) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        token: token.into(),
        tunnels: tunnels.iter().map(|name| name.to_string()).collect(),
    }
}

fn request_head() -> RequestHead {
    RequestHead {
        tunnel: "app".into(),
        method: "POST".into(),
        target: "/upload?part=1".into(),
        version: HttpVersion::Http11,
        scheme: "http".into(),
        headers: vec![
            Header::new("host", "app.localhost"),
            Header::new("content-type", "text/plain"),
        ],
        client_addr: (Ipv6Addr::LOCALHOST, 40000).into(),
        upgrade: false,
        empty_body: false,
    }
}

fn response_head() -> ResponseHead {
    ResponseHead {
        status: 200,
        headers: vec![Header::new("content-length", "10")],
        empty_body: false,
    }
}

/// Encodes `frames` one after another.
///
/// # Panics
///
/// Panics when a frame does not encode, which for these samples is a bug in the seeds.
pub fn encoded(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for frame in frames {
        encode(frame, MAX_FRAME_LEN, &mut buf).expect("sample frames encode");
    }
    buf.to_vec()
}
