//! Runs every input saved in `fuzz/regressions/TARGET/` through that target's checks. Each file
//! is an input that once made a target fail, named for the cause.
//!
//! `wire_headers/host-named-by-connection` is a request head whose `Connection` field lists
//! `host`. `transport::remove_hop_by_hop` keeps `Host` in that case, which the target's check
//! had not allowed for.

use std::path::Path;

use ingress_tunnel_fuzz::{decoder, handshake, headers};

/// A target's checks, run on one input.
type Checks = fn(&[u8]);

#[test]
fn saved_failures_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let targets: [(&str, Checks); 3] = [
        ("frame_decoder", decoder::run),
        ("handshake", |data| {
            handshake::run(data);
        }),
        ("wire_headers", headers::run),
    ];
    let mut count = 0;
    for (target, run) in targets {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("regressions directory is readable").path();
            let data = std::fs::read(&path).expect("regression input is readable");
            println!("{}", path.display());
            run(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no input found under {}", root.display());
}
