//! The workspace's binaries run as child processes, for tests that kill them or run them in
//! network namespaces.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ChildStdout;
use std::time::Duration;

/// Path of a workspace binary in the same target directory as the running test.
///
/// # Panics
///
/// Panics when the binary was not built with `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/TEST-HASH -> target/debug/NAME; `scripts/run-tests` builds the
    // binaries first, because `cargo test` alone does not put them there.
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; run cargo build --workspace --bins first (scripts/run-tests does)",
        path.display()
    );
    path
}

/// Reads `stdout` in a thread and returns the first line starting with `prefix`.
///
/// # Panics
///
/// Panics when no such line arrives within 15 s.
pub fn wait_for_line(stdout: ChildStdout, prefix: &str) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(&wanted) {
                let _ = sender.send(line);
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("no line starting with {prefix:?} within 15 s"))
}
