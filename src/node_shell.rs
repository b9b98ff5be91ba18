//! The node-shell transport: a node's host reached through the Kubernetes API alone,
//! as `kubectl debug node/NAME --profile=sysadmin` reaches it. For each node a run needs,
//! one short-lived privileged pod bound to that node, in the host's PID, network and IPC
//! namespaces; each command is an exec into it that enters PID 1's namespaces with
//! `nsenter` and runs the command there, as root.
//!
//! This module owns those pods: their spec, starting one when a command first needs it,
//! starting another when a reboot took the first one down, and deleting them all by
//! their run label. What it runs is what [`crate::host::Transport`] asks for, so the
//! checks cannot tell it from SSH.

use crate::cluster::probes::RUN_LABEL;
use crate::cluster::{Cluster, ClusterError, MANAGED_BY_LABEL};
use crate::host::{BoxFuture, CommandOutput, HostError, RebootOutcome, ShellCommand, Transport};
use crate::inventory::NodeShellSettings;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::wait::Condition;
use std::time::Duration;

/// The value of `app.kubernetes.io/name` on every shell pod.
pub const SHELL_POD_APP: &str = "postflight-node-shell";

/// How long a shell pod's own process lives. A run that is killed outright (SIGKILL,
/// a lost machine) cannot delete its pods; they then end by themselves, so that no
/// privileged process stays on a node for longer than a run could need it.
pub const SHELL_POD_LIFETIME: Duration = Duration::from_secs(3600);

/// The command that enters the host's namespaces from a shell pod: those of PID 1, which
/// in a pod with the host's PID namespace is the node's init.
const ENTER_HOST: [&str; 9] = ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--"];

/// The name of a node's shell pod: run id, node, and how many came before it in this run
/// (one per boot of the node). Short enough to read in `kubectl get pods`; a hash of the
/// whole node name keeps two nodes whose names share a long prefix (or differ only in
/// `.` and `-`) apart, since one run starts shells on every node.
pub fn shell_pod_name(run_id: &str, node: &str, generation: usize) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut hasher);
    let hash = format!("{:06x}", hasher.finish() & 0xff_ffff);
    let generation = generation.to_string();
    let room =
        63usize.saturating_sub("pf-sh----".len() + run_id.len() + hash.len() + generation.len());
    let node: String = node.replace('.', "-").chars().take(room).collect();
    format!(
        "pf-sh-{run_id}-{}-{hash}-{generation}",
        node.trim_end_matches('-')
    )
}

/// The pod spec of a node shell: bound to the node by name (no scheduler, as
/// `kubectl debug node` does), privileged, in the host's PID, network and IPC
/// namespaces, with no service account token (nothing in it talks to the API), and a
/// process that ends by itself after [`SHELL_POD_LIFETIME`].
pub fn shell_pod(settings: &NodeShellSettings, run_id: &str, node: &str, name: &str) -> Pod {
    let (tolerations, pull_secrets) = crate::cluster::probes::placement(
        settings.tolerations.as_deref(),
        &settings.image_pull_secrets,
    );
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {
                MANAGED_BY_LABEL.0: MANAGED_BY_LABEL.1,
                RUN_LABEL: run_id,
                "app.kubernetes.io/name": SHELL_POD_APP,
            },
        },
        "spec": {
            "nodeName": node,
            "hostPID": true,
            "hostNetwork": true,
            "hostIPC": true,
            "tolerations": tolerations,
            "imagePullSecrets": pull_secrets,
            "restartPolicy": "Never",
            // Not 0, which would make every deletion a forced one: the API must not drop
            // the pod before the kubelet has stopped a privileged process.
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "containers": [{
                "name": "shell",
                "image": settings.image,
                "command": ["sleep", SHELL_POD_LIFETIME.as_secs().to_string()],
                "securityContext": {"privileged": true},
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                },
            }],
        },
    }))
    .expect("the shell pod spec is a valid Pod")
}

