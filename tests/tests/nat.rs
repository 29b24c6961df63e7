//! The tunnel across a real NAT built from Linux network namespaces. A "public" namespace has
//! the ingress and the clients, a "router" namespace masquerades with nftables, and a "home"
//! namespace has the agent and the upstream, which the public side cannot reach.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `conntrack`; each test skips with a message
//! otherwise. Everything is removed when the test ends, also when it fails. Traffic stays
//! inside the namespaces: 10.200.1.0/24 between public and router, 10.200.2.0/24 between router
//! and home.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tunnel_tests::fixture::pattern;
use tunnel_tests::process::{binary, wait_for_line};

const INGRESS_IP: &str = "10.200.1.1";
const ROUTER_PUBLIC_IP: &str = "10.200.1.2";
const ROUTER_HOME_IP: &str = "10.200.2.1";
const HOME_IP: &str = "10.200.2.2";
/// The address the home side moves to when its address changes.
const NEW_HOME_IP: &str = "10.200.2.77";

/// The three namespaces and the processes started in them. Dropping it stops the processes by
/// PID and deletes the namespaces, which also removes their veth links.
struct Network {
    public: String,
    router: String,
    home: String,
    children: Vec<Child>,
    state_dir: tunnel_tests::TempDir,
}

impl Drop for Network {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for namespace in [&self.public, &self.router, &self.home] {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
    }
}

fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|err| panic!("running {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Returns why the NAT tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    for (tool, probe) in [
        ("ip", "-V"),
        ("nft", "--version"),
        ("conntrack", "--version"),
        ("curl", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    let python = Command::new("python3")
        .args(["-c", "import websockets"])
        .output();
    if !python
        .map(|output| output.status.success())
        .unwrap_or(false)
    {
        return Some("python3 with the websockets package is not installed".to_string());
    }
    // Unique per call: the tests run in parallel, and a clash would read as "cannot create".
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "it-probe-{}-{}",
        std::process::id() % 100_000,
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let made = Command::new("ip").args(["netns", "add", &name]).output();
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    match made {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "cannot create network namespaces (needs root): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(err) => Some(format!("cannot run ip: {err}")),
    }
}

macro_rules! skip_without_namespaces {
    () => {
        if let Some(reason) = missing_prerequisite() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

impl Network {
    fn build() -> Network {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let network = Network {
            public: format!("it-pub-{id}"),
            router: format!("it-rtr-{id}"),
            home: format!("it-home-{id}"),
            children: Vec::new(),
            state_dir: tunnel_tests::TempDir::new("nat"),
        };
        let (public, router, home) = (&network.public, &network.router, &network.home);
        for namespace in [public, router, home] {
            run(&["ip", "netns", "add", namespace]);
            run(&["ip", "-n", namespace, "link", "set", "lo", "up"]);
        }
        // Link names are per namespace, so short fixed names do not clash between tests.
        run(&[
            "ip", "link", "add", "veth-pub", "netns", public, "type", "veth", "peer", "name",
            "veth-rp", "netns", router,
        ]);
        run(&[
            "ip",
            "link",
            "add",
            "veth-home",
            "netns",
            home,
            "type",
            "veth",
            "peer",
            "name",
            "veth-rh",
            "netns",
            router,
        ]);
        for (namespace, link, address) in [
            (public, "veth-pub", INGRESS_IP),
            (router, "veth-rp", ROUTER_PUBLIC_IP),
            (router, "veth-rh", ROUTER_HOME_IP),
            (home, "veth-home", HOME_IP),
        ] {
            run(&[
                "ip",
                "-n",
                namespace,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                link,
            ]);
            run(&["ip", "-n", namespace, "link", "set", link, "up"]);
        }
        // Home reaches the public side only through the router; the public side has no route
        // to 10.200.2.0/24 at all.
        run(&[
            "ip",
            "-n",
            home,
            "route",
            "add",
            "default",
            "via",
            ROUTER_HOME_IP,
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            router,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        run(&[
            "ip", "netns", "exec", router, "nft", "add", "table", "ip", "nat",
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            router,
            "nft",
            "add",
            "chain",
            "ip",
            "nat",
            "post",
            "{ type nat hook postrouting priority 100 ; }",
        ]);
        network.set_masquerade_ports("20000-20099");
        network
    }

    /// Replaces the masquerade rule so that mapped source ports come from `range`.
    fn set_masquerade_ports(&self, range: &str) {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.router,
            "nft",
            "flush",
            "chain",
            "ip",
            "nat",
            "post",
        ]);
        // The agent's QUIC flow is UDP; anything else leaving home is masqueraded as usual.
        let udp = format!("oifname veth-rp ip protocol udp masquerade to :{range} random");
        for rule in [udp.as_str(), "oifname veth-rp masquerade"] {
            let mut args = vec![
                "ip",
                "netns",
                "exec",
                &self.router,
                "nft",
                "add",
                "rule",
                "ip",
                "nat",
                "post",
            ];
            args.extend(rule.split(' '));
            run(&args);
        }
    }

    /// Gives the NAT a new mapping for the agent's flow: new port range, conntrack flushed.
    fn rebind_nat(&self) {
        self.set_masquerade_ports("21000-21099");
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.router, "conntrack", "-F"])
            .output();
    }

    fn spawn(
        &mut self,
        namespace: &str,
        program: &PathBuf,
        args: &[&str],
    ) -> std::process::ChildStdout {
        let mut child = Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", program.display()));
        let stdout = child.stdout.take().expect("child stdout");
        self.children.push(child);
        stdout
    }

    /// Starts fixture, ingress and agent and waits until a request goes through.
    fn start_tunnel(&mut self) {
        let home = self.home.clone();
        let public = self.public.clone();
        let fixture = self.spawn(&home, &binary("fixture-server"), &["127.0.0.1:3000"]);
        wait_for_line(fixture, "listening on");

        let state = self.state_dir.path.display().to_string();
        let ingress_args = [
            "--http",
            "10.200.1.1:8080",
            "--quic",
            "10.200.1.1:4433",
            "--token",
            "nat-token",
            "--state-dir",
            &state,
            "--default-tunnel",
            "app",
        ];
        let ingress = self.spawn(&public, &binary("ingress"), &ingress_args);
        let fingerprint = wait_for_line(ingress, "QUIC certificate SHA-256:")
            .rsplit(' ')
            .next()
            .expect("fingerprint")
            .to_string();

        let agent_args = [
            "--ingress",
            "10.200.1.1:4433",
            "--cert-sha256",
            &fingerprint,
            "--token",
            "nat-token",
            "--tunnel",
            "app=http://127.0.0.1:3000",
        ];
        self.spawn(&home, &binary("tunnel-agent"), &agent_args);

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let output = self.curl(&["--max-time", "2", "http://10.200.1.1:8080/small"]);
            if output.status.success() && output.stdout == b"hello, world\n" {
                return;
            }
            assert!(Instant::now() < deadline, "tunnel not up within 15 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn curl(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.public,
                "curl",
                "--silent",
                "--show-error",
            ])
            .args(args)
            .output()
            .expect("running curl")
    }

    /// Returns the router's UDP connection-tracking entries, as `conntrack -L` lists them.
    fn udp_flows(&self) -> String {
        let flows = run(&[
            "ip",
            "netns",
            "exec",
            &self.router,
            "conntrack",
            "-L",
            "-p",
            "udp",
        ]);
        String::from_utf8_lossy(&flows.stdout).to_string()
    }

    fn spawn_in_public(&self, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.public, program])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {program}: {err}"))
    }
}

