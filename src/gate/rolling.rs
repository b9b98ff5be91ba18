//! `rolling`: the rolling update's gate for a whole cluster — one node at a time, each
//! through `verify --reboot` (lock, preflight, optional drain, reboot, checks), stopping
//! at the first node that does not pass so that a second node never breaks the same way.

use super::*;
use crate::report::RollingSummary;

#[derive(Debug, Clone, Default)]
pub struct RollingRequest {
    /// The nodes, in order; None: every node of the inventory that is not protected.
    pub nodes: Option<Vec<String>>,
    pub drain: bool,
    pub force: bool,
    pub allow_protected: bool,
    /// How long to wait after a node passes before the next one is rebooted, so that
    /// what it runs settles and a slow failure shows before a second node goes down.
    pub soak: Duration,
}

/// The order a rolling update will take.
///
/// # Errors
/// A named node is not in the inventory, or is protected and `--allow-protected` was
/// not given: nothing is rebooted then.
pub fn plan(inventory: &Inventory, request: &RollingRequest) -> Result<Vec<String>, GateError> {
    let Some(named) = &request.nodes else {
        return Ok(inventory
            .nodes
            .iter()
            .filter(|n| !n.protected)
            .map(|n| n.name.value.clone())
            .collect());
    };
    for (index, node) in named.iter().enumerate() {
        if named[..index].contains(node) {
            return Err(GateError::DuplicateNode { node: node.clone() });
        }
        let Some(entry) = inventory.node(node) else {
            return Err(GateError::UnknownNode {
                node: node.clone(),
                inventory: inventory.file.clone(),
                known: inventory.node_names().join(", "),
            });
        };
        if entry.protected && !request.allow_protected {
            return Err(GateError::Protected {
                node: node.clone(),
                inventory: inventory.file.clone(),
            });
        }
    }
    Ok(named.clone())
}

/// Reboots and verifies the planned nodes one at a time, stopping at the first that does
/// not pass every check (or whose run is interrupted).
///
/// # Errors
/// As `plan`: before anything is rebooted.
pub async fn rolling(
    inventory: &Inventory,
    request: &RollingRequest,
    progress: &dyn Progress,
    cancel: &CancellationToken,
    after_each_node: &(dyn Fn(&[NodeReport], &RollingSummary) + Sync),
) -> Result<(Vec<NodeReport>, RollingSummary), GateError> {
    let order = plan(inventory, request)?;
    // One set of probe pods for the whole update: the first gate makes it, each later
    // gate finds its pods already Ready, and it is deleted once, below.
    let shared = SharedProbes {
        run_id: new_run_id(),
        paired_nodes: order.clone(),
    };
    // One hold on the reboot lock for the whole update: the first node's run takes it,
    // and it is kept through every soak, so that no other pipeline reboots a node while
    // this one's last node settles.
    let lock_slot = lock::LockSlot::default();
    let mut reports: Vec<NodeReport> = Vec::new();
    let mut stopped_at = None;
    let mut interrupted_between_nodes = false;
    for (position, node) in order.iter().enumerate() {
        if position > 0 && !request.soak.is_zero() {
            let previous = order[position - 1].as_str();
            match soak(&lock_slot, request.soak, previous, progress, cancel).await {
                Soak::Done => {}
                Soak::Interrupted => {
                    interrupted_between_nodes = true;
                    break;
                }
                Soak::LockLost(how) => {
                    if let Some(last) = reports.last_mut() {
                        last.notes.push(format!(
                            "the reboot lock was lost during the soak after {previous} ({how}): the update stopped there, rebooting nothing more"
                        ));
                    }
                    stopped_at = Some(previous.to_string());
                    break;
                }
            }
        }
        let verify_request = VerifyRequest {
            node: node.clone(),
            reboot: true,
            force: request.force,
            allow_protected: request.allow_protected,
            drain: request.drain,
        };
        let verified = verify::verify_with_probes(
            inventory,
            &verify_request,
            Some(&shared),
            Some(&lock_slot),
            progress,
            cancel,
        )
        .await;
        let report = match verified {
            Ok(report) => report,
            Err(error) => {
                release_lock(&lock_slot, &mut reports).await;
                return Err(error);
            }
        };
        let clean = report.results.iter().all(|r| r.passed()) && !report.interrupted;
        reports.push(report);
        if !clean {
            stopped_at = Some(node.clone());
        }
        // The reports so far, for a pipeline to keep even if the rollout is killed later.
        after_each_node(
            &reports,
            &RollingSummary {
                order: order.clone(),
                stopped_at: stopped_at.clone(),
                not_started: order.iter().skip(reports.len()).cloned().collect(),
                interrupted_between_nodes: false,
            },
        );
        if !clean {
            break;
        }
    }
    if let Some(last) = reports.last_mut() {
        if let Err(why) = delete_shared_probes(inventory, &shared).await {
            last.notes.push(format!(
                "the update's probe pods were not deleted ({why}): `kubectl -n {} delete pod -l {}={}`",
                inventory.probe.namespace,
                cluster::probes::RUN_LABEL,
                shared.run_id
            ));
        }
    }
    // The lock last, as a single run gives it back last.
    release_lock(&lock_slot, &mut reports).await;
    let not_started = order.iter().skip(reports.len()).cloned().collect();
    Ok((
        reports,
        RollingSummary {
            order,
            stopped_at,
            not_started,
            interrupted_between_nodes,
        },
    ))
}

