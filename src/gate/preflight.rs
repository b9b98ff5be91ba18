//! Preflight: never reboot a node into a cluster that is already degraded. Before the
//! reboot the API must answer, every other node must be Ready, calico-node must be Ready
//! on every node, and every node's pods must reach every other node's (every pair in a
//! small cluster; a linear set in a large one, see `connectivity::preflight_pairs`). A reboot on top of
//! an existing fault turns one broken node into two, and hides which one broke first.

use super::connectivity::mesh_problems;
use super::*;
use crate::cluster::probes::probe_pod_name;

/// What the preflight found wrong; empty when the cluster is whole.
pub(super) async fn cluster_problems(
    cluster: &Cluster,
    inventory: &Inventory,
    calico: &CalicoExpectations,
    node: &str,
    run_id: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    // Listing the nodes is also the proof that the API answers: the run pinged it a
    // moment ago, and one unanswered request says it as well as another.
    match cluster.nodes().await {
        Err(error) if error.kind() == ErrorKind::Unreachable => {
            return vec![format!("the API server does not answer: {error}")];
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
    if !problems.is_empty() {
        // The network cannot be whole with a node or calico-node down; probing would
        // only add noise to the refusal.
        return problems;
    }
    // The other nodes' probe pods carry the run's own id and stay: after the reboot they
    // are the far ends of the node's cross-node probes, already Ready. Only the node's
    // own pod is the preflight's, since the reboot takes it down anyway.
    let preflight_run = preflight_run_id(run_id);
    let others: Vec<ProbeRequest> = inventory
        .node_names()
        .iter()
        .filter(|name| *name != node)
        .map(|name| ProbeRequest {
            name: probe_pod_name(run_id, name, 0),
            node: name.clone(),
        })
        .collect();
    let kept = ProbePlan {
        run_id: run_id.into(),
        node: node.into(),
        requests: others,
        new_run: true,
    };
    let own = ProbePlan {
        run_id: preflight_run.clone(),
        node: node.into(),
        requests: vec![ProbeRequest {
            name: probe_pod_name(&preflight_run, node, 0),
            node: node.into(),
        }],
        new_run: true,
    };
    let (kept_fleet, own_fleet) = tokio::join!(
        start_probes(cluster, inventory, &kept),
        start_probes(cluster, inventory, &own)
    );
    match (kept_fleet, own_fleet) {
        (Ok(mut fleet), Ok(own)) => {
            fleet.ready.extend(own.ready);
            fleet.broken.extend(own.broken);
            // Inventory order, so the preflight's pairs are the same from run to run.
            let order = inventory.node_names();
            fleet
                .ready
                .sort_by_key(|probe| order.iter().position(|n| *n == probe.node));
            problems.extend(mesh_problems(cluster, inventory, node, fleet).await);
        }
        (Err(error), _) | (_, Err(error)) => {
            problems.push(format!("probe pods could not be created: {error}"))
        }
    }
    if let Err(error) = cluster
        .delete_probes(&inventory.probe.namespace, &[&preflight_run])
        .await
    {
        problems.push(format!(
            "the preflight's probe pod was not deleted: {error}"
        ));
    }
    problems
}

/// The run id the preflight's probe pods carry: the gate's own, marked, so that the
/// post-reboot probes never count a preflight pod still being deleted.
pub fn preflight_run_id(run_id: &str) -> String {
    format!("{run_id}p")
}
