//! `streaming-report` binary: writes the streaming report from a compare-latency run; see
//! `streaming-report --help`.

use std::process::ExitCode;

use clap::Parser;
use tunnel_bench::compare::streaming_report;

fn main() -> ExitCode {
    match streaming_report::run(streaming_report::Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streaming-report: {err:#}");
            ExitCode::FAILURE
        }
    }
}
