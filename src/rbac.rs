//! What postflight may do in a cluster, in one table: every permission it uses, what for,
//! and in which namespace. The table is the source of both the RBAC manifest that
//! `postflight rbac` prints (and `ci/rbac.yaml` is) and the access review a run makes
//! before it acts, so the two cannot drift apart.

use crate::inventory::Inventory;

/// What a run is going to do, which decides the permissions it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read nodes, calico-node and its logs; create probe pods and exec into them.
    Verify,
    /// Take the reboot lock.
    Reboot,
    /// Cordon the node and evict its pods.
    Drain,
    /// Reach a node's host through a node-shell pod (only when the inventory chooses
    /// that transport for it).
    NodeShell,
}

/// Where a permission applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    Cluster,
    /// The probe namespace (a Role in it).
    Probe,
    /// The lock's namespace (a Role in it).
    Lock,
    /// The node-shell namespace (a Role in it), only for inventories that use it.
    NodeShell,
}

/// One rule of postflight's RBAC.
#[derive(Debug, Clone)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Limited to one object by name: the probe namespace or the lock's Lease.
    pub named: Option<Named>,
    pub need: Need,
    /// Why postflight needs it, as the manifest's comment says.
    pub why: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    ProbeNamespace,
    LockLease,
}

/// Every permission postflight uses. Nothing else may be granted to it.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        group: "",
        resource: "nodes",
        subresource: None,
        verbs: &["get", "list", "watch"],
        scope: Scope::Cluster,
        named: None,
        need: Need::Verify,
        why: "Ready condition and bootID of the node, watched while it reboots.",
    },
    Permission {
        group: "",
        resource: "nodes",
        subresource: None,
        verbs: &["patch"],
        scope: Scope::Cluster,
        named: None,
        need: Need::Drain,
        why: "--drain: cordon and uncordon (spec.unschedulable).",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: None,
        verbs: &["get", "list", "watch"],
        scope: Scope::Cluster,
        named: None,
        need: Need::Verify,
        why: "calico-node pods (watched), and the pods on a node that --drain moves.",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: Some("log"),
        verbs: &["get"],
        scope: Scope::Cluster,
        named: None,
        need: Need::Verify,
        why: "calico-node's current and previous logs, as evidence.",
    },
    Permission {
        group: "",
        resource: "events",
        subresource: None,
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        named: None,
        need: Need::Verify,
        why: "calico-node's probe failures (Unhealthy events): a readiness probe that cannot reach BIRD's control socket ends the wait at once.",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: Some("eviction"),
        verbs: &["create"],
        scope: Scope::Cluster,
        named: None,
        need: Need::Drain,
        why: "--drain: evictions through the Eviction API, so PodDisruptionBudgets are respected.",
    },
    Permission {
        group: "apps",
        resource: "daemonsets",
        subresource: None,
        verbs: &["get", "list"],
        scope: Scope::Cluster,
        named: None,
        need: Need::Verify,
        why: "calico-node's DaemonSet: where it runs (kube-system or calico-system) and as which user.",
    },
    Permission {
        group: "",
        resource: "namespaces",
        subresource: None,
        verbs: &["get", "list", "watch"],
        scope: Scope::Cluster,
        named: Some(Named::ProbeNamespace),
        need: Need::Verify,
        why: "The probe namespace, read (and waited on while Terminating) by name only.",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: None,
        verbs: &[
            "get",
            "list",
            "watch",
            "create",
            "delete",
            "deletecollection",
        ],
        scope: Scope::Probe,
        named: None,
        need: Need::Verify,
        why: "postflight's probe pods: created, watched, deleted.",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: Some("exec"),
        verbs: &["get", "create"],
        scope: Scope::Probe,
        named: None,
        need: Need::Verify,
        why: "curl between probe pods (exec is authorised as create; older servers, get).",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: None,
        verbs: &["get", "list", "watch", "create", "delete", "deletecollection"],
        scope: Scope::NodeShell,
        named: None,
        need: Need::NodeShell,
        why: "node-shell transport: one privileged pod per node a run reads or reboots, deleted at its end.",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: Some("exec"),
        verbs: &["get", "create"],
        scope: Scope::NodeShell,
        named: None,
        need: Need::NodeShell,
        why: "node-shell transport: each command on a node is an exec into its shell pod, entering the host's namespaces.",
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        subresource: None,
        verbs: &["create"],
        scope: Scope::Lock,
        named: None,
        need: Need::Reboot,
        why: "The reboot lock, created on first use (creation cannot be limited by name).",
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        subresource: None,
        verbs: &["get", "list", "watch", "update"],
        scope: Scope::Lock,
        named: Some(Named::LockLease),
        need: Need::Reboot,
        why: "The reboot lock: one reboot at a time across every pipeline.",
    },
];

