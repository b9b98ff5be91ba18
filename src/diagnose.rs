//! Known failure signatures, mapped to a root cause an on-call engineer can act on and
//! the exact commands that fix it. A signature matches on evidence already collected
//! (log lines, `stat` of the run directory, the tmpfiles.d file); nothing here does I/O.

use crate::checks::RunDirStat;
use crate::expectations::CalicoExpectations;
use crate::inventory::SshTarget;

/// How an engineer reaches a node from their own shell, for the remediation commands:
/// the inventory's SSH destination (user, host and port, which need not resolve from the
/// node's Kubernetes name), with sudo unless they log in as root; or, for a node reached
/// through a node shell, `kubectl debug node/…` with the host's root at /host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShell {
    prefix: String,
    sudo: &'static str,
    /// `kubectl debug` runs a program, not a line for a remote shell: a quoted line
    /// needs an `sh -c` in front of it there.
    runs_program: bool,
}

impl NodeShell {
    pub fn of(target: &SshTarget) -> Self {
        // Through the same bastion postflight used: the node may not be reachable
        // from the engineer's shell any other way.
        let jump = match &target.jump {
            Some(jump) => format!("-J {} ", shell_word(&jump.to_string())),
            None => String::new(),
        };
        let port = if target.port == 22 {
            String::new()
        } else {
            format!("-p {} ", target.port)
        };
        NodeShell {
            prefix: format!(
                "ssh {jump}{port}{}",
                shell_word(&format!("{}@{}", target.user, target.host))
            ),
            sudo: if target.user == "root" { "" } else { "sudo " },
            runs_program: false,
        }
    }

    /// A node without SSH: a debugging pod in the host's namespaces, as the node-shell
    /// transport uses, with the host's root filesystem at /host. It goes into the
    /// node-shell namespace, the one where Pod Security lets it run; kubectl leaves it
    /// there (`kubectl -n NAMESPACE delete pod node-debugger-…` when done).
    pub fn kubectl_debug(node: &str, image: &str, namespace: &str) -> Self {
        NodeShell {
            prefix: format!(
                "kubectl -n {} debug {} -i --quiet --profile=sysadmin --image={} -- chroot /host",
                shell_word(namespace),
                shell_word(&format!("node/{node}")),
                shell_word(image)
            ),
            sudo: "",
            runs_program: true,
        }
    }

    /// `remote` as one command line to paste; `{sudo}` in it marks where root is needed.
    fn run(&self, remote: &str) -> String {
        let remote = remote.replace("{sudo}", self.sudo);
        let quoted = remote.starts_with('"') || remote.starts_with('\'');
        if self.runs_program && quoted {
            format!("{} sh -c {remote}", self.prefix)
        } else {
            format!("{} {remote}", self.prefix)
        }
    }

    /// Writes the tmpfiles.d line calico-node needs into `file`, then applies it.
    fn restore_tmpfiles(&self, expected: &CalicoExpectations, file: &str) -> [String; 2] {
        [
            self.run(&format!(
                "\"echo '{}' | {{sudo}}tee {file}\"",
                expected.tmpfiles_line()
            )),
            self.recreate_run_dir(file),
        ]
    }

    fn recreate_run_dir(&self, file: &str) -> String {
        self.run(&format!("{{sudo}}systemd-tmpfiles --create {file}"))
    }
}

/// A word for the engineer's shell: bare when nothing in it means anything to a shell (a
/// `user@host:port` does not), quoted otherwise.
fn shell_word(word: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"@:._-/=,+%".contains(&b);
    if !word.is_empty() && word.bytes().all(plain) {
        word.to_string()
    } else {
        shell_escape::unix::escape(word.into()).into_owned()
    }
}

/// Log lines with which calico-node tells it cannot start; seeing one ends the wait for
/// calico-node Ready at once.
const FATAL_CALICO_LOG_MARKERS: &[&str] = &[
    "permission denied on /var/run/calico",
    "permission denied on /run/calico",
    "Failed to initialize BIRD",
];

pub use crate::checks::Diagnosis;

