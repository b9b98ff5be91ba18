//! A postflight inventory for a kind cluster, written from what kind itself says: the
//! node containers `kind get nodes` lists and the context `kind create cluster` wrote
//! into the kubeconfig. kind nodes are containers on the host's kernel with no sshd, so
//! the inventory reaches them through node shells, restarts them with
//! `docker restart {node}` from this machine, and proves a restart by the node's new
//! PID 1 (its boot ID is the host's). Nothing here hard-codes an address: kind assigns
//! them, and a node shell needs none.

use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error("`kind` was not found on PATH: install it (go install sigs.k8s.io/kind@latest) or run this where kind created the cluster")]
    KindMissing,
    #[error("`kind get nodes --name {cluster}` failed ({status}): {stderr}")]
    GetNodes {
        cluster: String,
        status: String,
        stderr: String,
    },
    #[error("kind lists no nodes for a cluster named {cluster:?}: `kind get clusters` names the clusters there are")]
    NoNodes { cluster: String },
    #[error("kind listed {name:?}, which is not a valid Kubernetes node name")]
    BadNodeName { name: String },
    #[error("{kubeconfig}: {reason}")]
    Kubeconfig { kubeconfig: String, reason: String },
    #[error("{kubeconfig} has no context {context:?}: write it with `kind export kubeconfig --name {cluster}`")]
    NoContext {
        kubeconfig: String,
        context: String,
        cluster: String,
    },
}

/// The context `kind create cluster --name NAME` writes.
pub fn context_of(cluster: &str) -> String {
    format!("kind-{cluster}")
}

/// The node containers of `cluster`, as `kind get nodes` lists them.
///
/// # Errors
/// kind is not installed, or fails, or lists nothing.
pub fn get_nodes(cluster: &str) -> Result<Vec<String>, KindError> {
    let output = Command::new("kind")
        .args(["get", "nodes", "--name", cluster])
        .output()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => KindError::KindMissing,
            _ => KindError::GetNodes {
                cluster: cluster.into(),
                status: error.to_string(),
                stderr: String::new(),
            },
        })?;
    if !output.status.success() {
        return Err(KindError::GetNodes {
            cluster: cluster.into(),
            status: output.status.to_string(),
            stderr: crate::hostile::lossy(output.stderr).trim().to_string(),
        });
    }
    let listed = crate::hostile::lossy(output.stdout);
    let nodes: Vec<String> = listed
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        // The load balancer of a cluster with several control planes is a container of
        // kind's, not a Kubernetes node.
        .filter(|name| !name.ends_with("-external-load-balancer"))
        .map(String::from)
        .collect();
    if nodes.is_empty() {
        return Err(KindError::NoNodes {
            cluster: cluster.into(),
        });
    }
    Ok(nodes)
}

/// Checks that the kubeconfig (`kubeconfig`, or kubectl's default) has the cluster's
/// context, so the inventory written next works as written.
///
/// # Errors
/// The kubeconfig cannot be read or has no such context.
pub fn check_context(cluster: &str, kubeconfig: Option<&Path>) -> Result<(), KindError> {
    let (read, shown) = match kubeconfig {
        // Bounded first: kube reads whatever the path names, /dev/zero included.
        Some(path) => match crate::local_file::read(path, "the kubeconfig") {
            Err(error) => {
                return Err(KindError::Kubeconfig {
                    kubeconfig: path.display().to_string(),
                    reason: error.problem.to_string(),
                })
            }
            Ok(_) => (
                kube::config::Kubeconfig::read_from(path),
                path.display().to_string(),
            ),
        },
        None => (
            kube::config::Kubeconfig::read(),
            "the default kubeconfig".to_string(),
        ),
    };
    let config = read.map_err(|error| KindError::Kubeconfig {
        kubeconfig: shown.clone(),
        reason: error.to_string(),
    })?;
    let context = context_of(cluster);
    if config.contexts.iter().any(|named| named.name == context) {
        Ok(())
    } else {
        Err(KindError::NoContext {
            kubeconfig: shown,
            context,
            cluster: cluster.into(),
        })
    }
}

/// The inventory for a kind cluster of these nodes. Control-plane nodes are protected.
///
/// # Errors
/// A listed name is not a Kubernetes node name (what kind lists always is; anything
/// else is not written into an inventory).
pub fn inventory(
    cluster: &str,
    nodes: &[String],
    kubeconfig: Option<&Path>,
) -> Result<String, KindError> {
    let mut text = format!(
        "# postflight inventory for the kind cluster {cluster:?} (postflight inventory from-kind).\n\
         # kind nodes are containers without sshd: postflight reaches them through node shells\n\
         # (grant them with `postflight --inventory THIS rbac | kubectl apply -f -`), restarts\n\
         # them with docker from this machine, and proves a restart by the node's new PID 1,\n\
         # since a container's boot ID is its host's.\n\
         cluster:\n"
    );
    if let Some(kubeconfig) = kubeconfig {
        text.push_str(&format!(
            "  kubeconfig: {}\n",
            yaml_string(&kubeconfig.to_string_lossy())
        ));
    }
    text.push_str(&format!(
        "  context: {}\ntransport: node-shell\nnodes:\n",
        yaml_string(&context_of(cluster))
    ));
    for node in nodes {
        if !crate::inventory::valid_node_name(node) {
            return Err(KindError::BadNodeName { name: node.clone() });
        }
        text.push_str(&format!("  - name: {node}\n"));
        if node.contains("-control-plane") {
            text.push_str("    protected: true\n");
        }
    }
    text.push_str(
        "reboot:\n  command: docker restart {node}\n  runs_on: local\n  node_kind: container\n\
         # kind nodes start in seconds.\n\
         timeouts:\n  node_not_ready: 1m\n  node_ready: 2m\n  calico_ready: 2m\n",
    );
    Ok(text)
}

/// A YAML double-quoted scalar (a JSON string is one).
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_inventory_reaches_its_nodes_through_node_shells_and_restarts_them_with_docker() {
        let nodes = ["calico-control-plane", "calico-worker", "calico-worker2"].map(String::from);
        let text = inventory("calico", &nodes, None).unwrap();
        let parsed =
            crate::inventory::Inventory::parse(&text, Path::new("kind.yaml")).expect("it loads");
        assert_eq!(parsed.cluster.context.as_deref(), Some("kind-calico"));
        assert!(parsed.uses_node_shell());
        assert_eq!(parsed.node_names(), nodes);
        assert!(parsed.node("calico-control-plane").unwrap().protected);
        assert!(!parsed.node("calico-worker").unwrap().protected);
        assert_eq!(
            parsed.reboot.command_for("calico-worker2"),
            "docker restart calico-worker2"
        );
        assert_eq!(parsed.reboot.runs_on, crate::inventory::RunsOn::Local);
        assert_eq!(
            parsed.reboot.node_kind,
            crate::inventory::NodeKind::Container
        );
        assert!(!text.contains("host:"), "no addresses: {text}");
    }

    #[test]
    fn a_kubeconfig_that_is_not_a_file_is_refused_before_it_is_read() {
        let error = check_context("calico", Some(Path::new("/dev/zero"))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/dev/zero: not a regular file (a character device); give the path of the file itself"
        );
    }

    #[test]
    fn a_name_kind_would_never_list_is_not_written() {
        let error = inventory("c", &["worker; reboot".to_string()], None).unwrap_err();
        assert!(matches!(error, KindError::BadNodeName { .. }), "{error}");
    }
}