impl Permission {
    /// The resource as RBAC names it: `pods/exec`.
    pub fn resource_path(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_string(),
        }
    }

    pub fn namespace<'a>(&self, inventory: &'a Inventory) -> Option<&'a str> {
        match self.scope {
            Scope::Cluster => None,
            Scope::Probe => Some(&inventory.probe.namespace),
            Scope::Lock => Some(&inventory.lock.namespace),
            Scope::NodeShell => Some(&inventory.node_shell.namespace),
        }
    }

    pub fn name<'a>(&self, inventory: &'a Inventory) -> Option<&'a str> {
        self.named.map(|named| match named {
            Named::ProbeNamespace => inventory.probe.namespace.as_str(),
            Named::LockLease => inventory.lock.name.as_str(),
        })
    }

    /// The rule, as YAML under a role's `rules:`.
    fn yaml(&self, inventory: &Inventory) -> String {
        let list = |items: &[&str]| {
            items
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!(
            "  # {}\n  - apiGroups: [\"{}\"]\n    resources: [\"{}\"]\n",
            self.why,
            self.group,
            self.resource_path()
        );
        if let Some(name) = self.name(inventory) {
            text.push_str(&format!("    resourceNames: [\"{name}\"]\n"));
        }
        text.push_str(&format!("    verbs: [{}]\n", list(self.verbs)));
        text
    }
}

/// Who the RBAC is for: a ServiceAccount, `NAMESPACE/NAME`.
#[derive(Debug, Clone)]
pub struct Subject {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for Subject {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (namespace, name) = text
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| format!("{text:?} is not NAMESPACE/NAME"))?;
        Ok(Subject {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl Default for Subject {
    fn default() -> Self {
        Subject {
            namespace: "postflight".into(),
            name: "postflight".into(),
        }
    }
}

fn binding(kind: &str, name: &str, namespace: Option<&str>, subject: &Subject) -> String {
    let (binding_kind, metadata_namespace) = match namespace {
        Some(ns) => ("RoleBinding", format!("\n  namespace: {ns}")),
        None => ("ClusterRoleBinding", String::new()),
    };
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: {binding_kind}\nmetadata:\n  name: {name}{metadata_namespace}\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: {kind}\n  name: {name}\n\
         subjects:\n  - kind: ServiceAccount\n    name: {}\n    namespace: {}\n",
        subject.name, subject.namespace
    )
}

fn role(
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    scope: &Scope,
    inventory: &Inventory,
) -> String {
    let metadata_namespace = namespace
        .map(|ns| format!("\n  namespace: {ns}"))
        .unwrap_or_default();
    let mut text = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: {name}{metadata_namespace}\nrules:\n"
    );
    for permission in PERMISSIONS.iter().filter(|p| &p.scope == scope) {
        text.push_str(&permission.yaml(inventory));
    }
    text
}

/// The RBAC manifest for an inventory, ready for `kubectl apply -f -`: the probe
/// namespace (labelled for Pod Security `restricted`), a ClusterRole for what is
/// cluster-wide, and Roles in the probe and lock namespaces, each bound to `subject`.
pub fn manifest(inventory: &Inventory, subject: &Subject) -> String {
    let probe = &inventory.probe.namespace;
    let lock = &inventory.lock.namespace;
    let header = format!(
        "# What postflight needs from the Kubernetes API, and nothing more (`postflight rbac`).\n\
         # Probe pods in {probe}; reboot lock {lock}/{lease}.\n\
         # Bound to the ServiceAccount {sa_ns}/{sa}. Apply as a cluster admin:\n\
         #   postflight --inventory INVENTORY rbac | kubectl apply -f -\n\
         #\n\
         # Cluster-wide: only reads, cordon, and evictions (a drain evicts in every namespace).\n\
         # Pods are created only in the probe namespace, which this manifest provisions: it is\n\
         # labelled for Pod Security `restricted`, and postflight never deletes it.\n",
        lease = inventory.lock.name,
        sa_ns = subject.namespace,
        sa = subject.name,
    );
    let namespace = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {probe}\n  labels:\n\
         \x20   pod-security.kubernetes.io/enforce: restricted\n\
         \x20   pod-security.kubernetes.io/enforce-version: latest\n"
    );
    let documents = [
        namespace,
        role(
            "ClusterRole",
            "postflight",
            None,
            &Scope::Cluster,
            inventory,
        ),
        binding("ClusterRole", "postflight", None, subject),
        role(
            "Role",
            "postflight-probes",
            Some(probe),
            &Scope::Probe,
            inventory,
        ),
        binding("Role", "postflight-probes", Some(probe), subject),
        role(
            "Role",
            "postflight-lock",
            Some(lock),
            &Scope::Lock,
            inventory,
        ),
        binding("Role", "postflight-lock", Some(lock), subject),
    ];
    let mut documents = documents.to_vec();
    if inventory.uses_node_shell() {
        documents.extend(node_shell_documents(inventory, subject));
    }
    format!("{header}{}", documents.join("---\n"))
}

