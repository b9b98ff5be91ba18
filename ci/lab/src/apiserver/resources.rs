//! The resources the lab serves, as discovery describes them.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// Store key: the plural, qualified by its group when it has one.
    pub key: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub subresources: &'static [&'static str],
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn core(
    key: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    sub: &'static [&'static str],
) -> Resource {
    Resource {
        key,
        group: "",
        version: "v1",
        plural: key,
        kind,
        namespaced,
        short_names: short,
        subresources: sub,
    }
}

pub const RESOURCES: &[Resource] = &[
    core("nodes", "Node", false, &["no"], &["status"]),
    core(
        "pods",
        "Pod",
        true,
        &["po"],
        &["status", "log", "exec", "eviction"],
    ),
    core("namespaces", "Namespace", false, &["ns"], &["status"]),
    core("events", "Event", true, &["ev"], &[]),
    core("configmaps", "ConfigMap", true, &["cm"], &[]),
    Resource {
        key: "daemonsets.apps",
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        subresources: &["status"],
    },
    Resource {
        key: "leases.coordination.k8s.io",
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    Resource {
        key: "poddisruptionbudgets.policy",
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        kind: "PodDisruptionBudget",
        namespaced: true,
        short_names: &["pdb"],
        subresources: &["status"],
    },
];

pub const GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("coordination.k8s.io", "v1"),
    ("policy", "v1"),
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_key(key: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.key == key)
        .expect("known resource key")
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    let mut any = false;
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        any = true;
        let verbs = match r.key {
            "events" | "configmaps" => vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            _ => vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        };
        resources.push(json!({
            "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs, "shortNames": r.short_names,
        }));
        for sub in r.subresources {
            let (kind, verbs) = match *sub {
                "status" => (r.kind, vec!["get", "patch", "update"]),
                "log" => ("Pod", vec!["get"]),
                "exec" => ("PodExecOptions", vec!["create", "get"]),
                "eviction" => ("Eviction", vec!["create"]),
                _ => (r.kind, vec!["get"]),
            };
            let mut entry = json!({"name": format!("{}/{}", r.plural, sub), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            if *sub == "eviction" {
                entry["group"] = json!("policy");
                entry["version"] = json!("v1");
            }
            resources.push(entry);
        }
    }
    any.then(|| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|(g, v)| group(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [gv.clone()], "preferredVersion": gv})
}
