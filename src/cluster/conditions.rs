//! The conditions postflight waits for, in kube-runtime's style: plain functions that
//! return an `impl Condition<K>`, evaluated on the object as the watch last saw it
//! (`None` when it does not exist). Each is unit-tested on JSON fixtures of the objects
//! a real API server returns.

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::runtime::wait::Condition;

/// The node reports Ready=True.
pub fn is_node_ready() -> impl Condition<Node> {
    |node: Option<&Node>| node.is_some_and(super::node_ready)
}

/// The node runs a boot other than `boot_id`: it has rebooted since that was read.
pub fn has_boot_id_other_than(boot_id: &str) -> impl Condition<Node> + '_ {
    move |node: Option<&Node>| {
        node.and_then(super::boot_id)
            .is_some_and(|id| !id.is_empty() && id != boot_id)
    }
}

/// The node's kubelet has reported its Ready condition at or after `since`: a report of
/// the node as it is now, not one left from before a restart that the API did not see.
pub fn has_reported_since(since: k8s_openapi::jiff::Timestamp) -> impl Condition<Node> {
    move |node: Option<&Node>| {
        node.and_then(|node| super::node_condition(node, "Ready"))
            .and_then(|ready| ready.last_heartbeat_time.as_ref())
            .is_some_and(|heartbeat| heartbeat.0 >= since)
    }
}

/// The object with this UID is gone: deleted, or replaced by another of the same name
/// (which is not the one we waited on). Deletion is confirmed by UID, never by name.
pub fn is_gone<K: kube::Resource>(uid: &str) -> impl Condition<K> + '_ {
    move |object: Option<&K>| object.is_none_or(|o| o.meta().uid.as_deref() != Some(uid))
}

/// The namespace exists and is not being deleted: it takes new pods.
pub fn is_namespace_active() -> impl Condition<Namespace> {
    |namespace: Option<&Namespace>| {
        namespace.is_some_and(|ns| {
            ns.metadata.deletion_timestamp.is_none()
                && ns
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_none_or(|phase| phase == "Active")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn node(ready: &str, boot_id: &str) -> Node {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "k8s-worker-03", "uid": "n-1"},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": ready, "reason": "KubeletReady"},
                ],
                "nodeInfo": {"bootID": boot_id, "machineID": "m", "systemUUID": "s",
                    "kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion": "containerd://1.7",
                    "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            },
        }))
        .expect("a Node")
    }

    #[test]
    fn a_node_is_ready_only_with_ready_true() {
        assert!(is_node_ready().matches_object(Some(&node("True", "b1"))));
        assert!(!is_node_ready().matches_object(Some(&node("False", "b1"))));
        assert!(!is_node_ready().matches_object(Some(&node("Unknown", "b1"))));
        assert!(!is_node_ready().matches_object(None));
    }

    #[test]
    fn a_new_boot_is_a_different_non_empty_boot_id() {
        let rebooted = has_boot_id_other_than("b1");
        assert!(rebooted.matches_object(Some(&node("True", "b2"))));
        assert!(!rebooted.matches_object(Some(&node("True", "b1"))));
        assert!(
            !rebooted.matches_object(Some(&node("True", ""))),
            "no boot ID proves nothing"
        );
        assert!(!rebooted.matches_object(None));
    }

    #[test]
    fn deletion_is_confirmed_by_uid() {
        let pod = |uid: &str| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "web-0", "namespace": "shop", "uid": uid}}),
            )
            .expect("a Pod")
        };
        let gone = is_gone::<Pod>("p-1");
        assert!(!gone.matches_object(Some(&pod("p-1"))));
        assert!(
            gone.matches_object(Some(&pod("p-2"))),
            "a new pod of the same name"
        );
        assert!(gone.matches_object(None));
    }

    #[test]
    fn a_terminating_namespace_is_not_active() {
        let namespace = |deleting: bool, phase: &str| -> Namespace {
            let mut value =
                json!({"metadata": {"name": "postflight-probe"}, "status": {"phase": phase}});
            if deleting {
                value["metadata"]["deletionTimestamp"] = json!("2026-11-26T08:00:00Z");
            }
            serde_json::from_value(value).expect("a Namespace")
        };
        assert!(is_namespace_active().matches_object(Some(&namespace(false, "Active"))));
        assert!(!is_namespace_active().matches_object(Some(&namespace(true, "Terminating"))));
        assert!(!is_namespace_active().matches_object(None));
    }
}
