use bytes::{Bytes, BytesMut};

use super::*;
use crate::frame::{Failure, FailureKind, Header, Hello, HelloReply, HttpVersion, RefuseReason};
use crate::frame::{RequestHead, ResponseHead};

fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            protocol_version: 1,
            agent_version: "0.1.0".into(),
            token: "secret".into(),
            tunnels: vec!["app".into(), "api".into()],
        }),
        Frame::HelloReply(HelloReply::Accepted {
            ingress_version: "0.1.0".into(),
            urls: vec!["http://app.localhost:8080".into()],
        }),
        Frame::HelloReply(HelloReply::Refused {
            reason: RefuseReason::BadToken,
            message: "invalid token".into(),
        }),
        Frame::RequestHead(RequestHead {
            tunnel: "app".into(),
            method: "GET".into(),
            target: "/a?b=c".into(),
            version: HttpVersion::Http11,
            scheme: "http".into(),
            headers: vec![
                Header::new("host", "app.localhost"),
                Header::new("x-dup", "1"),
                Header::new("x-dup", vec![0xff, 0x80]),
            ],
            client_addr: "127.0.0.1:5555".parse().unwrap(),
            upgrade: false,
            empty_body: true,
        }),
        Frame::ResponseHead(ResponseHead {
            status: 200,
            headers: vec![Header::new("content-length", "5")],
            empty_body: false,
        }),
        Frame::Data(Bytes::from_static(b"hello")),
        Frame::Data(Bytes::new()),
        Frame::Trailers(vec![Header::new("grpc-status", "0")]),
        Frame::End,
        Frame::Failure(Failure {
            kind: FailureKind::UpstreamRefused,
            message: "connection refused".into(),
        }),
        Frame::Drain,
    ]
}

fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(frame, MAX_FRAME_LEN, &mut buf).unwrap();
    buf
}

#[test]
fn every_frame_round_trips() {
    let decoder = FrameDecoder::default();
    for frame in sample_frames() {
        let mut buf = encoded(&frame);
        let decoded = decoder.decode(&mut buf).unwrap();
        assert_eq!(decoded.as_ref(), Some(&frame));
        assert!(buf.is_empty(), "bytes left after {frame:?}");
    }
}

#[test]
fn frames_decode_byte_by_byte() {
    let decoder = FrameDecoder::default();
    let frames = sample_frames();
    let mut all = BytesMut::new();
    for frame in &frames {
        all.extend_from_slice(&encoded(frame));
    }

    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in all.iter() {
        buf.extend_from_slice(&[*byte]);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
    assert_eq!(decoder.finish(&buf), Ok(()));
}

#[test]
fn truncated_frame_reported_at_end() {
    let decoder = FrameDecoder::default();
    let full = encoded(&Frame::Data(Bytes::from_static(b"hello")));
    for cut in 1..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let err = decoder.finish(&buf).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { buffered, .. } if buffered == cut));
    }
}

#[test]
fn oversize_length_rejected_before_payload() {
    let decoder = FrameDecoder::new(16);
    let mut buf = BytesMut::from(&[FrameType::Data as u8, 0, 0, 0, 17][..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::TooLarge { len: 17, max: 16 })
    );
    // Nothing was reserved for the claimed payload.
    assert!(buf.capacity() < 1024);

    let mut huge = BytesMut::from(&[FrameType::Hello as u8, 0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(
        FrameDecoder::default().decode(&mut huge),
        Err(DecodeError::TooLarge {
            len: u32::MAX,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn oversize_frame_not_encoded() {
    let mut buf = BytesMut::new();
    let frame = Frame::Data(Bytes::from(vec![0; 17]));
    let err = encode(&frame, 16, &mut buf).unwrap_err();
    assert!(matches!(
        err,
        EncodeError::TooLarge {
            len: 17,
            max: 16,
            ..
        }
    ));
    assert!(buf.is_empty());
    assert!(encode_data_header(17, 16).is_err());
    assert_eq!(encode_data_header(16, 16).unwrap(), [0x05, 0, 0, 0, 16]);
}

#[test]
fn unknown_type_rejected() {
    for byte in [0x00, 0x0a, 0x7f, 0xff] {
        let mut buf = BytesMut::from(&[byte, 0, 0, 0, 0][..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(DecodeError::UnknownType(byte))
        );
    }
}

#[test]
fn garbage_payload_rejected() {
    let decoder = FrameDecoder::default();
    for frame_type in [
        FrameType::Hello,
        FrameType::RequestHead,
        FrameType::HelloReply,
    ] {
        let mut buf = BytesMut::from(&[frame_type as u8, 0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { .. }), "{err:?}");
    }
}

#[test]
fn trailing_bytes_rejected() {
    let mut buf = encoded(&Frame::Trailers(vec![]));
    // Grow the payload by one byte the value does not use.
    buf[4] += 1;
    buf.extend_from_slice(&[0]);
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert!(matches!(err, DecodeError::Invalid { ref reason, .. } if reason.contains("trailing")));
}

#[test]
fn non_empty_end_rejected() {
    let mut buf = BytesMut::from(&[FrameType::End as u8, 0, 0, 0, 1, 0][..]);
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::Invalid {
            frame_type: "end",
            ..
        }
    ));
}

#[test]
fn lying_collection_length_fails_cleanly() {
    // A trailers frame claiming 2^60 fields in a 10-byte payload.
    let mut payload = vec![0xfd];
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    payload.push(0);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[FrameType::Trailers as u8]);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&payload);
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert!(matches!(err, DecodeError::Invalid { .. }), "{err:?}");
}

#[test]
fn hello_debug_hides_token() {
    let hello = Hello {
        protocol_version: 1,
        agent_version: "0.1.0".into(),
        token: "hunter2".into(),
        tunnels: vec![],
    };
    let text = format!("{:?}", Frame::Hello(hello));
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn lying_string_length_fails_without_allocating() {
    // Found by the mutation fuzzer: a hello whose agent version claims 2^57 bytes. bincode
    // allocated the claimed size before reading, which aborted the process.
    let mut payload = vec![0x01, 0xfd];
    payload.extend_from_slice(&(1u64 << 57).to_le_bytes());
    payload.extend_from_slice(b"abc");
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[FrameType::Hello as u8]);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&payload);
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Invalid {
                frame_type: "hello",
                ..
            }
        ),
        "{err:?}"
    );
}
