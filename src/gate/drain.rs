//! Draining a node before its reboot: cordon, then evict every pod a drain moves through
//! the Eviction API, so that PodDisruptionBudgets are respected. Unlike the Bottlerocket
//! update operator's drain, a failed eviction is not logged and forgotten: a drain that
//! cannot finish by its deadline stops the run before the reboot, and the node is
//! uncordoned again, as it was.

use super::*;
use crate::cluster::drain::Eviction;
use std::collections::BTreeMap;

/// Evictions in flight at once. The Bottlerocket update operator uses 5: enough to drain
/// a node quickly without generating a burst of API requests.
const CONCURRENT_EVICTIONS: usize = 5;

/// Pause before asking again for a pod a disruption budget protects; `kubectl drain`
/// waits 5 s between attempts.
const EVICTION_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Cordons the node and evicts its pods, up to `deadline`. Returns how many pods were
/// evicted; on failure the node is uncordoned before returning when `uncordon_on_failure`
/// (the cordon is this run's own).
///
/// # Errors
/// A pod still could not be evicted at the deadline (the message names it and what the
/// API said, a disruption budget typically), or the API refused.
pub(super) async fn drain(
    cluster: &Cluster,
    node: &str,
    deadline: Duration,
    uncordon_on_failure: bool,
) -> Result<usize, String> {
    cluster
        .set_unschedulable(node, true)
        .await
        .map_err(|e| e.to_string())?;
    // The last refusal of each pod still blocked: what the failure message names.
    let refusals: Mutex<BTreeMap<String, String>> = Mutex::default();
    let outcome = tokio::time::timeout(deadline, evict_all(cluster, node, &refusals)).await;
    let failure = match outcome {
        Ok(Ok(evicted)) => return Ok(evicted),
        Ok(Err(error)) => error,
        Err(_) => format!(
            "the drain did not finish within {}",
            humantime::format_duration(deadline)
        ),
    };
    let blocked: Vec<String> = refusals
        .lock()
        .expect("refusals")
        .iter()
        .map(|(pod, why)| format!("{pod}: {why}"))
        .collect();
    let detail = if blocked.is_empty() {
        String::new()
    } else {
        format!(" ({})", blocked.join("; "))
    };
    if !uncordon_on_failure {
        return Err(format!(
            "{failure}{detail}; the node was not rebooted and stays cordoned, as it was before the run"
        ));
    }
    match cluster.set_unschedulable(node, false).await {
        Ok(()) => Err(format!(
            "{failure}{detail}; the node was not rebooted and is uncordoned again"
        )),
        Err(error) => Err(format!(
            "{failure}{detail}; the node was not rebooted, and uncordoning it failed: {error}"
        )),
    }
}

async fn evict_all(
    cluster: &Cluster,
    node: &str,
    refusals: &Mutex<BTreeMap<String, String>>,
) -> Result<usize, String> {
    let pods = cluster
        .pods_to_evict(node)
        .await
        .map_err(|e| e.to_string())?;
    let count = pods.len();
    let results: Vec<Result<(), String>> = futures::stream::iter(pods)
        .map(|pod| evict_one(cluster, pod, refusals))
        .buffer_unordered(CONCURRENT_EVICTIONS)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(count)
}

async fn evict_one(
    cluster: &Cluster,
    pod: Pod,
    refusals: &Mutex<BTreeMap<String, String>>,
) -> Result<(), String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    loop {
        match cluster
            .evict(&namespace, &name)
            .await
            .map_err(|e| e.to_string())?
        {
            Eviction::Gone => break,
            Eviction::Accepted => {
                // Evicted is not yet gone: wait for the pod object to disappear.
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let action = format!("waiting for the evicted pod {key} to go");
                cluster
                    .watch_until(&action, cluster.pods(&namespace), config, |pods| {
                        pods.iter()
                            .all(|p| p.metadata.uid.as_deref() != Some(uid.as_str()))
                            .then_some(())
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                break;
            }
            Eviction::Blocked(message) => {
                refusals
                    .lock()
                    .expect("refusals")
                    .insert(key.clone(), message);
                tokio::time::sleep(EVICTION_RETRY_PAUSE).await;
            }
        }
    }
    refusals.lock().expect("refusals").remove(&key);
    Ok(())
}
