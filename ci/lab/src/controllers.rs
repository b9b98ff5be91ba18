//! The control-plane loops the lab needs: node lifecycle (a silent node becomes
//! NotReady and its pods unready), the DaemonSet controller (one pod per node, recreated
//! when deleted), and a scheduler for pods that name no node.

use crate::apiserver::selectors::LabelSelector;
use crate::apiserver::store::{self, Store};
use crate::kubelet::{mark_node_unknown, refresh_pod_conditions, Timings};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How often the loops look at the cluster; the node-monitor period is 5 s in Kubernetes.
const CONTROL_PERIOD: Duration = Duration::from_millis(500);

pub async fn run(store: Arc<Store>, timings: Timings) {
    let mut tick = tokio::time::interval(CONTROL_PERIOD);
    loop {
        tick.tick().await;
        node_lifecycle(&store, timings.node_grace);
        daemonsets(&store);
        schedule(&store);
    }
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == json!(kind))
}

pub fn node_is_ready(node: &Value) -> bool {
    condition(node, "Ready").is_some_and(|c| c["status"] == "True")
}

fn node_lifecycle(store: &Store, grace: Duration) {
    let now = k8s_openapi::jiff::Timestamp::now();
    for node in store.list("nodes", None).0 {
        let Some(ready) = condition(&node, "Ready") else {
            continue;
        };
        if ready["status"] != "True" {
            continue;
        }
        let heartbeat = ready["lastHeartbeatTime"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        // Signed: a heartbeat stamped a moment ahead of this clock is fresh, not ancient.
        let silent = heartbeat.is_none_or(|t| {
            i128::from(now.as_millisecond() - t.as_millisecond()) > grace.as_millis() as i128
        });
        if !silent {
            continue;
        }
        let name = store::name_of(&node).to_string();
        tracing::info!(node = name, "node stopped posting status");
        let _ = store.update("nodes", "", &name, |n| {
            mark_node_unknown(n);
            Ok(())
        });
        mark_pods_unready(store, &name);
    }
}

/// Every pod on the node stops being Ready: its node is gone or going.
pub fn mark_pods_unready(store: &Store, node: &str) {
    for pod in store
        .list("pods", None)
        .0
        .iter()
        .filter(|p| p["spec"]["nodeName"] == json!(node))
    {
        let _ = store.update("pods", store::namespace_of(pod), store::name_of(pod), |p| {
            if let Some(statuses) = p["status"]["containerStatuses"].as_array_mut() {
                for status in statuses {
                    status["ready"] = json!(false);
                }
            }
            refresh_pod_conditions(p);
            Ok(())
        });
    }
}

fn tolerates(tolerations: &Value, taint: &Value) -> bool {
    tolerations.as_array().into_iter().flatten().any(|t| {
        let key_matches = t["key"].is_null() || t["key"] == taint["key"];
        let effect_matches = t["effect"].is_null() || t["effect"] == taint["effect"];
        let value_matches = t["operator"] == json!("Exists") || t["value"] == taint["value"];
        key_matches && effect_matches && value_matches
    })
}

fn fits(node: &Value, pod_spec: &Value) -> bool {
    let selector_matches = pod_spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| node["metadata"]["labels"][k] == *v);
    let taints_tolerated = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == json!("NoSchedule") || t["effect"] == json!("NoExecute"))
        .all(|t| tolerates(&pod_spec["tolerations"], t));
    selector_matches && taints_tolerated
}

fn daemonsets(store: &Store) {
    let (nodes, _) = store.list("nodes", None);
    let (pods, _) = store.list("pods", None);
    for ds in store.list("daemonsets.apps", None).0 {
        let (namespace, name) = (
            store::namespace_of(&ds).to_string(),
            store::name_of(&ds).to_string(),
        );
        let template = &ds["spec"]["template"];
        let selector = LabelSelector::from_object(&ds["spec"]["selector"]);
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| store::namespace_of(p) == namespace && selector.matches(p))
            .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"])
            .collect();
        let eligible: Vec<&Value> = nodes
            .iter()
            .filter(|n| fits(n, &template["spec"]))
            .collect();
        for node in &eligible {
            let node_name = store::name_of(node);
            if owned
                .iter()
                .any(|p| p["spec"]["nodeName"] == json!(node_name))
            {
                continue;
            }
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "generateName": format!("{name}-"), "labels": template["metadata"]["labels"],
                    "annotations": template["metadata"]["annotations"],
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name, "uid": ds["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": template["spec"],
                "status": {"phase": "Pending"},
            });
            pod["metadata"]["labels"]["pod-template-generation"] = json!(ds["metadata"]
                ["generation"]
                .as_i64()
                .unwrap_or(1)
                .to_string());
            pod["spec"]["nodeName"] = json!(node_name);
            if pod["spec"]["restartPolicy"].is_null() {
                pod["spec"]["restartPolicy"] = json!("Always");
            }
            let _ = store.create("pods", &namespace, pod);
        }
        let ready = owned
            .iter()
            .filter(|p| crate::apiserver::pod_is_ready(p))
            .count();
        let status = json!({
            "desiredNumberScheduled": eligible.len(), "currentNumberScheduled": owned.len(), "numberReady": ready,
            "numberAvailable": ready, "updatedNumberScheduled": owned.len(), "numberMisscheduled": 0,
            "numberUnavailable": owned.len().saturating_sub(ready), "observedGeneration": ds["metadata"]["generation"],
        });
        let _ = store.update("daemonsets.apps", &namespace, &name, |d| {
            d["status"] = status;
            Ok(())
        });
    }
}

/// Binds pending pods without a node to the Ready, schedulable node with fewest pods.
fn schedule(store: &Store) {
    let (pods, _) = store.list("pods", None);
    let nodes: Vec<Value> = store
        .list("nodes", None)
        .0
        .into_iter()
        .filter(|n| node_is_ready(n) && n["spec"]["unschedulable"] != json!(true))
        .collect();
    for pod in pods
        .iter()
        .filter(|p| p["spec"]["nodeName"].as_str().is_none_or(str::is_empty))
    {
        let load = |n: &Value| {
            pods.iter()
                .filter(|p| p["spec"]["nodeName"] == n["metadata"]["name"])
                .count()
        };
        let Some(node) = nodes
            .iter()
            .filter(|n| fits(n, &pod["spec"]))
            .min_by_key(|n| load(n))
        else {
            continue;
        };
        let _ = store.update("pods", store::namespace_of(pod), store::name_of(pod), |p| {
            p["spec"]["nodeName"] = node["metadata"]["name"].clone();
            Ok(())
        });
    }
}