/// What the node-shell transport adds, printed only for an inventory that chooses it:
/// its own namespace, where Pod Security allows privileged pods (and nothing else of
/// postflight's runs), and a Role there to create, enter and delete the shell pods.
fn node_shell_documents(inventory: &Inventory, subject: &Subject) -> [String; 3] {
    let namespace = &inventory.node_shell.namespace;
    [
        format!(
            "# The node-shell transport: privileged pods in the hosts' namespaces, as `kubectl debug node`\n\
             # makes. They are allowed here and only here; grant this only where SSH to nodes is not used.\n\
             apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n\
             \x20   pod-security.kubernetes.io/enforce: privileged\n\
             \x20   pod-security.kubernetes.io/enforce-version: latest\n"
        ),
        role(
            "Role",
            "postflight-node-shell",
            Some(namespace),
            &Scope::NodeShell,
            inventory,
        ),
        binding("Role", "postflight-node-shell", Some(namespace), subject),
    ]
}

/// One access a run needs: a verb on a resource, in a namespace, perhaps on one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Access {
    /// `create pods/eviction (cluster-wide)`, as an operator reads it.
    pub fn describe(&self) -> String {
        let resource = match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        };
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        let name = self
            .name
            .as_ref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        let place = match &self.namespace {
            Some(ns) => format!("in namespace {ns}"),
            None => "cluster-wide".into(),
        };
        format!("{} {resource}{group}{name} ({place})", self.verb)
    }
}

/// Every access a run with these needs makes, one per verb.
pub fn required(inventory: &Inventory, needs: &[Need]) -> Vec<Access> {
    let mut out = Vec::new();
    for permission in PERMISSIONS.iter().filter(|p| needs.contains(&p.need)) {
        for verb in permission.verbs {
            out.push(Access {
                verb: (*verb).to_string(),
                group: permission.group.into(),
                resource: permission.resource.into(),
                subresource: permission.subresource.map(String::from),
                namespace: permission.namespace(inventory).map(String::from),
                name: permission.name(inventory).map(String::from),
            });
        }
    }
    out
}

