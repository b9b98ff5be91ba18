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
    for node in named {
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
) -> Result<(Vec<NodeReport>, RollingSummary), GateError> {
    let order = plan(inventory, request)?;
    let mut reports: Vec<NodeReport> = Vec::new();
    let mut stopped_at = None;
    for node in &order {
        let verify_request = VerifyRequest {
            node: node.clone(),
            reboot: true,
            force: request.force,
            allow_protected: request.allow_protected,
            drain: request.drain,
        };
        let report = verify(inventory, &verify_request, progress, cancel).await?;
        let clean = report.results.iter().all(|r| r.passed()) && !report.interrupted;
        reports.push(report);
        if !clean {
            stopped_at = Some(node.clone());
            break;
        }
    }
    let not_started = order.iter().skip(reports.len()).cloned().collect();
    Ok((
        reports,
        RollingSummary {
            order,
            stopped_at,
            not_started,
        },
    ))
}
