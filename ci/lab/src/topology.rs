//! The lab's naming and addressing plan: which names, namespaces and addresses a lab of a
//! given name and size owns.
//!
//! Every address lies in 198.18.0.0/15 (RFC 2544, reserved for network testing). Each lab
//! claims one *block* number so that several labs can run at once without sharing an
//! address, a namespace or an interface name: nodes live in `198.18.<block>.0/24` and pod
//! address blocks are `/27`s carved out of `198.19.<8*block>.0/21`, as Calico carves
//! IPAM blocks out of its pool (Calico's default block is a /26; a /27 holds the 30 pods
//! a lab node ever runs and lets one lab have 64 nodes).

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// A /21 per lab holds 64 /27 blocks, so a lab has at most this many nodes.
pub const MAX_NODES: usize = 64;
/// The size of a node's pod block: a /27.
pub const POD_BLOCK_SIZE: u32 = 32;
/// 198.19.0.0/16 split into /21s gives 32 labs.
pub const MAX_LABS: u8 = 32;
/// The BGP autonomous system of every node, Calico's default.
pub const CALICO_AS: u32 = 64512;
/// UID and GID calico-node runs as in the incident's cluster.
pub const CALICO_UID: u32 = 999;

/// What the lab's nodes are, as far as a reboot shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A machine: a reboot gives it a new boot ID.
    #[default]
    Machine,
    /// A container on this machine's kernel, as kind's nodes are: a restart keeps the
    /// host's boot ID, restarts every process (a new PID 1) and rebuilds /run, and the
    /// kubelet reports no shutdown (kind configures no graceful node shutdown).
    Container,
}

/// Whose kubelet runs on the lab's nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KubeletKind {
    /// Real nodes: Kubernetes' own kubelet, containerd, runc, CNI and BIRD 1.6.
    #[default]
    Real,
    /// The lab's simulated kubelet, a real API client that runs its containers as
    /// processes: only the scale profile (labs a 2-core machine cannot carry as real
    /// nodes), as kwok's kubelets are for Kubernetes' scale tests.
    Simulated,
}

/// How Calico is installed on the lab, as sites install it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CalicoProfile {
    /// Calico's manifest: calico-node as root in kube-system, no tmpfiles.d entry (its
    /// hostPath volume creates /var/run/calico).
    Stock,
    /// The tigera operator's install: calico-node as root in calico-system.
    Operator,
    /// The incident's site: calico-node as uid/gid 999 in kube-system, with the
    /// capabilities BIRD needs, and the site's own /etc/tmpfiles.d/calico.conf.
    #[default]
    Hardened,
}

impl CalicoProfile {
    pub fn namespace(self) -> &'static str {
        match self {
            CalicoProfile::Stock | CalicoProfile::Hardened => "kube-system",
            CalicoProfile::Operator => "calico-system",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub index: usize,
    pub ip: Ipv4Addr,
    /// First address of the node's /27 pod block.
    pub pod_block: Ipv4Addr,
    pub control_plane: bool,
}

impl NodeSpec {
    pub fn pod_cidr(&self) -> String {
        format!("{}/27", self.pod_block)
    }
}

/// Everything a lab's processes need to find each other; written to `topology.json` in
/// the state directory, so the per-pod stand-ins read the same plan as the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Topology {
    pub name: String,
    pub block: u8,
    pub state_dir: PathBuf,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub calico: CalicoProfile,
    #[serde(default)]
    pub node_kind: NodeKind,
    #[serde(default)]
    pub kubelet: KubeletKind,
}

impl Topology {
    pub fn new(name: &str, block: u8, state_dir: &Path, node_count: usize) -> Self {
        assert!(block < MAX_LABS, "block {block} is outside the lab range");
        assert!((1..=MAX_NODES).contains(&node_count));
        let nodes = (0..node_count)
            .map(|index| {
                let control_plane = index == 0;
                let name = if control_plane {
                    "k8s-control-01".to_string()
                } else {
                    format!("k8s-worker-{index:02}")
                };
                let pod_base =
                    u32::from(Ipv4Addr::new(198, 19, block * 8, 0)) + POD_BLOCK_SIZE * index as u32;
                NodeSpec {
                    name,
                    index,
                    ip: Ipv4Addr::new(198, 18, block, 10 + index as u8),
                    pod_block: Ipv4Addr::from(pod_base),
                    control_plane,
                }
            })
            .collect();
        Topology {
            name: name.into(),
            block,
            state_dir: state_dir.into(),
            nodes,
            calico: CalicoProfile::default(),
            node_kind: NodeKind::default(),
            kubelet: KubeletKind::default(),
        }
    }

    /// The lab's IP pool: every node's pod block lies in it.
    pub fn pod_pool(&self) -> String {
        format!("198.19.{}.0/21", self.block * 8)
    }
    /// The host's address on the lab bridge: the API server listens here for the nodes.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.block, 1)
    }
    /// The Services' virtual range (`--service-cluster-ip-range`): never on an interface
    /// and never routed, but inside the lab's addresses like everything else it names.
    pub fn service_range_base(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 128 + self.block, 0)
    }
    pub fn service_cidr(&self) -> String {
        format!("{}/24", self.service_range_base())
    }
    pub fn node_subnet(&self) -> String {
        format!("198.18.{}.0/24", self.block)
    }
    /// Prefix of every network namespace and host interface this lab makes.
    pub fn prefix(&self) -> String {
        format!("pf{}", self.block)
    }
    pub fn bridge_netns(&self) -> String {
        format!("{}-br", self.prefix())
    }
    /// The host end of the veth into the lab bridge (interface names are at most 15 bytes).
    pub fn host_veth(&self) -> String {
        format!("{}-host", self.prefix())
    }
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn node_netns(&self, node: &NodeSpec) -> String {
        format!("{}-n{}", self.prefix(), node.index)
    }
    pub fn pod_netns(&self, node: &NodeSpec, sandbox: u64) -> String {
        format!("{}-n{}-p{}", self.prefix(), node.index, sandbox)
    }
    pub fn node_dir(&self, node: &NodeSpec) -> PathBuf {
        self.state_dir.join("nodes").join(&node.name)
    }
    pub fn node_root(&self, node: &NodeSpec) -> PathBuf {
        self.node_dir(node).join("root")
    }
    pub fn topology_file(&self) -> PathBuf {
        self.state_dir.join("topology.json")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_inside_the_benchmark_range_and_do_not_overlap_between_labs() {
        let a = Topology::new("a", 0, Path::new("/x"), MAX_NODES);
        let b = Topology::new("b", MAX_LABS - 1, Path::new("/y"), MAX_NODES);
        for t in [&a, &b] {
            for n in &t.nodes {
                let ip = u32::from(n.ip);
                let pod = u32::from(n.pod_block);
                let range = u32::from(Ipv4Addr::new(198, 18, 0, 0))
                    ..=u32::from(Ipv4Addr::new(198, 19, 255, 255));
                assert!(range.contains(&ip) && range.contains(&(pod + POD_BLOCK_SIZE - 1)));
            }
        }
        let last_a = a.nodes.last().unwrap().pod_block;
        assert!(
            u32::from(last_a) + POD_BLOCK_SIZE - 1 < u32::from(b.nodes[0].pod_block)
                || b.block != a.block + 1
        );
        assert_eq!(a.nodes[3].name, "k8s-worker-03");
        assert_eq!(b.nodes[63].pod_block, Ipv4Addr::new(198, 19, 255, 224));
        assert_eq!(b.nodes[63].ip, Ipv4Addr::new(198, 18, MAX_LABS - 1, 73));
    }
}