/// Whether `rules`, as a SelfSubjectRulesReview lists them, grant `access`: matched as
/// the RBAC authorizer matches a rule (`*` for any verb, group or resource, `*/exec` for
/// a subresource of any resource, resource names limiting a rule to those objects).
pub fn rules_grant(
    rules: &[k8s_openapi::api::authorization::v1::ResourceRule],
    access: &Access,
) -> bool {
    let resource = match &access.subresource {
        Some(sub) => format!("{}/{sub}", access.resource),
        None => access.resource.clone(),
    };
    let any_or = |list: &Option<Vec<String>>, wanted: &str| {
        list.as_ref()
            .is_some_and(|items| items.iter().any(|item| item == "*" || item == wanted))
    };
    rules.iter().any(|rule| {
        rule.verbs
            .iter()
            .any(|verb| verb == "*" || *verb == access.verb)
            && any_or(&rule.api_groups, &access.group)
            && rule.resources.as_ref().is_some_and(|resources| {
                resources.iter().any(|granted| {
                    granted == "*"
                        || *granted == resource
                        || access
                            .subresource
                            .as_ref()
                            .is_some_and(|sub| *granted == format!("*/{sub}"))
                })
            })
            && match (&rule.resource_names, &access.name) {
                (None, _) => true,
                (Some(names), _) if names.is_empty() => true,
                (Some(names), Some(name)) => names.contains(name),
                (Some(_), None) => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        Inventory::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/inventory/example-staging.yaml"
        )))
        .expect("the example inventory loads")
    }

    #[test]
    fn ci_rbac_yaml_is_the_manifest_for_the_example_inventory() {
        let shipped = include_str!("../ci/rbac.yaml");
        let generated = manifest(&inventory(), &Subject::default());
        assert_eq!(
            shipped, generated,
            "ci/rbac.yaml is stale: regenerate it with `postflight --inventory inventory/example-staging.yaml rbac > ci/rbac.yaml`"
        );
    }

    #[test]
    fn a_plain_verify_needs_no_cordon_eviction_or_lock() {
        let accesses = required(&inventory(), &[Need::Verify]);
        assert!(accesses
            .iter()
            .all(|a| a.verb != "patch" && a.resource != "leases"));
        assert!(accesses
            .iter()
            .all(|a| a.subresource.as_deref() != Some("eviction")));
        let exec = accesses
            .iter()
            .find(|a| a.subresource.as_deref() == Some("exec") && a.verb == "create")
            .expect("exec is needed");
        assert_eq!(exec.namespace.as_deref(), Some("postflight-probe"));
    }

    #[test]
    fn a_drain_needs_cordon_and_evictions_cluster_wide() {
        let accesses = required(&inventory(), &[Need::Drain]);
        let described: Vec<String> = accesses.iter().map(Access::describe).collect();
        assert_eq!(
            described,
            [
                "patch nodes (cluster-wide)",
                "create pods/eviction (cluster-wide)"
            ]
        );
    }

    #[test]
    fn the_lock_is_reachable_by_name_only_except_its_creation() {
        let accesses = required(&inventory(), &[Need::Reboot]);
        for access in &accesses {
            assert_eq!(access.namespace.as_deref(), Some("kube-system"));
            assert_eq!(
                access.name.is_some(),
                access.verb != "create",
                "{}",
                access.describe()
            );
        }
    }

    #[test]
    fn the_node_shell_rbac_is_printed_only_for_an_inventory_that_uses_it() {
        let ssh_only = manifest(&inventory(), &Subject::default());
        assert!(!ssh_only.contains("node-shell"), "{ssh_only}");
        let text = "transport: node-shell\nnodes:\n  - name: k8s-worker-01\n";
        let shells = Inventory::parse(text, std::path::Path::new("shells.yaml")).unwrap();
        let printed = manifest(&shells, &Subject::default());
        assert!(printed.contains(
            "name: postflight-node-shell\n  labels:\n    pod-security.kubernetes.io/enforce: privileged"
        ));
        let accesses = required(&shells, &[Need::NodeShell]);
        assert!(accesses
            .iter()
            .all(|a| a.namespace.as_deref() == Some("postflight-node-shell")));
        assert!(accesses
            .iter()
            .any(|a| a.verb == "create" && a.subresource.as_deref() == Some("exec")));
        // The probe namespace stays `restricted`: shells never run there.
        assert!(printed.contains(
            "name: postflight-probe\n  labels:\n    pod-security.kubernetes.io/enforce: restricted"
        ));
    }

    fn rule(
        verbs: &[&str],
        groups: &[&str],
        resources: &[&str],
        names: &[&str],
    ) -> k8s_openapi::api::authorization::v1::ResourceRule {
        let strings = |items: &[&str]| items.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        k8s_openapi::api::authorization::v1::ResourceRule {
            verbs: strings(verbs),
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            resource_names: (!names.is_empty()).then(|| strings(names)),
        }
    }

    #[test]
    fn rules_grant_an_access_as_the_rbac_authorizer_matches_it() {
        let exec = Access {
            verb: "create".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: Some("exec".into()),
            namespace: Some("postflight-probe".into()),
            name: None,
        };
        assert!(rules_grant(
            &[rule(&["create"], &[""], &["pods/exec"], &[])],
            &exec
        ));
        assert!(rules_grant(&[rule(&["*"], &["*"], &["*"], &[])], &exec));
        assert!(rules_grant(
            &[rule(&["create"], &[""], &["*/exec"], &[])],
            &exec
        ));
        // A grant on pods is not one on their exec subresource, nor another verb's.
        assert!(!rules_grant(
            &[rule(&["create"], &[""], &["pods"], &[])],
            &exec
        ));
        assert!(!rules_grant(
            &[rule(&["get"], &[""], &["pods/exec"], &[])],
            &exec
        ));
        assert!(!rules_grant(
            &[rule(&["create"], &["apps"], &["pods/exec"], &[])],
            &exec
        ));
        let lease = Access {
            verb: "update".into(),
            group: "coordination.k8s.io".into(),
            resource: "leases".into(),
            subresource: None,
            namespace: Some("kube-system".into()),
            name: Some("postflight-reboot-lock".into()),
        };
        let named = |name| rule(&["update"], &["coordination.k8s.io"], &["leases"], &[name]);
        assert!(rules_grant(&[named("postflight-reboot-lock")], &lease));
        assert!(!rules_grant(&[named("someone-elses")], &lease));
        // Rules limited to names grant nothing on a request without one.
        let create = Access {
            verb: "update".into(),
            name: None,
            ..lease.clone()
        };
        assert!(!rules_grant(&[named("postflight-reboot-lock")], &create));
        assert!(!rules_grant(&[], &lease));
    }

    #[test]
    fn a_subject_is_namespace_slash_name() {
        let subject: Subject = "ci/runner".parse().unwrap();
        assert_eq!(
            (subject.namespace.as_str(), subject.name.as_str()),
            ("ci", "runner")
        );
        assert!("runner".parse::<Subject>().is_err());
        assert!("a/b/c".parse::<Subject>().is_err());
    }
}
