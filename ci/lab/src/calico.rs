//! The calico-node stand-in, run as the container of the calico-node DaemonSet's pods.
//!
//! Like calico-node it needs `/var/run/calico` usable by the user its pod runs it as
//! (uid 999 on the hardened site, root on a stock install): BIRD keeps its control
//! socket there. When it is not, it logs the line the incident's calico-node
//! logged and exits non-zero, so the kubelet crash-loops it. Otherwise it runs the real
//! BIRD with an iBGP full mesh to every other node, exporting the node's pod block.
//! `calico-node -bird-ready` is Calico's own readiness check: every BGP session must be
//! Established.

use crate::topology::{Topology, CALICO_AS};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

pub const RUN_DIR: &str = "/var/run/calico";
pub const BIRD_SOCKET: &str = "/var/run/calico/bird.ctl";
pub const PERMISSION_DENIED_LINE: &str = "Failed to initialize BIRD: could not load existing routes — permission denied on /var/run/calico";

fn log(level: &str, message: &str) {
    println!(
        "{} [{level}][1] {message}",
        k8s_openapi::jiff::Timestamp::now()
    );
}

fn load_topology() -> Result<Topology, String> {
    let path = std::env::var("POSTFLIGHT_LAB_TOPOLOGY")
        .map_err(|_| "POSTFLIGHT_LAB_TOPOLOGY is not set".to_string())?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("parsing {path}: {e}"))
}

/// BIRD 2 configuration for one node. Timers are short so a rebooted peer is back within
/// seconds (BIRD's defaults: connect retry 120 s, error wait 60–300 s).
pub fn bird_config(topology: &Topology, node_name: &str) -> Option<String> {
    let node = topology.node(node_name)?;
    let mut config = format!(
        "router id {ip};\nprotocol device {{ scan time 2; }}\n\
         protocol direct {{ ipv4; interface \"eth0\"; }}\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP || source = RTS_STATIC; }}; }}\n\
         protocol static pools {{ ipv4; route {cidr} blackhole; }}\n\
         template bgp mesh {{ local {ip} as {asn}; connect retry time 1; error wait time 1, 5; connect delay time 1;\n  \
         hold time 9; keepalive time 3; ipv4 {{ import all; export where proto = \"pools\"; }}; }}\n",
        ip = node.ip,
        cidr = node.pod_cidr(),
        asn = CALICO_AS
    );
    for peer in topology.nodes.iter().filter(|n| n.name != node.name) {
        config.push_str(&format!(
            "protocol bgp Mesh_{} from mesh {{ neighbor {} as {}; }}\n",
            // Calico names a node-to-node mesh session after the peer's address.
            peer.ip.to_string().replace('.', "_"),
            peer.ip,
            CALICO_AS
        ));
    }
    Some(config)
}

/// Runs calico-node: check the run directory as calico's UID, then become BIRD.
pub fn run() -> i32 {
    log("INFO", "startup/startup.go: Early log level set to info");
    let node_name = std::env::var("NODENAME").unwrap_or_default();
    log(
        "INFO",
        &format!("startup/startup.go: Checking datastore connection; node name {node_name}"),
    );
    if !crate::node::can_create_files_in(Path::new(RUN_DIR)) {
        log("FATAL", PERMISSION_DENIED_LINE);
        return 1;
    }
    let topology = match load_topology() {
        Ok(t) => t,
        Err(e) => {
            log("FATAL", &e);
            return 1;
        }
    };
    let Some(config) = bird_config(&topology, &node_name) else {
        log(
            "FATAL",
            &format!("node {node_name:?} is not in the cluster"),
        );
        return 1;
    };
    let config_path = Path::new(RUN_DIR).join("bird.cfg");
    if let Err(e) = std::fs::write(&config_path, config) {
        log(
            "FATAL",
            &format!(
                "Failed to write BIRD configuration {}: {e}",
                config_path.display()
            ),
        );
        return 1;
    }
    log("INFO", "confd: BIRD configuration written; starting BIRD");
    let error = Command::new("bird")
        .args([
            "-f",
            "-c",
            &config_path.to_string_lossy(),
            "-s",
            BIRD_SOCKET,
        ])
        .exec();
    log("FATAL", &format!("could not start BIRD: {error}"));
    1
}

/// `calico-node -bird-ready [-threshold-time=30s]`, as Calico decides it: BIRD must
/// answer; while BIRD is younger than the threshold every BGP session must be
/// Established (a node that just started must join the whole mesh); after that one dead
/// peer no longer makes every other node unready, but a node with no session at all is.
pub fn bird_ready(args: &[String]) -> i32 {
    let threshold = args
        .iter()
        .find_map(|a| a.trim_start_matches('-').strip_prefix("threshold-time="))
        .and_then(|t| t.trim_end_matches('s').parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(std::time::Duration::from_secs(30));
    let output = Command::new("birdc")
        .args(["-s", BIRD_SOCKET, "show", "protocols"])
        .output();
    let text = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => {
            eprintln!(
                "calico/node is not ready: BIRD is not ready: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("calico/node is not ready: BIRD is not ready: birdc: {e}");
            return 1;
        }
    };
    let peers = match load_topology() {
        Ok(t) => t.nodes.len().saturating_sub(1),
        Err(e) => {
            eprintln!("calico/node is not ready: {e}");
            return 1;
        }
    };
    let sessions: Vec<&str> = text
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
        .collect();
    let established = sessions
        .iter()
        .filter(|l| l.contains("Established"))
        .count();
    let down: Vec<&str> = sessions
        .iter()
        .filter(|l| !l.contains("Established"))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let bird_age = std::fs::metadata(Path::new(RUN_DIR).join("bird.cfg"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    let whole_mesh = established == peers && down.is_empty();
    let settled = bird_age > threshold && (peers == 0 || established > 0);
    if whole_mesh || settled {
        return 0;
    }
    eprintln!(
        "calico/node is not ready: BIRD is not ready: BGP not established with {}",
        down.join(",")
    );
    1
}
