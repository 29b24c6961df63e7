//! Child processes of a local run: started with their output in log files, stopped by PID
//! with SIGTERM and, if they linger, SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Time a process gets to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A started process.
#[derive(Debug)]
pub(super) struct Started {
    pub pid: u32,
    /// Lines the process writes to stdout. Lines that arrive while the channel is full are
    /// dropped, so a receiver that stops reading never blocks the process.
    pub stdout: mpsc::Receiver<String>,
    pub log: PathBuf,
}

/// The processes a run has started.
#[derive(Debug)]
pub(super) struct Processes {
    log_dir: PathBuf,
    running: Mutex<Vec<(String, Child)>>,
}

impl Processes {
    /// Prepares to start processes that log to files in `log_dir`.
    pub(super) fn new(log_dir: PathBuf) -> Self {
        Self {
            log_dir,
            running: Mutex::new(Vec::new()),
        }
    }

    /// Starts `program` with stderr and stdout going to `logs/<name>.log`; stdout lines are
    /// also passed on through [`Started::stdout`].
    ///
    /// # Errors
    ///
    /// Returns an error when the log file cannot be created or the program cannot be started.
    pub(super) fn start(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Started> {
        let log = self.log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let stdout_log = stderr
            .try_clone()
            .with_context(|| format!("failed to open {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            // tracing-subscriber leaves colour codes out when NO_COLOR is set; the output
            // goes to a log file, not a terminal.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {}", program.display()))?;
        let pid = child.id().context("started process has no PID")?;
        let (lines_tx, lines_rx) = mpsc::channel(64);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_stdout(
                stdout,
                tokio::fs::File::from_std(stdout_log),
                lines_tx,
            ));
        }
        lock(&self.running).push((name.to_string(), child));
        Ok(Started {
            pid,
            stdout: lines_rx,
            log,
        })
    }

    /// Stops every started process and returns a note for each one that did not stop on
    /// SIGTERM within the grace period.
    pub(super) async fn stop_all(&self) -> Vec<String> {
        let children = std::mem::take(&mut *lock(&self.running));
        let stops = children.into_iter().map(|(name, child)| stop(name, child));
        futures_util::future::join_all(stops)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Sends SIGTERM to the child's PID, waits up to [`STOP_GRACE`] for it to exit, then kills it.
async fn stop(name: String, mut child: Child) -> Option<String> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(format!("{name} exited during the run ({status})"));
    }
    let Some(pid) = child.id() else {
        return Some(format!("{name} exited during the run"));
    };
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    if !term.is_ok_and(|status| status.success()) {
        tracing::debug!(name, pid, "SIGTERM could not be sent");
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(format!("failed to wait for {name} (PID {pid}): {err}")),
        Err(_) => {
            let _ = child.kill().await;
            Some(format!(
                "{name} (PID {pid}) did not exit within {} s of SIGTERM and was killed",
                STOP_GRACE.as_secs()
            ))
        }
    }
}

async fn forward_stdout(
    stdout: ChildStdout,
    mut log: tokio::fs::File,
    lines: mpsc::Sender<String>,
) {
    let mut reader = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        let _ = log.write_all(format!("{line}\n").as_bytes()).await;
        let _ = lines.try_send(line);
    }
}

/// Waits until the process prints a stdout line starting with `prefix` and returns the rest
/// of that line.
///
/// # Errors
///
/// Returns an error when the process closes stdout or `deadline` passes first.
pub(super) async fn wait_for_line(
    started: &mut Started,
    name: &str,
    prefix: &str,
    deadline: Duration,
) -> anyhow::Result<String> {
    let stop_at = Instant::now() + deadline;
    loop {
        let line = tokio::time::timeout_at(stop_at, started.stdout.recv()).await;
        match line {
            Ok(Some(line)) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.trim().to_string());
                }
            }
            Ok(None) => bail!(
                "{name} exited before printing {prefix:?}; see {}",
                started.log.display()
            ),
            Err(_) => bail!(
                "{name} did not print {prefix:?} within {} s; see {}",
                deadline.as_secs(),
                started.log.display()
            ),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