/// Why a shell pod will not run without someone changing something, in its status's
/// words; `None` while it may still start.
fn hopeless(pod: &Pod) -> Option<String> {
    crate::cluster::probes::hopeless(pod).or_else(|| brought_back(pod, None))
}

/// Why a shell pod is one the kubelet brought back by itself after its node restarted
/// (a container restarted, or running since before `restarted_at`): `restartPolicy:
/// Never` is there so that a privileged process never comes back on its own, so such a
/// pod is deleted, never entered. None for a pod as it was started.
pub fn brought_back(
    pod: &Pod,
    restarted_at: Option<k8s_openapi::jiff::Timestamp>,
) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    if let Some(restarted) = statuses.iter().find(|c| c.restart_count > 0) {
        return Some(format!(
            "the kubelet restarted its container {} times (its node restarted), though it is restartPolicy: Never",
            restarted.restart_count
        ));
    }
    let restarted_at = restarted_at?;
    statuses
        .iter()
        .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .find(|started| started.0 < restarted_at)
        .map(|started| {
            format!(
                "its container runs since {}, before its node restarted at {restarted_at}",
                started.0
            )
        })
}

/// The shell pod is running its process (it can be entered), or will never: the wait
/// for it ends either way, and [`hopeless`] tells which.
pub fn is_shell_running_or_hopeless() -> impl kube::runtime::wait::Condition<Pod> {
    |pod: Option<&Pod>| {
        pod.is_some_and(|pod| {
            hopeless(pod).is_some()
                || pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref())
                    .is_some_and(|state| state.running.is_some())
        })
    }
}

/// The node-shell transport to one node. Its pod is started by the first command and
/// kept for the rest of the run; after a reboot took it down, the next command starts
/// another.
pub struct NodeShellTransport {
    cluster: Cluster,
    settings: NodeShellSettings,
    run_id: String,
    node: String,
    /// How long one command may take (the inventory's `timeouts.ssh`, which bounds a
    /// command whatever carries it).
    timeout: Duration,
    /// How long a shell pod may take to run: its image may have to be pulled
    /// (`timeouts.probe_ready`, as for the probe pods).
    start_timeout: Duration,
    /// The pod commands go to, once started, and how many were started in this run.
    pod: tokio::sync::Mutex<ShellPod>,
}

#[derive(Default)]
struct ShellPod {
    running: Option<String>,
    started: usize,
    /// When this run last restarted the node, as far as it knows.
    restarted_at: Option<k8s_openapi::jiff::Timestamp>,
}

impl NodeShellTransport {
    pub fn new(
        cluster: Cluster,
        settings: NodeShellSettings,
        run_id: &str,
        node: &str,
        timeout: Duration,
        start_timeout: Duration,
    ) -> Self {
        NodeShellTransport {
            cluster,
            settings,
            run_id: run_id.to_string(),
            node: node.to_string(),
            timeout,
            start_timeout,
            pod: Default::default(),
        }
    }

    fn error(&self, action: impl Into<String>, reason: impl ToString) -> HostError {
        HostError::NodeShell {
            node: self.node.clone(),
            action: action.into(),
            reason: reason.to_string(),
            before_sending: true,
        }
    }

