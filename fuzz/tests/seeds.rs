//! Runs the seed inputs through the targets' checks without libFuzzer, and checks that the
//! files in `fuzz/seeds/` are the ones `src/seeds.rs` writes.

use std::path::Path;

use ingress_tunnel_fuzz::handshake;
use ingress_tunnel_fuzz::{decoder, headers, seeds};
use protocol::RefuseReason;

#[test]
fn frame_decoder_seeds_pass() {
    for (name, input) in seeds::frame_decoder() {
        println!("{name}");
        decoder::run(&input);
    }
}

#[test]
fn wire_headers_seeds_pass() {
    for (name, input) in seeds::wire_headers() {
        println!("{name}");
        headers::run(&input);
    }
}

#[test]
fn handshake_seeds_reach_each_outcome() {
    let seeds = seeds::handshake();
    let outcome_of = |seed: &str| {
        let (_, input) = seeds
            .iter()
            .find(|(name, _)| *name == seed)
            .expect("seed exists");
        handshake::run(input)
    };

    let accepted = outcome_of("alice-allowed");
    let names = accepted[0].as_ref().map(|accepted| accepted.names.clone());
    assert_eq!(names, Ok(vec!["app".to_string(), "blog".to_string()]));

    let reason = |outcome: &[Result<_, ingress::fuzzing::Refused>]| {
        outcome
            .last()
            .and_then(|last| last.as_ref().err())
            .map(|refused| refused.reason)
    };
    let cases = [
        ("alice-not-allowed", RefuseReason::NameNotAllowed),
        ("mixed-undeclared", RefuseReason::NameNotAllowed),
        ("invalid-names", RefuseReason::InvalidName),
        ("no-names", RefuseReason::InvalidName),
        ("old-version", RefuseReason::UnsupportedVersion),
        ("bad-tokens-then-good", RefuseReason::RateLimited),
    ];
    for (seed, expected) in cases {
        assert_eq!(reason(&outcome_of(seed)), Some(expected), "{seed}");
    }

    for seed in ["ops-any-name", "bare-declared", "hello-then-drain"] {
        let outcome = outcome_of(seed);
        assert_eq!(outcome.len(), 1, "{seed}");
        assert!(outcome[0].is_ok(), "{seed}: {outcome:?}");
    }
}

#[test]
fn saved_seeds_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, inputs) in seeds::all() {
        let dir = root.join(target);
        let saved = std::fs::read_dir(&dir).map_or(0, |entries| entries.count());
        assert_eq!(saved, inputs.len(), "files in {}", dir.display());
        for (name, bytes) in inputs {
            let path = dir.join(name);
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{} is out of date; run the write_seeds example",
                path.display()
            );
        }
    }
}
