//! Cordon and eviction, the two halves of a drain. Draining in Kubernetes is done client
//! side: mark the node unschedulable, then ask the Eviction API to remove each pod, which
//! refuses (429) while a PodDisruptionBudget would be violated. What stays, as with
//! `kubectl drain --ignore-daemonsets`: DaemonSet pods (their controller would put them
//! straight back, and calico-node must stay), mirror pods (the kubelet owns them), and
//! postflight's own pods: the node shell, which the run needs to send the reboot, and
//! the probe pods, which ride the reboot out to be probed after it.

use super::{api_error, Cluster, ClusterError};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};

/// What the Eviction API said about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// Accepted: the pod is being deleted.
    Accepted,
    /// Refused for now (429): a disruption budget would be violated. Retry later.
    Blocked(String),
    /// The pod is already gone.
    Gone,
}

/// Whether a drain evicts this pod.
pub fn evictable(pod: &Pod) -> bool {
    let owned_by_daemonset = pod
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|owners| owners.iter().any(|o| o.kind == "DaemonSet"));
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    );
    let postflights_own = pod.metadata.labels.as_ref().is_some_and(|labels| {
        let app = labels.get("app.kubernetes.io/name").map(String::as_str);
        [
            Some(crate::node_shell::SHELL_POD_APP),
            Some(super::probes::PROBE_APP),
        ]
        .contains(&app)
            && labels.get(super::MANAGED_BY_LABEL.0).map(String::as_str)
                == Some(super::MANAGED_BY_LABEL.1)
    });
    !owned_by_daemonset && !mirror && !finished && !postflights_own
}

impl Cluster {
    /// Marks the node unschedulable (cordon) or schedulable again (uncordon).
    ///
    /// # Errors
    /// The API refuses the patch.
    pub async fn set_unschedulable(
        &self,
        node: &str,
        unschedulable: bool,
    ) -> Result<(), ClusterError> {
        let patch = serde_json::json!({"spec": {"unschedulable": unschedulable}});
        let verb = if unschedulable {
            "cordoning"
        } else {
            "uncordoning"
        };
        Api::<Node>::all(self.client.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(api_error(format!("{verb} {node}")))
    }

    /// The pods a drain of `node` must evict.
    ///
    /// # Errors
    /// The pods cannot be listed.
    pub async fn pods_to_evict(&self, node: &str) -> Result<Vec<Pod>, ClusterError> {
        let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&params)
            .await
            .map_err(api_error(format!("listing the pods on {node}")))?;
        Ok(pods.items.into_iter().filter(evictable).collect())
    }

    /// Asks the Eviction API to remove one pod.
    ///
    /// # Errors
    /// The API refuses for a reason other than a disruption budget.
    pub async fn evict(&self, namespace: &str, name: &str) -> Result<Eviction, ClusterError> {
        let pods: Api<Pod> = Api::namespaced(self.client_without_retry.clone(), namespace);
        match pods.evict(name, &EvictParams::default()).await {
            Ok(_) => Ok(Eviction::Accepted),
            Err(kube::Error::Api(status)) if status.code == 429 => {
                Ok(Eviction::Blocked(status.message))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(Eviction::Gone),
            Err(error) => Err(api_error(format!("evicting {namespace}/{name}"))(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(owner_kind: Option<&str>, mirror: bool) -> Pod {
        let mut value = serde_json::json!({"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running"}});
        if let Some(kind) = owner_kind {
            value["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": kind, "name": "o", "uid": "u"}]);
        }
        if mirror {
            value["metadata"]["annotations"] =
                serde_json::json!({"kubernetes.io/config.mirror": "x"});
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_drain_leaves_daemonset_and_mirror_pods() {
        assert!(evictable(&pod(None, false)));
        assert!(evictable(&pod(Some("ReplicaSet"), false)));
        assert!(
            !evictable(&pod(Some("DaemonSet"), false)),
            "calico-node stays"
        );
        assert!(!evictable(&pod(None, true)));
        let labelled = |app: &str, manager: &str| {
            let mut labelled = pod(None, false);
            labelled.metadata.labels = Some(
                [
                    ("app.kubernetes.io/name", app),
                    ("app.kubernetes.io/managed-by", manager),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            );
            labelled
        };
        let shell = labelled("postflight-node-shell", "postflight");
        assert!(!evictable(&shell), "the shell that sends the reboot stays");
        let probe = labelled("postflight-probe", "postflight");
        assert!(!evictable(&probe), "the probe pods ride the reboot out");
        let lookalike = labelled("postflight-probe", "someone-else");
        assert!(evictable(&lookalike), "only postflight's own pods stay");
    }
}