/// The first known fatal line in a calico-node log.
pub fn fatal_calico_log_line(log: &str) -> Option<String> {
    log.lines()
        .find(|line| {
            FATAL_CALICO_LOG_MARKERS
                .iter()
                .any(|marker| line.contains(marker))
        })
        .map(|l| l.trim().to_string())
}

/// What the diagnosis can use; each piece is optional because collection may fail.
#[derive(Debug, Clone)]
pub struct Findings {
    pub node: String,
    /// How to reach the node, for the remediation commands.
    pub shell: NodeShell,
    pub calico_pod: Option<String>,
    pub calico_namespace: String,
    pub fatal_log_line: Option<String>,
    pub run_dir: Option<RunDirStat>,
    pub run_dir_missing: bool,
    /// Some(None): the file does not exist.
    pub tmpfiles_content: Option<Option<String>>,
}

impl Findings {
    /// Nothing collected yet about `node`.
    pub fn new(node: &str, shell: NodeShell, calico_namespace: &str) -> Self {
        Findings {
            node: node.into(),
            shell,
            calico_pod: None,
            calico_namespace: calico_namespace.into(),
            fatal_log_line: None,
            run_dir: None,
            run_dir_missing: false,
            tmpfiles_content: None,
        }
    }
}

/// The tmpfiles.d verdict the findings carry, and the file a fix writes: the declared
/// file, or the one the node's own entry came from.
fn tmpfiles_state(findings: &Findings, expected: &CalicoExpectations) -> (bool, String) {
    use crate::checks::{effective_tmpfiles_entry, judge_node_tmpfiles, judge_tmpfiles, Verdict};
    match (&findings.tmpfiles_content, &expected.tmpfiles) {
        (Some(Some(content)), Some(declared)) => (
            judge_tmpfiles(Some(content), declared, &expected.run_dir).0 != Verdict::Passed,
            declared.file.clone(),
        ),
        (Some(None), Some(declared)) => (true, declared.file.clone()),
        (Some(Some(merged)), None) => {
            let source = effective_tmpfiles_entry(merged, &expected.run_dir).and_then(|e| e.source);
            (
                matches!(judge_node_tmpfiles(merged, expected).0, Verdict::Failed(_)),
                expected.tmpfiles_file(source.as_deref()),
            )
        }
        _ => (false, expected.tmpfiles_file(None)),
    }
}

pub fn diagnose(findings: &Findings, expected: &CalicoExpectations) -> Option<Diagnosis> {
    let run_dir_wrong = findings.run_dir_missing
        || findings
            .run_dir
            .as_ref()
            .is_some_and(|s| expected.judge_access(s).is_err());
    let permission_denied = findings
        .fatal_log_line
        .as_ref()
        .is_some_and(|l| l.contains("permission denied"));
    let (tmpfiles_clobbered, file) = tmpfiles_state(findings, expected);
    let node = &findings.node;
    let shell = &findings.shell;
    let delete_pod = match &findings.calico_pod {
        Some(pod) => format!("kubectl -n {} delete pod {pod}", findings.calico_namespace),
        None => format!(
            "kubectl -n {} delete pod -l {} --field-selector spec.nodeName={node}",
            findings.calico_namespace, expected.selector
        ),
    };
    let observed = findings
        .run_dir
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "missing".into());
    if (permission_denied || run_dir_wrong) && tmpfiles_clobbered {
        return Some(Diagnosis {
            root_cause: format!(
                "the tmpfiles.d entry for Calico was replaced (package update?): {file} no longer has `{}`, so at boot systemd-tmpfiles made {} as {observed} and calico-node ({}) cannot use it",
                expected.tmpfiles_line(), expected.run_dir, expected.user()
            ),
            remediation: [
                shell.restore_tmpfiles(expected, &file).to_vec(),
                vec![delete_pod],
            ]
            .concat(),
            prevention: Some(format!(
                "put {file} into node provisioning (configuration management owns it, the OS package does not), and run `postflight drift` before every rolling update: every node updated with the same package carries the same fault until its next reboot"
            )),
        });
    }
    if permission_denied || run_dir_wrong {
        let want = expected.wanted_stat();
        return Some(Diagnosis {
            root_cause: format!(
                "{} is {observed} (expected {}) although its tmpfiles.d entry is right: something changed it after boot",
                expected.run_dir,
                expected.wanted()
            ),
            remediation: vec![
                shell.run(&format!(
                    "{{sudo}}install -d -m 0{} -o {} -g {} {}",
                    want.mode, want.uid, want.gid, expected.run_dir
                )),
                delete_pod,
            ],
            prevention: Some("find what changes the directory's mode or owner after boot (a hardening script, a security agent)".into()),
        });
    }
    None
}