/// How a soak between two nodes ended.
#[derive(Debug, PartialEq, Eq)]
enum Soak {
    Done,
    Interrupted,
    /// The lock's hold lapsed: how.
    LockLost(String),
}

/// Waits out a soak after `previous` passed, keeping the update's lock renewed through
/// it, as a step the console's heartbeat names so a CI log is not silent.
async fn soak(
    lock_slot: &lock::LockSlot,
    soak: Duration,
    previous: &str,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Soak {
    // The soak and the next run's first steps: the next run then renews it for its own
    // work.
    let lost = lock_slot
        .hold_for(soak + CLEANUP_TIMEOUT)
        .map(|(signal, _)| signal)
        .unwrap_or_default();
    let step = format!(
        "soak for {} before the next node, holding the reboot lock",
        humantime::format_duration(soak)
    );
    progress.step_started(previous, &step);
    let started = Instant::now();
    let ended = tokio::select! {
        () = tokio::time::sleep(soak) => Soak::Done,
        () = cancel.cancelled() => Soak::Interrupted,
        () = lost.cancelled() => Soak::LockLost(lock_slot.lost().unwrap_or_default()),
    };
    progress.step_finished(previous, &step, started.elapsed());
    ended
}

/// Gives the update's lock back, saying in the last report if it could not be.
async fn release_lock(lock_slot: &lock::LockSlot, reports: &mut [NodeReport]) {
    let released = tokio::time::timeout(CLEANUP_TIMEOUT, lock_slot.release()).await;
    let why = match released {
        Ok(Ok(())) => return,
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {CLEANUP_TIMEOUT:?}"),
    };
    if let Some(last) = reports.last_mut() {
        last.notes.push(format!(
            "the reboot lock was not released ({why}): it expires by itself"
        ));
    }
}

/// Deletes the update's probe pods, riding out a short API outage as a gate's own
/// cleanup does. Runs after every gate, interrupted ones included: nothing of the update
/// is left behind on any exit that returns.
async fn delete_shared_probes(inventory: &Inventory, shared: &SharedProbes) -> Result<(), String> {
    let runs = [shared.run_id.as_str()];
    let delete = async {
        let cluster = connect(inventory).await.map_err(|e| e.to_string())?;
        verify::while_unreachable(&cluster, || {
            cluster.delete_probes(
                &inventory.probe.namespace,
                &runs,
                inventory.nodes.len() + shared.paired_nodes.len(),
            )
        })
        .await
        .map_err(|e| e.to_string())
    };
    tokio::time::timeout(CLEANUP_TIMEOUT, delete)
        .await
        .map_err(|_| format!("no answer within {CLEANUP_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        Inventory::parse(
            "ssh:\n  known_hosts: known_hosts\nnodes:\n  - name: a\n    host: 198.18.0.10\n    protected: true\n  - name: b\n    host: 198.18.0.11\n  - name: c\n    host: 198.18.0.12\n",
            std::path::Path::new("inv.yaml"),
        )
        .unwrap()
    }

    fn named(nodes: &[&str]) -> RollingRequest {
        RollingRequest {
            nodes: Some(nodes.iter().map(|n| n.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn every_unprotected_node_in_inventory_order_by_default() {
        assert_eq!(
            plan(&inventory(), &RollingRequest::default()).unwrap(),
            ["b", "c"]
        );
    }

    #[test]
    fn a_node_named_twice_is_refused_before_anything_reboots() {
        let error = plan(&inventory(), &named(&["b", "c", "b"])).unwrap_err();
        assert!(
            matches!(error, GateError::DuplicateNode { ref node } if node == "b"),
            "{error}"
        );
    }

    #[test]
    fn unknown_and_protected_nodes_are_refused() {
        assert!(matches!(
            plan(&inventory(), &named(&["b", "x"])),
            Err(GateError::UnknownNode { .. })
        ));
        assert!(matches!(
            plan(&inventory(), &named(&["a"])),
            Err(GateError::Protected { .. })
        ));
    }
}
