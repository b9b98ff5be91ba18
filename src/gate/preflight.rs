//! Preflight: never reboot a node into a cluster that is already degraded. Before the
//! reboot the API must answer, every other node must be Ready, calico-node must be Ready
//! on every node, and every node's pods must reach every other node's (every pair in a
//! small cluster; a linear set in a large one, see `connectivity::preflight_pairs`). A reboot on top of
//! an existing fault turns one broken node into two, and hides which one broke first.

use super::connectivity::mesh_problems;
use super::*;

/// The probe pods a gate uses: its own run's, or a set its caller keeps across gates.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProbeScope<'a> {
    pub run_id: &'a str,
    /// Nodes other than this one that also get two pods (see `ProbePlan::with_pairs`).
    pub paired_nodes: &'a [String],
    /// No pod of this set can exist yet.
    pub new_run: bool,
    /// A later gate of a rolling update: the node before it has just rebooted.
    pub rolling: bool,
}

/// What the preflight found.
pub(super) struct Preflight {
    /// What is wrong; empty when the cluster is whole.
    pub problems: Vec<String>,
    /// The containers the node's own probe pods ran before the reboot.
    pub stale: Vec<String>,
}

/// Every node of the inventory whose calico-node is missing or not Ready, in words.
async fn calico_not_ready(
    cluster: &Cluster,
    inventory: &Inventory,
    calico: &CalicoExpectations,
) -> Vec<String> {
    let mut problems = Vec::new();
    let params = kube::api::ListParams::default().labels(&calico.selector);
    match cluster.pods(&calico.namespace).list(&params).await {
        Ok(pods) => {
            for name in inventory.node_names() {
                let on_node = pods
                    .items
                    .iter()
                    .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name));
                match on_node {
                    None => problems.push(format!("no calico-node pod on {name}")),
                    Some(pod) if !cluster::pod_ready(pod) => problems.push(format!(
                        "calico-node {} on {name} is not Ready",
                        pod.metadata.name.clone().unwrap_or_default()
                    )),
                    Some(_) => {}
                }
            }
        }
        Err(error) => problems.push(format!("listing calico-node pods: {error}")),
    }
    problems
}

/// Checks the cluster is whole before `node` is rebooted, and starts the run's probe
/// pods on the way.
pub(super) async fn cluster_problems(
    cluster: &Cluster,
    inventory: &Inventory,
    calico: &CalicoExpectations,
    node: &str,
    probes: ProbeScope<'_>,
) -> Preflight {
    let mut problems = Vec::new();
    // Listing the nodes is also the proof that the API answers: the run pinged it a
    // moment ago, and one unanswered request says it as well as another.
    match cluster.nodes().await {
        Err(error) if error.kind() == ErrorKind::Unreachable => {
            return Preflight {
                problems: vec![format!("the API server does not answer: {error}")],
                stale: Vec::new(),
            };
        }
        Ok(nodes) => {
            for name in inventory.node_names().iter().filter(|n| *n != node) {
                match nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(name))
                {
                    None => problems.push(format!("node {name} is not in the cluster")),
                    Some(other) if !cluster::node_ready(other) => problems.push(format!(
                        "node {name} is not Ready: {}",
                        cluster::describe_ready_condition(other)
                    )),
                    Some(_) => {}
                }
            }
        }
        Err(error) => problems.push(error.to_string()),
    }
    // Within a rolling update, the node before this one has just rebooted: its BGP peers'
    // calico-node is not Ready until their sessions with it are Established again and
    // their next readiness probe has said so (Calico's readiness wants every peer). With
    // every node Ready, the update waits for that, up to calico-node's own deadline,
    // before it calls the cluster degraded.
    let settle_until = (probes.rolling && problems.is_empty())
        .then(|| Instant::now() + inventory.timeouts.calico_ready);
    loop {
        let calico_problems = calico_not_ready(cluster, inventory, calico).await;
        let settled =
            calico_problems.is_empty() || settle_until.is_none_or(|until| Instant::now() >= until);
        if settled {
            problems.extend(calico_problems);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !problems.is_empty() {
        // The network cannot be whole with a node or calico-node down; probing would
        // only add noise to the refusal.
        return Preflight {
            problems,
            stale: Vec::new(),
        };
    }
    // The run's probe pods are made here, once: the other nodes' are the far ends of the
    // node's probes after the reboot, and the node's own two ride the reboot out, as any
    // pod bound to a node does, to be seen back in new containers.
    let others: Vec<String> = inventory
        .node_names()
        .into_iter()
        .filter(|name| name != node)
        .collect();
    let mut plan = ProbePlan::with_pairs(probes.run_id, node, &others, probes.paired_nodes);
    plan.new_run = probes.new_run;
    match start_probes(cluster, inventory, &plan).await {
        Ok(mut fleet) => {
            let stale = fleet
                .on_node(node)
                .iter()
                .filter_map(|probe| probe.container.clone())
                .collect();
            // One pod a node for the mesh, in inventory order, so the preflight's pairs
            // are the same from run to run.
            let order = inventory.node_names();
            fleet.ready.sort_by_key(|probe| {
                (
                    order.iter().position(|n| *n == probe.node),
                    probe.name.clone(),
                )
            });
            fleet
                .ready
                .dedup_by(|later, first| later.node == first.node);
            problems.extend(mesh_problems(cluster, inventory, node, fleet).await);
            Preflight { problems, stale }
        }
        Err(error) => {
            problems.push(format!("probe pods could not be created: {error}"));
            Preflight {
                problems,
                stale: Vec::new(),
            }
        }
    }
}
