//! Server-side printing: `meta.k8s.io/v1` Tables, which is what `kubectl get` asks for.
//! Columns and their priorities follow the Kubernetes printers (priority 1 = `-o wide`).

use serde_json::{json, Value};

fn column(name: &str, kind: &str, priority: u8) -> Value {
    json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

/// Kubernetes' short human duration ("45s", "3m12s", "5h", "2d").
pub fn human_age(created: &str) -> String {
    let Ok(created) = created.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let seconds = (k8s_openapi::jiff::Timestamp::now().as_second() - created.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn pod_status_text(pod: &Value) -> String {
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating".into();
    }
    let mut reason = pod["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_string();
    for status in pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(r) = status["state"]["waiting"]["reason"].as_str() {
            reason = r.to_string();
        } else if let Some(r) = status["state"]["terminated"]["reason"].as_str() {
            reason = r.to_string();
        }
    }
    reason
}

fn pod_row(pod: &Value) -> Vec<Value> {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|s| s["ready"] == json!(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    vec![
        pod["metadata"]["name"].clone(),
        json!(format!("{ready}/{total}")),
        json!(pod_status_text(pod)),
        json!(restarts),
        json!(human_age(
            pod["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
        )),
        json!(pod["status"]["podIP"].as_str().unwrap_or("<none>")),
        json!(pod["spec"]["nodeName"].as_str().unwrap_or("<none>")),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn node_row(node: &Value) -> Vec<Value> {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True")
        .unwrap_or(false);
    let mut status = if ready {
        "Ready".to_string()
    } else {
        "NotReady".to_string()
    };
    if node["spec"]["unschedulable"] == json!(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = node["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    let address = |kind: &str| {
        node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == kind)
            .and_then(|a| a["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = &node["status"]["nodeInfo"];
    vec![
        node["metadata"]["name"].clone(),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(human_age(
            node["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
        )),
        info["kubeletVersion"].clone(),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        info["osImage"].clone(),
        info["kernelVersion"].clone(),
        info["containerRuntimeVersion"].clone(),
    ]
}

fn daemonset_row(ds: &Value) -> Vec<Value> {
    let s = &ds["status"];
    let selector = ds["spec"]["template"]["spec"]["nodeSelector"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into());
    vec![
        ds["metadata"]["name"].clone(),
        json!(s["desiredNumberScheduled"].as_i64().unwrap_or(0)),
        json!(s["currentNumberScheduled"].as_i64().unwrap_or(0)),
        json!(s["numberReady"].as_i64().unwrap_or(0)),
        json!(s["updatedNumberScheduled"].as_i64().unwrap_or(0)),
        json!(s["numberAvailable"].as_i64().unwrap_or(0)),
        json!(selector),
        json!(human_age(
            ds["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
        )),
    ]
}

pub fn table(resource_key: &str, objects: &[Value], revision: u64) -> Value {
    type RowPrinter = fn(&Value) -> Vec<Value>;
    let (columns, row): (Vec<Value>, RowPrinter) = match resource_key {
        "pods" => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "integer", 0),
                column("Age", "string", 0),
                column("IP", "string", 1),
                column("Node", "string", 1),
                column("Nominated Node", "string", 1),
                column("Readiness Gates", "string", 1),
            ],
            pod_row,
        ),
        "nodes" => (
            vec![
                column("Name", "string", 0),
                column("Status", "string", 0),
                column("Roles", "string", 0),
                column("Age", "string", 0),
                column("Version", "string", 0),
                column("Internal-IP", "string", 1),
                column("External-IP", "string", 1),
                column("OS-Image", "string", 1),
                column("Kernel-Version", "string", 1),
                column("Container-Runtime", "string", 1),
            ],
            node_row,
        ),
        "daemonsets.apps" => (
            vec![
                column("Name", "string", 0),
                column("Desired", "integer", 0),
                column("Current", "integer", 0),
                column("Ready", "integer", 0),
                column("Up-to-date", "integer", 0),
                column("Available", "integer", 0),
                column("Node Selector", "string", 0),
                column("Age", "string", 0),
            ],
            daemonset_row,
        ),
        _ => (
            vec![column("Name", "string", 0), column("Age", "string", 0)],
            |o| {
                vec![
                    o["metadata"]["name"].clone(),
                    json!(human_age(
                        o["metadata"]["creationTimestamp"]
                            .as_str()
                            .unwrap_or_default()
                    )),
                ]
            },
        ),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": row(o),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]},
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision.to_string()},
        "columnDefinitions": columns, "rows": rows,
    })
}
