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
) -> Result<usize, DrainError> {
    cluster
        .set_unschedulable(node, true)
        .await
        .map_err(|error| DrainError {
            cause: DrainCause::Api(error),
            blocked: String::new(),
            aftermath: "the node was not cordoned".into(),
        })?;
    // The last refusal of each pod still blocked: what the failure message names.
    let refusals: Mutex<BTreeMap<String, String>> = Mutex::default();
    let outcome = tokio::time::timeout(deadline, evict_all(cluster, node, &refusals)).await;
    let cause = match outcome {
        Ok(Ok(evicted)) => return Ok(evicted),
        Ok(Err(error)) => DrainCause::Api(error),
        Err(_) => DrainCause::Deadline(humantime::format_duration(deadline).to_string()),
    };
    let blocked: Vec<String> = refusals
        .lock()
        .expect("refusals")
        .iter()
        .map(|(pod, why)| format!("{pod}: {why}"))
        .collect();
    let blocked = if blocked.is_empty() {
        String::new()
    } else {
        format!(" ({})", blocked.join("; "))
    };
    let aftermath = if !uncordon_on_failure {
        "the node was not rebooted and stays cordoned, as it was before the run".to_string()
    } else {
        match cluster.set_unschedulable(node, false).await {
            Ok(()) => "the node was not rebooted and is uncordoned again".to_string(),
            Err(error) => {
                format!("the node was not rebooted, and uncordoning it failed: {error}")
            }
        }
    };
    Err(DrainError {
        cause,
        blocked,
        aftermath,
    })
}

/// A drain that did not finish: why, which pods were still blocked and by what, and what
/// became of the cordon.
#[derive(Debug, thiserror::Error)]
#[error("{cause}{blocked}; {aftermath}")]
pub struct DrainError {
    cause: DrainCause,
    /// ` (ns/pod: what the API said; …)`, or empty.
    blocked: String,
    aftermath: String,
}

#[derive(Debug, thiserror::Error)]
enum DrainCause {
    #[error(transparent)]
    Api(#[from] cluster::ClusterError),
    #[error("the drain did not finish within {0}")]
    Deadline(String),
}

impl DrainError {
    /// A deadline that passed with pods still refused is a PodDisruptionBudget's refusal;
    /// with none refused, the evictions were simply slow.
    pub fn kind(&self) -> ErrorKind {
        match &self.cause {
            DrainCause::Api(error) => error.kind(),
            DrainCause::Deadline(_) if !self.blocked.is_empty() => ErrorKind::Refused,
            DrainCause::Deadline(_) => ErrorKind::Timeout,
        }
    }
}

async fn evict_all(
    cluster: &Cluster,
    node: &str,
    refusals: &Mutex<BTreeMap<String, String>>,
) -> Result<usize, cluster::ClusterError> {
    let pods = cluster.pods_to_evict(node).await?;
    let count = pods.len();
    let results: Vec<Result<(), cluster::ClusterError>> = futures::stream::iter(pods)
        .map(|pod| evict_one(cluster, pod, refusals))
        .buffer_unordered(CONCURRENT_EVICTIONS)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, cluster::ClusterError>>()?;
    Ok(count)
}

async fn evict_one(
    cluster: &Cluster,
    pod: Pod,
    refusals: &Mutex<BTreeMap<String, String>>,
) -> Result<(), cluster::ClusterError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    loop {
        match cluster.evict(&namespace, &name).await? {
            Eviction::Gone => break,
            Eviction::Accepted => {
                // Evicted is not yet gone: wait for this pod (by UID) to disappear.
                let action = format!("waiting for the evicted pod {key} to go");
                cluster
                    .await_object(
                        &action,
                        cluster.pods(&namespace),
                        &name,
                        cluster::conditions::is_gone(&uid),
                    )
                    .await?;
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
