//! Checks a run against the project's benchmark targets. The formula behind each figure is
//! spelled out in the target text, so the table can be read on its own.

use super::report::{LatencyCell, Percentiles, Report, TargetCheck};
use super::tables::ms;
use super::{format_bytes, MIB};

/// Evaluates every target the run has data for; the others are listed as not measured.
pub(super) fn evaluate(report: &Report) -> Vec<TargetCheck> {
    let direct = label_of(report, &["direct"]);
    let tunnel = label_of(report, &["tunnel", "remote tunnel"]);
    let baseline = label_of(report, &["long-poll baseline"]);
    let one_client = |path: &Option<String>, request: &str| {
        path.as_deref()
            .and_then(|path| find(report, "payload", path, request, 1))
    };
    let mut checks = Vec::new();

    let direct_0 = one_client(&direct, "GET 0 B");
    let tunnel_0 = one_client(&tunnel, "GET 0 B");
    let baseline_0 = one_client(&baseline, "GET 0 B");
    checks.push(added_latency(direct_0, tunnel_0, "back to back"));
    let sporadic = |path: &Option<String>| {
        let cell = report
            .latency
            .iter()
            .find(|cell| cell.stage == "sporadic" && Some(&cell.path) == path.as_ref())?;
        cell.stats
    };
    checks.push(added_latency(
        sporadic(&direct),
        sporadic(&tunnel),
        "requests 100 ms apart",
    ));
    checks.push(added_ratio(direct_0, tunnel_0, baseline_0));
    checks.push(p99_ratio(report, &tunnel, &baseline));
    for request in ["GET 10 MiB", "POST 10 MiB"] {
        let direct = one_client(&direct, request);
        let tunnel = one_client(&tunnel, request);
        checks.push(throughput_share(request, direct, tunnel));
    }
    checks.extend(memory_checks(report, tunnel.as_deref()));
    checks
}

fn label_of(report: &Report, roles: &[&str]) -> Option<String> {
    report
        .paths
        .iter()
        .find(|path| roles.contains(&path.role.as_str()))
        .map(|path| path.label.clone())
}

fn find(
    report: &Report,
    stage: &str,
    path: &str,
    request: &str,
    clients: usize,
) -> Option<Percentiles> {
    report
        .latency
        .iter()
        .find(|cell: &&LatencyCell| {
            cell.stage == stage
                && cell.path == path
                && cell.request == request
                && cell.clients == clients
        })
        .and_then(|cell| cell.stats)
}

fn not_measured(target: &str) -> TargetCheck {
    TargetCheck {
        target: target.to_string(),
        measured: "not measured".to_string(),
        met: None,
    }
}

fn added_latency(
    direct: Option<Percentiles>,
    tunnel: Option<Percentiles>,
    pacing: &str,
) -> TargetCheck {
    let target = format!("tunnel p50 minus direct p50, GET 0 B, 1 client, {pacing} < 1 ms");
    let (Some(direct), Some(tunnel)) = (direct, tunnel) else {
        return not_measured(&target);
    };
    let added = tunnel.p50_ms - direct.p50_ms;
    TargetCheck {
        target,
        measured: format!("{} ms", ms(added)),
        met: Some(added < 1.0),
    }
}

fn added_ratio(
    direct: Option<Percentiles>,
    tunnel: Option<Percentiles>,
    baseline: Option<Percentiles>,
) -> TargetCheck {
    let target = "(baseline p50 - direct p50) / (tunnel p50 - direct p50), GET 0 B, 1 client >= 10";
    let (Some(direct), Some(tunnel), Some(baseline)) = (direct, tunnel, baseline) else {
        return not_measured(target);
    };
    let tunnel_added = (tunnel.p50_ms - direct.p50_ms).max(0.001);
    let ratio = (baseline.p50_ms - direct.p50_ms) / tunnel_added;
    TargetCheck {
        target: target.to_string(),
        measured: format!("{ratio:.1}x"),
        met: Some(ratio >= 10.0),
    }
}

fn p99_ratio(report: &Report, tunnel: &Option<String>, baseline: &Option<String>) -> TargetCheck {
    let target = "baseline p99 / tunnel p99, GET 0 B, 128 clients >= 100";
    let at_128 = |path: &Option<String>| {
        path.as_deref()
            .and_then(|path| find(report, "concurrency", path, "GET 0 B", 128))
    };
    let (Some(tunnel), Some(baseline)) = (at_128(tunnel), at_128(baseline)) else {
        return not_measured(target);
    };
    let ratio = baseline.p99_ms / tunnel.p99_ms;
    TargetCheck {
        target: target.to_string(),
        measured: format!(
            "{ratio:.1}x ({} ms vs {} ms)",
            ms(baseline.p99_ms),
            ms(tunnel.p99_ms)
        ),
        met: Some(ratio >= 100.0),
    }
}

fn throughput_share(
    request: &str,
    direct: Option<Percentiles>,
    tunnel: Option<Percentiles>,
) -> TargetCheck {
    let target = format!("{request} through the tunnel >= 50% of direct throughput (p50 based)");
    let (Some(direct), Some(tunnel)) = (direct, tunnel) else {
        return not_measured(&target);
    };
    let rate = |p50_ms: f64| 10.0 / (p50_ms / 1000.0);
    let share = direct.p50_ms / tunnel.p50_ms;
    TargetCheck {
        target,
        measured: format!(
            "{:.0}% ({:.0} vs {:.0} MiB/s)",
            share * 100.0,
            rate(tunnel.p50_ms),
            rate(direct.p50_ms)
        ),
        met: Some(share >= 0.5),
    }
}

fn memory_checks(report: &Report, tunnel: Option<&str>) -> Vec<TargetCheck> {
    let transfer_target = "ingress peak minus before during the 1 GiB transfer < 16 MiB";
    let idle_target = "ingress growth per idle WebSocket < 20 KiB";
    let case = |name: &str| {
        report
            .memory
            .iter()
            .find(|case| Some(case.path.as_str()) == tunnel && case.case == name)
    };
    let ingress = |name: &str| {
        case(name).and_then(|case| {
            case.processes
                .iter()
                .find(|process| process.name == "ingress")
                .map(|process| (case, process))
        })
    };

    let transfer = match ingress("transfer") {
        Some((case, process)) if case.error.is_none() => {
            let growth = (process.peak_kib as f64 - process.before_kib as f64) / 1024.0;
            let size = if case.bytes == 1024 * MIB {
                String::new()
            } else {
                format!(" (measured with {}, not 1 GiB)", format_bytes(case.bytes))
            };
            TargetCheck {
                target: transfer_target.to_string(),
                measured: format!("{growth:.1} MiB{size}"),
                met: Some(growth < 16.0),
            }
        }
        _ => not_measured(transfer_target),
    };
    let idle = match ingress("idle-websockets") {
        Some((case, process)) if case.websockets_open > 0 => {
            let per_socket = (process.steady_kib as f64 - process.before_kib as f64)
                / case.websockets_open as f64;
            TargetCheck {
                target: idle_target.to_string(),
                measured: format!("{per_socket:.1} KiB over {} sockets", case.websockets_open),
                met: Some(per_socket < 20.0),
            }
        }
        _ => not_measured(idle_target),
    };
    vec![transfer, idle]
}
