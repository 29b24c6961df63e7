//! Optional extra rows (`--with-peers`): other tunnels and proxies found on PATH, each set up
//! on loopback in front of the same demo upstream. Nothing is downloaded; a missing program
//! is skipped with a note.
//!
//! NOTE: none of these programs was installed where this module was written, so the
//! command lines below follow their documentation and have not been run here.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::client::Target;
use super::memory::Watched;
use super::procs::Processes;
use super::setup::free_tcp_port;
use super::{PathSpec, Role};

/// Starts every peer found on PATH and returns the ones that started. A note records each
/// peer that was skipped, with the reason.
pub(super) fn start(
    processes: &Processes,
    upstream: SocketAddr,
    work_dir: &Path,
    notes: &mut Vec<String>,
) -> Vec<PathSpec> {
    let mut paths = Vec::new();
    for name in ["nginx", "rathole", "bore"] {
        let Some(program) = find_on_path(name) else {
            notes.push(format!("--with-peers: {name} not found on PATH; skipped"));
            continue;
        };
        let started = match name {
            "nginx" => start_nginx(processes, &program, upstream, work_dir),
            "rathole" => start_rathole(processes, &program, upstream, work_dir),
            _ => start_bore(processes, &program, upstream),
        };
        match started {
            Ok(path) => paths.push(path),
            Err(err) => notes.push(format!("--with-peers: {name} failed to start: {err:#}")),
        }
    }
    paths
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn peer_path(label: &str, listen: SocketAddr, pids: Vec<Watched>) -> PathSpec {
    PathSpec {
        target: Target::local(label, listen, None),
        role: Role::Peer,
        processes: pids,
    }
}

/// nginx as a plain reverse proxy with buffering off in both directions and WebSocket
/// upgrades passed on. One process (`master_process off`), so its PID is the one started.
fn start_nginx(
    processes: &Processes,
    program: &Path,
    upstream: SocketAddr,
    work_dir: &Path,
) -> anyhow::Result<PathSpec> {
    let dir = work_dir.join("nginx");
    std::fs::create_dir_all(&dir).context("failed to create the nginx folder")?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
    let base = dir.display();
    let config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {base}/nginx.pid;\n\
         error_log {base}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_max_body_size 0;\n\
         client_body_temp_path {base}/body;\n  proxy_temp_path {base}/proxy;\n\
         fastcgi_temp_path {base}/fastcgi;\n  uwsgi_temp_path {base}/uwsgi;\n  scgi_temp_path {base}/scgi;\n\
         map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
         upstream demo {{ server {upstream}; keepalive 256; }}\n\
         server {{\n    listen {listen};\n    location / {{\n\
         proxy_pass http://demo;\n      proxy_http_version 1.1;\n\
         proxy_set_header Host $host;\n      proxy_set_header Upgrade $http_upgrade;\n\
         proxy_set_header Connection $connection_upgrade;\n      proxy_buffering off;\n\
         proxy_request_buffering off;\n      proxy_read_timeout 600s;\n    }}\n  }}\n}}\n"
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config).context("failed to write nginx.conf")?;
    let args = [
        "-p".to_string(),
        dir.display().to_string(),
        "-c".to_string(),
        config_path.display().to_string(),
    ];
    let started = processes.start("nginx", program, &args)?;
    Ok(peer_path(
        "nginx",
        listen,
        vec![Watched::new("nginx", started.pid)],
    ))
}

/// rathole server and client on loopback, one service forwarding to the demo upstream.
fn start_rathole(
    processes: &Processes,
    program: &Path,
    upstream: SocketAddr,
    work_dir: &Path,
) -> anyhow::Result<PathSpec> {
    let control = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
    let token = format!("bench-{}", crate::clock::unix_micros());

    let server = format!(
        "[server]\nbind_addr = \"{control}\"\ndefault_token = \"{token}\"\n\n\
         [server.services.app]\nbind_addr = \"{listen}\"\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"{control}\"\ndefault_token = \"{token}\"\n\n\
         [client.services.app]\nlocal_addr = \"{upstream}\"\n"
    );
    let server_path = work_dir.join("rathole-server.toml");
    let client_path = work_dir.join("rathole-client.toml");
    std::fs::write(&server_path, server).context("failed to write the rathole server config")?;
    std::fs::write(&client_path, client).context("failed to write the rathole client config")?;

    let server = processes.start(
        "rathole-server",
        program,
        &["--server".to_string(), server_path.display().to_string()],
    )?;
    let client = processes.start(
        "rathole-client",
        program,
        &["--client".to_string(), client_path.display().to_string()],
    )?;
    let pids = vec![
        Watched::new("rathole-server", server.pid),
        Watched::new("rathole-client", client.pid),
    ];
    Ok(peer_path("rathole", listen, pids))
}

/// bore server bound to loopback and a bore client exposing the demo upstream on a fixed
/// port. bore's control port is fixed at 7835, so this fails if that port is taken.
fn start_bore(
    processes: &Processes,
    program: &Path,
    upstream: SocketAddr,
) -> anyhow::Result<PathSpec> {
    let port = free_tcp_port()?.to_string();
    let server_args = [
        "server",
        "--bind-addr",
        "127.0.0.1",
        "--min-port",
        &port,
        "--max-port",
        &port,
    ]
    .map(str::to_string);
    let server = processes.start("bore-server", program, &server_args)?;
    let client_args = [
        "local".to_string(),
        upstream.port().to_string(),
        "--local-host".to_string(),
        "127.0.0.1".to_string(),
        "--to".to_string(),
        "127.0.0.1".to_string(),
        "--port".to_string(),
        port.clone(),
    ];
    let client = processes.start("bore-client", program, &client_args)?;
    let listen: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .context("invalid bore address")?;
    let pids = vec![
        Watched::new("bore-server", server.pid),
        Watched::new("bore-client", client.pid),
    ];
    Ok(peer_path("bore", listen, pids))
}
