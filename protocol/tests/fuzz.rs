//! A time-boxed mutation fuzzer for the frame decoder, run by hand:
//! `FUZZ_SECONDS=600 cargo test --release -p protocol --test fuzz -- --ignored --nocapture`.
//! It mutates valid encodings (bit flips, truncation, length changes, splices) and feeds pure
//! random bytes, in random read sizes, and checks that decoding never panics, never returns
//! more bytes than it was given, and that whatever decodes encodes again. It prints the number
//! of inputs tried. A plain `cargo test` runs it for one second.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::{
    encode, Failure, FailureKind, Frame, FrameDecoder, Header, Hello, HelloReply, HttpVersion,
    RefuseReason, RequestHead, ResponseHead,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let frames = vec![
        Frame::Hello(Hello {
            protocol_version: 1,
            agent_version: "0.1.0".into(),
            token: "token".into(),
            tunnels: vec!["app".into(), "api".into()],
        }),
        Frame::HelloReply(HelloReply::Refused {
            reason: RefuseReason::NameTaken,
            message: "taken".into(),
        }),
        Frame::RequestHead(RequestHead {
            tunnel: "app".into(),
            method: "POST".into(),
            target: "/upload?x=1".into(),
            version: HttpVersion::Http11,
            scheme: "http".into(),
            headers: vec![
                Header::new("host", "app.localhost"),
                Header::new("x", vec![0xff]),
            ],
            client_addr: "[::1]:5000".parse().expect("valid address"),
            upgrade: true,
            empty_body: true,
        }),
        Frame::ResponseHead(ResponseHead {
            status: 101,
            headers: vec![Header::new("upgrade", "websocket")],
            empty_body: false,
        }),
        Frame::Data(Bytes::from_static(b"body bytes")),
        Frame::Trailers(vec![Header::new("grpc-status", "0")]),
        Frame::End,
        Frame::Failure(Failure {
            kind: FailureKind::UpstreamTimeout,
            message: "slow".into(),
        }),
        Frame::Drain,
    ];
    frames
        .iter()
        .map(|frame| {
            let mut buf = BytesMut::new();
            encode(frame, u32::MAX, &mut buf).expect("seed frames encode");
            buf.to_vec()
        })
        .collect()
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            1 => input.truncate(rng.below(input.len() + 1)),
            2 if input.len() >= 5 => {
                let len = rng.next() as u32 % 4096;
                input[1..5].copy_from_slice(&len.to_be_bytes());
            }
            3 => input.extend_from_slice(&seeds[rng.below(seeds.len())]),
            4 => input.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ => {
                let at = rng.below(input.len() + 1);
                input.insert(at, rng.next() as u8);
            }
        }
    }
    input
}

/// Feeds `input` to a decoder in random read sizes; returns the frames it produced.
fn run_one(rng: &mut Rng, input: &[u8]) -> usize {
    let decoder = FrameDecoder::new(8192);
    let mut buf = BytesMut::new();
    let mut offset = 0;
    let mut frames = 0;
    while offset < input.len() {
        let take = (1 + rng.below(64)).min(input.len() - offset);
        buf.extend_from_slice(&input[offset..offset + take]);
        offset += take;
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a frame consumed no bytes");
                    let mut again = BytesMut::new();
                    encode(&frame, u32::MAX, &mut again).expect("a decoded frame encodes");
                    frames += 1;
                }
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
    }
    let _ = decoder.finish(&buf);
    frames
}

#[test]
#[ignore = "time-boxed fuzzer; run by hand with FUZZ_SECONDS"]
fn decoder_survives_mutations() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    fuzz_for(Duration::from_secs(seconds));
}

#[test]
fn decoder_survives_mutations_briefly() {
    fuzz_for(Duration::from_secs(1));
}

fn fuzz_for(budget: Duration) {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let started = Instant::now();
    let (mut inputs, mut frames) = (0u64, 0u64);
    while started.elapsed() < budget {
        let input = if rng.below(4) == 0 {
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            mutate(&mut rng, &seeds)
        };
        frames += run_one(&mut rng, &input) as u64;
        inputs += 1;
    }
    println!(
        "fuzz: {inputs} inputs, {frames} frames decoded, {:.0} s, no panic",
        started.elapsed().as_secs_f64()
    );
    assert!(inputs > 0);
}