/// The incident's time bomb on a node that has not rebooted yet: its tmpfiles.d entry
/// is wrong, so the next boot makes the run directory unusable for calico-node.
pub fn diagnose_drift(findings: &Findings, expected: &CalicoExpectations) -> Option<Diagnosis> {
    findings.tmpfiles_content.as_ref()?;
    let node = &findings.node;
    let (_, file) = tmpfiles_state(findings, expected);
    Some(Diagnosis {
        root_cause: format!(
            "{file} on {node} will not recreate {} as calico-node needs it (package update?): the node works now and breaks at its next reboot",
            expected.run_dir
        ),
        remediation: findings.shell.restore_tmpfiles(expected, &file).to_vec(),
        prevention: Some(format!(
            "put {file} into node provisioning, so that an OS package cannot replace it unnoticed, and keep `postflight drift` in the rolling update before each reboot"
        )),
    })
}

/// A BGP peer of the node under test: who it is and how an engineer reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpPeer {
    pub node: String,
    pub address: std::net::IpAddr,
    pub shell: NodeShell,
}

/// The peer address in the name Calico gives a BIRD session: `Mesh_10_20_0_12` for the
/// node-to-node mesh, `Node_…` and `Global_…` for explicit peers.
pub fn session_peer_address(session: &str) -> Option<std::net::IpAddr> {
    let rest = ["Mesh_", "Node_", "Global_"]
        .iter()
        .find_map(|prefix| session.strip_prefix(prefix))?;
    rest.replace('_', ".").parse().ok()
}

/// BGP sessions that are not Established: pod routes are not exchanged, so cross-node pod
/// traffic fails while same-node traffic works. When every session of the node is down,
/// the fault is the node's own; when only some are, it is on the far side of those —
/// typically a peer whose firewall drops TCP 179 — and the fix goes to that peer.
pub fn diagnose_bgp(
    node: &str,
    shell: &NodeShell,
    show_protocols: &str,
    peers: &[BgpPeer],
    expected: &CalicoExpectations,
) -> Option<Diagnosis> {
    let sessions = crate::checks::parse_bgp_sessions(show_protocols);
    let down: Vec<&crate::checks::BgpSession> =
        sessions.iter().filter(|s| !s.established()).collect();
    if down.is_empty() {
        return None;
    }
    let described: Vec<String> = down
        .iter()
        .map(|s| format!("{} ({})", s.name, format!("{} {}", s.state, s.info).trim()))
        .collect();
    let socket = format!("{}/bird.ctl", expected.run_dir.trim_end_matches('/'));
    let firewall = "'{sudo}iptables -S; {sudo}nft list ruleset' | grep -w 179   # a firewall dropping BGP (TCP 179)?";
    let logs = |on: &str| {
        format!(
            "kubectl -n {} logs -l {} --field-selector spec.nodeName={on} --tail 50",
            expected.namespace, expected.selector
        )
    };
    let culprits: Vec<&BgpPeer> = down
        .iter()
        .filter_map(|s| session_peer_address(&s.name))
        .filter_map(|address| peers.iter().find(|p| p.address == address))
        .collect();
    let some_established = down.len() < sessions.len();
    if some_established && !culprits.is_empty() {
        let names: Vec<&str> = culprits.iter().map(|p| p.node.as_str()).collect();
        let mut remediation = Vec::new();
        for peer in &culprits {
            remediation.push(peer.shell.run(firewall));
            remediation.push(peer.shell.run(&format!(
                "{{sudo}}birdcl -s {socket} show protocols   # does {} see its session to {node} down too?",
                peer.node
            )));
            remediation.push(logs(&peer.node));
        }
        return Some(Diagnosis {
            root_cause: format!(
                "BGP between {node} and {} is down ({}) while {node}'s other {} sessions are Established: the fault is on {}'s side, not {node}'s, so pod routes to and from it are not exchanged",
                names.join(", "),
                described.join(", "),
                sessions.len() - down.len(),
                names.join(", ")
            ),
            remediation,
            prevention: Some(
                "allow TCP 179 between all nodes in the host firewall baseline, and alert on calico-node's BGP peer state".into(),
            ),
        });
    }
    Some(Diagnosis {
        root_cause: format!(
            "BGP is not established on {node}: {} of {} sessions are down ({}), so its pod routes are not exchanged with its peers",
            down.len(),
            sessions.len(),
            described.join(", ")
        ),
        remediation: vec![
            shell.run(&format!("{{sudo}}birdcl -s {socket} show protocols all   # why each session is down")),
            shell.run(firewall),
            logs(node),
        ],
        prevention: Some(
            "allow TCP 179 between all nodes in the host firewall baseline, and alert on calico-node's BGP peer state".into(),
        ),
    })
}