    /// The running shell pod's name, starting one first if there is none.
    async fn running_pod(&self) -> Result<String, HostError> {
        let mut pod = self.pod.lock().await;
        if let Some(name) = &pod.running {
            return Ok(name.clone());
        }
        let name = shell_pod_name(&self.run_id, &self.node, pod.started);
        pod.started += 1;
        let namespace = &self.settings.namespace;
        let action = format!("starting shell pod {namespace}/{name}");
        let spec = shell_pod(&self.settings, &self.run_id, &self.node, &name);
        self.cluster
            .create_pod(&spec)
            .await
            .map_err(|e| self.error(&action, shell_pod_refusal(&e, namespace)))?;
        let waiting = format!("waiting for shell pod {namespace}/{name} to run");
        let wait = self.cluster.await_object(
            &waiting,
            self.cluster.pods(namespace),
            &name,
            is_shell_running_or_hopeless(),
        );
        let why_not = match tokio::time::timeout(self.start_timeout, wait).await {
            Ok(Ok(started)) => started
                .as_ref()
                .and_then(hopeless)
                .map(|why| format!("it will not run: {why} (image {})", self.settings.image)),
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("not running within {:?}", self.start_timeout)),
        };
        if let Some(why_not) = why_not {
            // A shell that will not start is not left for the next command to add to.
            let _ = self
                .cluster
                .pods(namespace)
                .delete(&name, &DeleteParams::default().grace_period(1))
                .await;
            return Err(self.error(&action, why_not));
        }
        pod.running = Some(name.clone());
        Ok(name)
    }

    /// Forgets the current pod (a reboot ended it): the next command starts another.
    async fn forget_pod(&self) {
        self.pod.lock().await.running = None;
    }

    /// Forgets the pod a restart of the node ended, and deletes it: should the kubelet
    /// bring it back when the node boots, it is not left running.
    async fn forget_pod_after_restart(&self) {
        let old = {
            let mut pod = self.pod.lock().await;
            pod.restarted_at = Some(k8s_openapi::jiff::Timestamp::now());
            pod.running.take()
        };
        if let Some(old) = old {
            if let Err(error) = self
                .cluster
                .delete_pod(&self.settings.namespace, &old, 1)
                .await
            {
                tracing::warn!("deleting the shell pod a restart ended: {error}");
            }
        }
    }

    /// Whether the shell pod still runs its process: an exec that the API server or the
    /// kubelet refused may have met a pod that a restart of its node ended (a real
    /// kubelet answers 500 for a container it no longer has).
    async fn pod_still_runs(&self, pod: &str) -> bool {
        match self
            .cluster
            .pods(&self.settings.namespace)
            .get_opt(pod)
            .await
        {
            Ok(Some(found)) => {
                let restarted_at = self.pod.lock().await.restarted_at;
                if let Some(why) = brought_back(&found, restarted_at) {
                    tracing::warn!("deleting shell pod {pod}: {why}");
                    let _ = self
                        .cluster
                        .delete_pod(&self.settings.namespace, pod, 1)
                        .await;
                    return false;
                }
                is_shell_running_or_hopeless().matches_object(Some(&found))
                    && hopeless(&found).is_none()
            }
            Ok(None) => false,
            // Unknown: the exec's own error is what gets reported.
            Err(_) => true,
        }
    }

    /// Runs `command` in the host's namespaces through the shell pod. A pod that is gone
    /// (its node restarted it away) is replaced once.
    async fn exec(&self, command: &ShellCommand) -> Result<CommandOutput, HostError> {
        let line = command.render(None);
        let mut argv: Vec<String> = ENTER_HOST.iter().map(|w| w.to_string()).collect();
        argv.extend(["sh".to_string(), "-c".to_string(), line.clone()]);
        for attempt in 0..2 {
            let pod = self.running_pod().await?;
            let exec = self.cluster.exec(&self.settings.namespace, &pod, &argv);
            let result = match tokio::time::timeout(self.timeout, exec).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(HostError::Timeout {
                        node: self.node.clone(),
                        command: line,
                        timeout: self.timeout,
                    })
                }
            };
            match result {
                Ok(output) => {
                    return Ok(CommandOutput {
                        stdout: output.stdout,
                        stderr: output.stderr,
                        exit_status: output.exit_code,
                    })
                }
                Err(error)
                    if attempt == 0
                        && refused_before_running(&error)
                        && !self.pod_still_runs(&pod).await =>
                {
                    self.forget_pod().await
                }
                Err(error) => {
                    return Err(HostError::NodeShell {
                        node: self.node.clone(),
                        action: format!("`{line}` in shell pod {pod}"),
                        reason: error.to_string(),
                        before_sending: refused_before_running(&error),
                    })
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// The exec was refused before its process started: the API server or the kubelet
/// answered the upgrade with an error (no such pod or container, a forbidden exec, a
/// kubelet that cannot be reached), so the command never ran. Once the stream is up,
/// failures are `ClusterError::Exec`, and the command may have run.
fn refused_before_running(error: &ClusterError) -> bool {
    matches!(error, ClusterError::Api { .. })
}

/// What to tell the operator when the API refuses a shell pod: the namespace and its
/// permissions come from `postflight rbac`, Pod Security from the namespace's label.
fn shell_pod_refusal(error: &ClusterError, namespace: &str) -> String {
    let hint = match error {
        ClusterError::Api {
            source: kube::Error::Api(status),
            ..
        } => match status.code {
            404 => format!(" (the namespace {namespace} does not exist: provision it with `postflight rbac | kubectl apply -f -`)"),
            403 if status.message.contains("PodSecurity") => format!(
                " (namespace {namespace} must be labelled pod-security.kubernetes.io/enforce=privileged, as `postflight rbac` provisions it)"
            ),
            403 => " (grant what `postflight rbac` prints for the node-shell transport)".into(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    format!("{error}{hint}")
}

impl Transport for NodeShellTransport {
    fn run<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<CommandOutput, HostError>> {
        Box::pin(self.exec(command))
    }

    fn run_all<'a>(
        &'a self,
        commands: &'a [ShellCommand],
    ) -> BoxFuture<'a, Vec<Result<CommandOutput, HostError>>> {
        Box::pin(crate::host::run_batched(self, &self.node, commands))
    }

    fn node_restarted(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.forget_pod_after_restart())
    }

    fn reboot<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<RebootOutcome, HostError>> {
        Box::pin(async move {
            let outcome = match self.exec(command).await {
                Ok(output) if output.success() => Ok(RebootOutcome::Issued),
                Ok(output) => Ok(RebootOutcome::Refused(output)),
                // The reboot takes the shell pod with it: a stream cut once the command
                // was sent is the machine going down, as asked.
                Err(error) if !error.before_sending() => Ok(RebootOutcome::Issued),
                Err(error) => Err(error),
            };
            // Whatever came of it, this pod does not survive a reboot: the next command
            // starts one on the new boot.
            if matches!(outcome, Ok(RebootOutcome::Issued)) {
                self.forget_pod_after_restart().await;
            }
            outcome
        })
    }
}

impl Cluster {
    /// Deletes every shell pod of these runs, at once, with the one second of grace their
    /// spec gives: their process only sleeps, but a forced deletion would drop a pod from
    /// the API while its privileged process may still run on a node that cannot be
    /// reached.
    ///
    /// # Errors
    /// The API refuses the deletion.
    pub async fn delete_node_shells(
        &self,
        namespace: &str,
        run_ids: &[&str],
    ) -> Result<(), ClusterError> {
        self.delete_shells(namespace, run_ids, None).await
    }

    /// Deletes a run's shell pods on one node, as soon as the run is done with it: a
    /// sweep of many nodes does not keep a privileged pod on each until the last is read.
    ///
    /// # Errors
    /// The API refuses the deletion.
    pub async fn delete_node_shells_on(
        &self,
        namespace: &str,
        run_id: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        self.delete_shells(namespace, &[run_id], Some(node)).await
    }

    async fn delete_shells(
        &self,
        namespace: &str,
        run_ids: &[&str],
        node: Option<&str>,
    ) -> Result<(), ClusterError> {
        let selector = format!(
            "{RUN_LABEL} in ({}),app.kubernetes.io/name={SHELL_POD_APP}",
            run_ids.join(",")
        );
        let mut params = ListParams::default().labels(&selector);
        if let Some(node) = node {
            params = params.fields(&format!("spec.nodeName={node}"));
        }
        match self
            .pods(namespace)
            .delete_collection(&DeleteParams::default().grace_period(1), &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(crate::cluster::api_error(format!(
                "deleting the shell pods of run {} in {namespace}",
                run_ids.join(", ")
            ))(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_pod_is_privileged_in_the_hosts_namespaces_and_bound_to_its_node() {
        let settings = NodeShellSettings::default();
        let name = shell_pod_name("r1", "k8s-worker-03", 0);
        let pod = shell_pod(&settings, "r1", "k8s-worker-03", &name);
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.node_name.as_deref(), Some("k8s-worker-03"));
        assert_eq!(
            (spec.host_pid, spec.host_network, spec.host_ipc),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let container = &spec.containers[0];
        assert_eq!(
            container
                .security_context
                .as_ref()
                .and_then(|s| s.privileged),
            Some(true)
        );
        assert_eq!(
            container.command.as_deref(),
            Some(&["sleep".to_string(), "3600".to_string()][..])
        );
        assert_eq!(
            container.image.as_deref(),
            Some("docker.io/library/busybox:1.37.0")
        );
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels[RUN_LABEL], "r1");
        assert_eq!(labels["app.kubernetes.io/name"], SHELL_POD_APP);
        assert_eq!(
            pod.metadata.namespace.as_deref(),
            Some("postflight-node-shell")
        );
    }

    fn with_container(restart_count: i32, started_at: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pf-sh-r1-n-0"},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "shell", "image": "busybox", "imageID": "", "ready": true,
                "restartCount": restart_count,
                "state": {"running": {"startedAt": started_at}},
            }]},
        }))
        .unwrap()
    }

    #[rstest::rstest]
    #[case::as_started(0, "2026-11-26T10:05:00Z", None, false)]
    #[case::restarted_by_the_kubelet(1, "2026-11-26T10:05:00Z", None, true)]
    #[case::started_after_the_restart(
        0,
        "2026-11-26T10:05:00Z",
        Some("2026-11-26T10:00:00Z"),
        false
    )]
    #[case::running_since_before_the_restart(
        0,
        "2026-11-26T09:55:00Z",
        Some("2026-11-26T10:00:00Z"),
        true
    )]
    fn a_shell_pod_the_kubelet_brought_back_is_not_reused(
        #[case] restarts: i32,
        #[case] started: &str,
        #[case] node_restarted: Option<&str>,
        #[case] brought: bool,
    ) {
        let pod = with_container(restarts, started);
        let restarted_at = node_restarted.map(|t| t.parse().unwrap());
        assert_eq!(brought_back(&pod, restarted_at).is_some(), brought);
        if restarts > 0 {
            // The start wait ends on it, as on a pod that will never run, and it is
            // deleted rather than entered.
            assert!(hopeless(&pod).is_some_and(|why| why.contains("restartPolicy: Never")));
        }
    }

    #[test]
    fn shell_pod_names_fit_a_label_and_count_the_boots() {
        let long = "n".repeat(253);
        let name = shell_pod_name("0123abcd", &long, 12);
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-12"), "{name}");
        assert!(shell_pod_name("r1", "a.b", 0).starts_with("pf-sh-r1-a-b-"));
        // Names that read alike are still two pods.
        assert_ne!(
            shell_pod_name("r1", "a.b", 0),
            shell_pod_name("r1", "a-b", 0)
        );
        let prefix = "pool-".repeat(20);
        assert_ne!(
            shell_pod_name("r1", &format!("{prefix}1"), 0),
            shell_pod_name("r1", &format!("{prefix}2"), 0)
        );
    }

    #[test]
    fn commands_enter_the_node_init_namespaces() {
        assert_eq!(ENTER_HOST[..3], ["nsenter", "-t", "1"]);
        assert!(ENTER_HOST.contains(&"-m") && ENTER_HOST.contains(&"-n"));
    }
}