fn finish(child: Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    let mut child = child;
    loop {
        if child.try_wait().expect("child status").is_some() {
            return child.wait_with_output().expect("child output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("child output");
            panic!(
                "child still running after {within:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const WS_SESSION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ws_session.py");

/// Starts, in the public namespace, a 30-line download (100 ms apart) and a 60-message
/// WebSocket session through the tunnel, and gives both 1.2 s to get going.
fn start_download_and_websocket(network: &Network) -> (Child, Child) {
    let download = network.spawn_in_public(
        "curl",
        &[
            "--silent",
            "--max-time",
            "30",
            "http://10.200.1.1:8080/drip?lines=30&interval_ms=100",
        ],
    );
    let session = network.spawn_in_public(
        "python3",
        &[WS_SESSION, "ws://10.200.1.1:8080/ws", "30", "0.05", "0"],
    );
    std::thread::sleep(Duration::from_millis(1200));
    (download, session)
}

/// Checks that the download got its 30 lines in order and the WebSocket all 60 echoes.
fn check_download_and_websocket(download: Child, session: Child) {
    let output = finish(session, Duration::from_secs(40));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok 60");
    let output = finish(download, Duration::from_secs(40));
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 30, "{text}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("line {i} ")),
            "line {i} is {line:?}"
        );
    }
}

#[test]
fn nat_traffic_flows() {
    skip_without_namespaces!();
    let mut network = Network::build();

    // The public side really cannot reach home directly.
    let direct = network.curl(&["--max-time", "2", &format!("http://{HOME_IP}:3000/small")]);
    assert!(
        !direct.status.success(),
        "home was reachable without the tunnel"
    );

    network.start_tunnel();

    let upload = network.state_dir.path.join("upload.bin");
    std::fs::write(&upload, pattern(10 << 20)).expect("write upload file");
    let output = network.curl(&[
        "--max-time",
        "30",
        "--data-binary",
        &format!("@{}", upload.display()),
        "http://10.200.1.1:8080/upload",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        hex::encode(Sha256::digest(pattern(10 << 20)))
    );

    let sse = network.curl(&[
        "--max-time",
        "10",
        "--no-buffer",
        "http://10.200.1.1:8080/sse?events=5&interval_ms=100",
    ]);
    let events = String::from_utf8_lossy(&sse.stdout)
        .matches("data: ")
        .count();
    assert_eq!(events, 5);

    let session = network.spawn_in_public(
        "python3",
        &[WS_SESSION, "ws://10.200.1.1:8080/ws", "10", "0.02", "0"],
    );
    let output = finish(session, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok 20");
}

#[test]
fn nat_rebinding_keeps_websocket_and_download() {
    skip_without_namespaces!();
    let mut network = Network::build();
    network.start_tunnel();

    let (download, session) = start_download_and_websocket(&network);
    network.rebind_nat();

    check_download_and_websocket(download, session);

    // The agent's flow now leaves from the new port range.
    let flows = network.udp_flows();
    assert!(
        flows.contains("dport=21"),
        "no mapping in the new range: {flows}"
    );
}

#[test]
fn idle_websocket_outlives_nat_timeout() {
    skip_without_namespaces!();
    let mut network = Network::build();
    // Expire idle UDP mappings after 3 s, longer than the 2 s keep-alive interval, so the
    // keep-alives must hold the mapping open through a 12 s pause in the WebSocket.
    for key in [
        "net.netfilter.nf_conntrack_udp_timeout=3",
        "net.netfilter.nf_conntrack_udp_timeout_stream=3",
    ] {
        let _ = Command::new("ip")
            .args(["netns", "exec", &network.router, "sysctl", "-q", "-w", key])
            .output();
    }
    network.start_tunnel();

    let session = network.spawn_in_public(
        "python3",
        &[WS_SESSION, "ws://10.200.1.1:8080/ws", "3", "0.01", "12"],
    );
    let output = finish(session, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok 6");
}

/// The agent's own address changes, as when DHCP hands the home network a new lease: a new
/// address is added, the old one removed. The agent's socket is bound to no address in
/// particular, so its packets leave from the new one, the NAT maps a new flow, and the QUIC
/// connection migrates without the agent doing anything. A WebSocket and a download carry on.
#[test]
fn home_address_change_keeps_websocket_and_download() {
    skip_without_namespaces!();
    let mut network = Network::build();
    network.start_tunnel();

    let (download, session) = start_download_and_websocket(&network);
    let home = network.home.clone();
    let in_home = |args: &[&str]| {
        let mut full = vec!["ip", "-n", home.as_str()];
        full.extend_from_slice(args);
        run(&full)
    };
    // Without promotion, removing the first address of a subnet removes the others with it.
    run(&[
        "ip",
        "netns",
        "exec",
        &home,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.conf.veth-home.promote_secondaries=1",
    ]);
    in_home(&[
        "addr",
        "add",
        &format!("{NEW_HOME_IP}/24"),
        "dev",
        "veth-home",
    ]);
    in_home(&["addr", "del", &format!("{HOME_IP}/24"), "dev", "veth-home"]);
    in_home(&["route", "replace", "default", "via", ROUTER_HOME_IP]);

    check_download_and_websocket(download, session);

    // The agent's flow now comes from the new address.
    let flows = network.udp_flows();
    assert!(
        flows.contains(&format!("src={NEW_HOME_IP} ")),
        "no flow from the new address: {flows}"
    );
}