/// Probe pods that never started: the network was not tested at all, and the cause is
/// usually the probe image (not mirrored into an air-gapped registry) or scheduling.
pub fn diagnose_probes(
    node: &str,
    namespace: &str,
    image: &str,
    why: &[String],
) -> Option<Diagnosis> {
    if why.is_empty() {
        return None;
    }
    let image_trouble = why
        .iter()
        .any(|w| w.contains("ErrImagePull") || w.contains("ImagePullBackOff"));
    let root_cause = if image_trouble {
        format!("postflight's probe pods could not pull {image}: the pod network of {node} was not tested ({})", why.join("; "))
    } else {
        format!(
            "postflight's probe pods did not start: the pod network of {node} was not tested ({})",
            why.join("; ")
        )
    };
    Some(Diagnosis {
        root_cause,
        remediation: vec![
            format!("kubectl -n {namespace} get events --sort-by=.lastTimestamp | tail -20"),
            format!("kubectl -n {namespace} describe pods"),
            format!("if the cluster cannot reach registry.k8s.io, mirror {image} and set probe.image in the inventory"),
        ],
        prevention: Some("keep the probe image in the cluster's own registry, next to the images the nodes run".into()),
    })
}

/// A node the pod mesh blames while calico-node on it is Ready and its BGP sessions are
/// Established: Calico's control plane is fine, so what drops the pods' packets is on
/// the node's datapath — a host firewall's forwarding rules most often (Docker's FORWARD
/// policy of DROP is the classic), matching the pods' `cali*` interfaces.
pub fn diagnose_datapath(
    node: &str,
    shell: &NodeShell,
    implicated: &crate::checks::Implicated,
) -> Diagnosis {
    Diagnosis {
        root_cause: format!(
            "calico-node on {node} is Ready and its BGP sessions are Established, yet {}: the fault is in {node}'s datapath (a host firewall or filter rule dropping forwarded pod traffic on its cali* interfaces), not in Calico's control plane",
            implicated.describe()
        ),
        remediation: vec![
            shell.run("'{sudo}nft list ruleset; {sudo}iptables -S FORWARD' | grep -nE 'cali|policy|drop|DROP'   # the rule or policy dropping forwarded pod traffic"),
            shell.run("{sudo}ip -4 route   # each local pod has a /32 route on its cali* interface"),
        ],
        prevention: Some(
            "keep the host firewall baseline from filtering forwarded traffic on cali* interfaces (or set the FORWARD policy to ACCEPT where Docker sets DROP), and run `postflight mesh` nightly".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::JumpHost;

    fn shell(user: &str, port: u16) -> NodeShell {
        NodeShell::of(&SshTarget {
            node: "k8s-worker-03".into(),
            host: "10.20.0.13".into(),
            port,
            user: user.into(),
            identity_file: None,
            known_hosts: "known_hosts".into(),
            become_method: None,
            jump: None,
        })
    }

    #[test]
    fn a_node_without_ssh_is_fixed_through_kubectl_debug() {
        let shell =
            NodeShell::kubectl_debug("k8s-worker-03", "busybox:1.37.0", "postflight-node-shell");
        let prefix = "kubectl -n postflight-node-shell debug node/k8s-worker-03 -i --quiet --profile=sysadmin --image=busybox:1.37.0 -- chroot /host";
        assert_eq!(
            shell.run("{sudo}systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf"),
            format!("{prefix} systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf")
        );
        // A quoted line is a shell's, and chroot runs programs: it gets one.
        assert_eq!(
            shell.run("\"echo 'd /run/calico' | {sudo}tee /etc/tmpfiles.d/calico.conf\""),
            format!("{prefix} sh -c \"echo 'd /run/calico' | tee /etc/tmpfiles.d/calico.conf\"")
        );
    }

    #[test]
    fn the_incident_is_named_with_its_fix_and_prevention() {
        let findings = Findings {
            calico_pod: Some("calico-node-x1".into()),
            fatal_log_line: fatal_calico_log_line("start\n[FATAL] Failed to initialize BIRD: could not load existing routes — permission denied on /var/run/calico\n"),
            run_dir: RunDirStat::parse("700 0 0"),
            tmpfiles_content: Some(Some("d /run/calico 0700 root root -\n".into())),
            ..Findings::new("k8s-worker-03", shell("ops", 22), "kube-system")
        };
        let diagnosis = diagnose(&findings, &CalicoExpectations::default()).expect("a diagnosis");
        assert!(
            diagnosis
                .root_cause
                .contains("tmpfiles.d entry for Calico was replaced"),
            "{}",
            diagnosis.root_cause
        );
        assert_eq!(
            diagnosis.remediation,
            [
                "ssh ops@10.20.0.13 \"echo 'd /run/calico 0755 999 999 -' | sudo tee /etc/tmpfiles.d/calico.conf\"",
                "ssh ops@10.20.0.13 sudo systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf",
                "kubectl -n kube-system delete pod calico-node-x1",
            ]
        );
        assert!(diagnosis.prevention.unwrap().contains("provisioning"));
    }

    #[test]
    fn remediation_reaches_the_node_as_the_inventory_does() {
        assert_eq!(
            shell("root", 2222).recreate_run_dir("/etc/tmpfiles.d/calico.conf"),
            "ssh -p 2222 root@10.20.0.13 systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf",
            "root needs no sudo; a port other than 22 is named"
        );
    }

    fn shell_through(jump: JumpHost, port: u16) -> NodeShell {
        NodeShell::of(&SshTarget {
            node: "k8s-worker-03".into(),
            host: "10.20.0.13".into(),
            port,
            user: "ops".into(),
            identity_file: None,
            known_hosts: "known_hosts".into(),
            become_method: None,
            jump: Some(jump),
        })
    }

    #[test]
    fn remediation_goes_through_the_bastion_the_inventory_names() {
        let bastion = JumpHost {
            user: "jump".into(),
            host: "bastion.example.com".into(),
            port: 22,
        };
        assert_eq!(
            shell_through(bastion, 2222).recreate_run_dir("/etc/tmpfiles.d/calico.conf"),
            "ssh -J jump@bastion.example.com:22 -p 2222 ops@10.20.0.13 sudo systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf"
        );
        let ipv6 = JumpHost {
            user: "jump".into(),
            host: "fd00::1".into(),
            port: 2200,
        };
        let line = shell_through(ipv6, 22).recreate_run_dir("/etc/tmpfiles.d/calico.conf");
        assert!(
            line.starts_with("ssh -J 'jump@[fd00::1]:2200' ops@10.20.0.13 "),
            "brackets are quoted for the shell: {line}"
        );
    }

    #[test]
    fn a_pasted_jump_command_reaches_ssh_as_these_words() {
        let bastion = JumpHost {
            user: "jump".into(),
            host: "fd00::1".into(),
            port: 2200,
        };
        let line = shell_through(bastion, 22).run("true");
        let words = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s\\n' {}",
                line.trim_start_matches("ssh ")
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(words.stdout).unwrap(),
            "-J\njump@[fd00::1]:2200\nops@10.20.0.13\ntrue\n"
        );
    }

    const SHOW_PROTOCOLS: &str = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
        device1    Device     ---        up     17:43:07.686\n\
        Mesh_10_20_0_11 BGP   ---        up     17:43:08.495  Established\n\
        Mesh_10_20_0_12 BGP   ---        start  17:43:08.604  Active        Socket: Connection timed out\n\
        Mesh_10_20_0_14 BGP   ---        up     17:43:08.495  Established\n";

    fn peers() -> Vec<BgpPeer> {
        [
            ("k8s-worker-01", "10.20.0.11"),
            ("k8s-worker-02", "10.20.0.12"),
            ("k8s-worker-04", "10.20.0.14"),
        ]
        .into_iter()
        .map(|(node, address)| BgpPeer {
            node: node.into(),
            address: address.parse().unwrap(),
            shell: NodeShell::of(&SshTarget {
                node: node.into(),
                host: address.into(),
                port: 22,
                user: "ops".into(),
                identity_file: None,
                known_hosts: "known_hosts".into(),
                become_method: None,
                jump: None,
            }),
        })
        .collect()
    }

    /// The BGP diagnosis of k8s-worker-03, reached as ops@10.20.0.13, with its peers.
    fn bgp_diagnosis(show_protocols: &str) -> Diagnosis {
        diagnose_bgp(
            "k8s-worker-03",
            &shell("ops", 22),
            show_protocols,
            &peers(),
            &CalicoExpectations::default(),
        )
        .expect("a diagnosis")
    }

    #[test]
    fn a_peer_that_drops_bgp_is_named_and_its_firewall_fixed_not_ours() {
        let diagnosis = bgp_diagnosis(SHOW_PROTOCOLS);
        assert!(
            diagnosis
                .root_cause
                .contains("BGP between k8s-worker-03 and k8s-worker-02 is down")
                && diagnosis.root_cause.contains("on k8s-worker-02's side"),
            "{}",
            diagnosis.root_cause
        );
        assert!(
            diagnosis.remediation[0].starts_with("ssh ops@10.20.0.12 "),
            "{:?}",
            diagnosis.remediation
        );
        assert!(
            diagnosis
                .remediation
                .iter()
                .all(|c| !c.contains("10.20.0.13")),
            "nothing points at the node under test: {:?}",
            diagnosis.remediation
        );
    }

    #[test]
    fn a_node_with_every_session_down_is_its_own_culprit() {
        let all_down = SHOW_PROTOCOLS.replace(
            "up     17:43:08.495  Established",
            "start  17:43:08.604  Active",
        );
        let diagnosis = bgp_diagnosis(&all_down);
        assert!(
            diagnosis
                .root_cause
                .contains("BGP is not established on k8s-worker-03: 3 of 3"),
            "{}",
            diagnosis.root_cause
        );
        assert!(diagnosis.remediation[0].starts_with("ssh ops@10.20.0.13 "));
    }

    #[test]
    fn calico_session_names_carry_the_peer_address() {
        assert_eq!(
            session_peer_address("Mesh_10_20_0_12"),
            Some("10.20.0.12".parse().unwrap())
        );
        assert_eq!(
            session_peer_address("Node_192_168_1_1"),
            Some("192.168.1.1".parse().unwrap())
        );
        assert_eq!(session_peer_address("device1"), None);
    }

    #[test]
    fn a_healthy_node_has_no_diagnosis() {
        let findings = Findings {
            run_dir: RunDirStat::parse("755 999 999"),
            tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -".into())),
            ..Findings::new("n", shell("ops", 22), "kube-system")
        };
        assert_eq!(diagnose(&findings, &CalicoExpectations::default()), None);
    }
}
