//! Golden byte vectors for every frame type, so that any change to the wire format shows up as
//! a diff here, and a round-trip property test over generated frames.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::{
    encode, Failure, FailureKind, Frame, FrameDecoder, Header, Hello, HelloReply, HttpVersion,
    RefuseReason, RequestHead, ResponseHead, MAX_FRAME_LEN,
};

fn hex_of(frame: &Frame) -> String {
    let mut buf = BytesMut::new();
    encode(frame, MAX_FRAME_LEN, &mut buf).expect("sample frames encode");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn golden() -> Vec<(Frame, &'static str)> {
    vec![
        (
            Frame::Hello(Hello {
                protocol_version: 1,
                agent_version: "0.1.0".into(),
                token: "tok".into(),
                tunnels: vec!["app".into()],
            }),
            "01000000100105302e312e3003746f6b0103617070",
        ),
        (
            Frame::HelloReply(HelloReply::Accepted {
                ingress_version: "0.1.0".into(),
                urls: vec!["http://app.localhost:8080".into()],
            }),
            "02000000220005302e312e300119687474703a2f2f6170702e6c6f63616c686f73743a38303830",
        ),
        (
            Frame::HelloReply(HelloReply::Refused {
                reason: RefuseReason::BadToken,
                message: "invalid token".into(),
            }),
            "020000001001000d696e76616c696420746f6b656e",
        ),
        (
            Frame::RequestHead(RequestHead {
                tunnel: "app".into(),
                method: "GET".into(),
                target: "/".into(),
                version: HttpVersion::Http11,
                scheme: "http".into(),
                headers: vec![Header::new("host", "app.localhost")],
                client_addr: "127.0.0.1:40000".parse().expect("valid address"),
                upgrade: false,
                empty_body: true,
            }),
            "030000002e0361707003474554012f0104687474700104686f73740d6170702e6c6f63616c686f7374007f000001fb409c0001",
        ),
        (
            Frame::ResponseHead(ResponseHead {
                status: 200,
                headers: vec![Header::new("content-length", "2")],
                empty_body: false,
            }),
            "0400000014c8010e636f6e74656e742d6c656e677468013200",
        ),
        (Frame::Data(Bytes::from_static(b"hi")), "05000000026869"),
        (Frame::Trailers(vec![Header::new("grpc-status", "0")]), "060000000f010b677270632d7374617475730130"),
        (Frame::End, "0700000000"),
        (
            Frame::Failure(Failure {
                kind: FailureKind::UpstreamRefused,
                message: "refused".into(),
            }),
            "0800000009000772656675736564",
        ),
        (Frame::Drain, "0900000000"),
    ]
}

#[test]
fn frames_match_golden_bytes() {
    for (frame, expected) in golden() {
        assert_eq!(hex_of(&frame), expected, "{frame:?}");
    }
}

fn header_strategy() -> impl Strategy<Value = Header> + Clone {
    (
        "[a-z-]{1,20}",
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(name, value)| Header { name, value })
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    let headers = proptest::collection::vec(header_strategy(), 0..8);
    prop_oneof![
        (
            any::<u16>(),
            ".{0,10}",
            ".{0,20}",
            proptest::collection::vec("[a-z0-9-]{1,12}", 0..4)
        )
            .prop_map(|(protocol_version, agent_version, token, tunnels)| {
                Frame::Hello(Hello {
                    protocol_version,
                    agent_version,
                    token,
                    tunnels,
                })
            }),
        (
            ".{0,20}",
            headers.clone(),
            any::<bool>(),
            any::<std::net::SocketAddr>()
        )
            .prop_map(|(target, headers, upgrade, mut client_addr)| {
                // The wire carries address and port only; IPv6 flow info and scope id are lost.
                if let std::net::SocketAddr::V6(v6) = &mut client_addr {
                    v6.set_flowinfo(0);
                    v6.set_scope_id(0);
                }
                Frame::RequestHead(RequestHead {
                    tunnel: "app".into(),
                    method: "POST".into(),
                    target,
                    version: HttpVersion::Http2,
                    scheme: "https".into(),
                    headers,
                    client_addr,
                    upgrade,
                    empty_body: !upgrade,
                })
            }),
        (any::<u16>(), headers.clone()).prop_map(|(status, headers)| Frame::ResponseHead(
            ResponseHead {
                status,
                headers,
                empty_body: status == 204
            }
        )),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(|data| Frame::Data(data.into())),
        headers.prop_map(Frame::Trailers),
        Just(Frame::End),
        Just(Frame::Drain),
        ".{0,50}".prop_map(|message| Frame::Failure(Failure {
            kind: FailureKind::UpstreamTimeout,
            message
        })),
    ]
}

proptest! {
    #[test]
    fn generated_frames_round_trip(frames in proptest::collection::vec(frame_strategy(), 1..6), split in 0usize..4096) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode(frame, MAX_FRAME_LEN, &mut wire).expect("generated frames encode");
        }
        // Feed the bytes in two parts at an arbitrary point, as a network read would.
        let split = split.min(wire.len());
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::from(&wire[..split]);
        let mut decoded = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf).expect("valid bytes decode") {
            decoded.push(frame);
        }
        buf.extend_from_slice(&wire[split..]);
        while let Some(frame) = decoder.decode(&mut buf).expect("valid bytes decode") {
            decoded.push(frame);
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let decoder = FrameDecoder::new(256);
        let mut buf = BytesMut::from(&bytes[..]);
        // Either frames, a need for more bytes, or an error: never a panic or a hang.
        for _ in 0..bytes.len() + 1 {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}
