//! Everything postflight asks of the Kubernetes API, through kube-rs: nodes and their
//! boot IDs, the calico-node pods, pod logs, probe pods, exec. Waiting is done with
//! kube-runtime watchers — a wait is a condition over the watched objects, re-evaluated
//! on every event — and the watch rides out API outages with kube-runtime's backoff.
//! Nothing here adds a deadline: the caller owns it (see `gate`).

pub mod conditions;
pub mod drain;
pub mod lease;
#[cfg(test)]
pub(crate) mod mock;
pub mod probes;

use crate::checks::ErrorKind;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, AttachParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::Condition;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot load the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action}: {reason}")]
    Exec { action: String, reason: String },
    /// The API server did not answer at all, or refused who we are.
    #[error("cannot reach the API server {server}: {cause}")]
    Unreachable { server: String, cause: String },
    /// A wait the API server refused in a way no retry can fix.
    #[error("{action}: the API server answered {code} ({reason}); waiting cannot change that")]
    Refused {
        action: String,
        code: u16,
        reason: String,
    },
}

impl ClusterError {
    /// What kind of trouble this is, for the reports.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClusterError::Kubeconfig { .. }
            | ClusterError::Client(_)
            | ClusterError::Exec { .. } => ErrorKind::Error,
            ClusterError::Api { source, .. } => match source {
                kube::Error::Api(status) => ErrorKind::of_status(status.code),
                kube::Error::HyperError(_) | kube::Error::Service(_) => ErrorKind::Unreachable,
                _ => ErrorKind::Error,
            },
            ClusterError::Unreachable { cause, .. } if cause.starts_with("401") => {
                ErrorKind::Forbidden
            }
            ClusterError::Unreachable { .. } => ErrorKind::Unreachable,
            ClusterError::Refused { code, .. } => ErrorKind::of_status(*code),
        }
    }
}

/// The most of a log tail read from the API server; a container can log lines of any
/// length.
const MAX_LOG_READ_BYTES: u64 = 1024 * 1024;

/// How long to wait before asking again whether a re-provisioned permission is back: the
/// RBAC manifest creates a namespace's Role a moment after the namespace itself.
const PERMISSION_RECHECK_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Why a request never got an answer, as an operator would say it: the innermost cause
/// of the error chain (refused, timed out, DNS, TLS), or the server's refusal.
pub fn unreachable_cause(error: &kube::Error) -> String {
    if let kube::Error::Api(status) = error {
        return match status.code {
            401 => format!(
                "401 Unauthorized: the credentials were refused ({})",
                status.message
            ),
            code => format!("{code}: {}", status.message),
        };
    }
    let mut chain: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "connection timed out".into(),
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    return format!("no route to the server ({io})")
                }
                _ => {}
            }
        }
        chain.push(cause.to_string());
        current = cause.source();
    }
    let text = chain.join(": ").to_lowercase();
    if text.contains("dns error") || text.contains("failed to lookup address") {
        "DNS lookup failed".into()
    } else if text.contains("certificate") || text.contains("tls") {
        format!("TLS: {}", chain.last().cloned().unwrap_or_default())
    } else if text.contains("elapsed") || text.contains("timed out") || text.contains("timeout") {
        "connection timed out".into()
    } else {
        chain.last().cloned().unwrap_or_else(|| error.to_string())
    }
}

/// The status of a watch error that waiting cannot fix — 401 (who are you?), 403 (not
/// allowed) or 404 (no such resource) — with what the server said. Everything else (an
/// outage, 410 Gone, a 5xx) is retried by the watcher with backoff.
pub fn final_refusal(error: &watcher::Error) -> Option<(u16, String)> {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.as_ref(),
        watcher::Error::WatchError(status) => status.as_ref(),
        _ => return None,
    };
    matches!(status.code, 401 | 403 | 404).then(|| (status.code, status.message.clone()))
}

impl Cluster {
    /// Turns a watch error into the error that ends a wait, or logs it as retried.
    ///
    /// A 401, 403 or 404 ends the wait, except from an API server that is still
    /// starting: until its authorizer's caches are filled it refuses what it will allow
    /// a moment later, so while `/readyz` is not ok the refusal is retried like an
    /// outage. (Clients behind a load balancer never meet such a server; clients of a
    /// single control-plane node, which restarts in place, do.)
    ///
    /// # Errors
    /// [`ClusterError::Refused`], naming `action`, the code and what the server said.
    pub async fn end_wait_on_refusal(
        &self,
        action: &str,
        error: &watcher::Error,
    ) -> Result<(), ClusterError> {
        match final_refusal(error) {
            Some((code, reason)) if self.serving().await => Err(ClusterError::Refused {
                action: action.into(),
                code,
                reason,
            }),
            Some((code, _)) => {
                tracing::warn!(
                    "{action}: {code} from an API server that is still starting, retrying"
                );
                Ok(())
            }
            None => {
                tracing::warn!("{action}: watch interrupted, retrying: {error}");
                Ok(())
            }
        }
    }

    /// Whether the API server says it is ready (`/readyz`, readable by anyone
    /// authenticated).
    pub async fn serving(&self) -> bool {
        let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
            return false;
        };
        matches!(self.client.request_text(request).await, Ok(text) if text.trim() == "ok")
    }
}

pub(crate) fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
    let action = action.into();
    move |source| ClusterError::Api { action, source }
}

/// The label every object postflight creates carries, so that it finds and deletes its
/// own objects and never touches anybody else's.
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "postflight");

#[derive(Clone)]
pub struct Cluster {
    /// The API server's URL, as the kubeconfig names it, for errors a user acts on.
    server: String,
    /// The kubeconfig context in use, `in-cluster` for a pod's service account.
    context: Option<String>,
    client: Client,
    /// The same API without kube-rs's built-in retry of 429/503/504: for calls whose
    /// refusal is the answer (an eviction a disruption budget forbids), where the gate
    /// must see the 429, say what it said, and own the retry and its deadline.
    client_without_retry: Client,
    /// Namespaces this connection has seen ready for postflight's pods: a run asks once,
    /// not before every batch of pods. Held while one is being ensured, so two batches
    /// started together ask once between them. A new run connects anew and asks again.
    ensured_namespaces: std::sync::Arc<tokio::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Output of a command run in a container through the exec API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl Cluster {
    /// Connects with an explicit kubeconfig and context, or the usual rules (KUBECONFIG,
    /// ~/.kube/config, in-cluster) when none is given.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
    ) -> Result<Self, ClusterError> {
        let options = KubeConfigOptions {
            context: context.map(String::from),
            ..Default::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let refused = |reason: String| ClusterError::Kubeconfig {
                    path: path.display().to_string(),
                    reason,
                };
                // Bounded first: kube reads whatever the path names, /dev/zero included.
                crate::local_file::read(path, "the kubeconfig")
                    .map_err(|e| refused(e.problem.to_string()))?;
                let file = Kubeconfig::read_from(path).map_err(|e| refused(e.to_string()))?;
                check_named_files(&file, context).map_err(refused)?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| refused(e.to_string()))?
            }
            None if context.is_some() => {
                check_default_kubeconfigs(context)?;
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| ClusterError::Kubeconfig {
                        path: "(default)".into(),
                        reason: e.to_string(),
                    })?
            }
            None => {
                check_default_kubeconfigs(context)?;
                Config::infer()
                    .await
                    .map_err(|e| ClusterError::Kubeconfig {
                        path: "(default)".into(),
                        reason: e.to_string(),
                    })?
            }
        };
        let server = config.cluster_url.to_string();
        let context = match (context, kubeconfig) {
            (Some(context), _) => Some(context.to_string()),
            (None, Some(path)) => Kubeconfig::read_from(path)
                .ok()
                .and_then(|file| file.current_context),
            // As Config::infer found it: a kubeconfig first, else the pod's own account.
            (None, None) => match Kubeconfig::read() {
                Ok(file) => file.current_context,
                Err(_) => Some("in-cluster".into()),
            },
        };
        // Before any client is built: kube-client panics on a token it cannot send.
        check_credentials(&config.auth_info).map_err(|reason| ClusterError::Kubeconfig {
            path: kubeconfig.map_or("(default)".into(), |p| p.display().to_string()),
            reason: match &context {
                Some(context) => format!("context {context}: {reason}"),
                None => reason,
            },
        })?;
        let mut without_retry = config.clone();
        without_retry.default_retry = false;
        let client = Client::try_from(config).map_err(|e| ClusterError::Client(e.to_string()))?;
        let client_without_retry =
            Client::try_from(without_retry).map_err(|e| ClusterError::Client(e.to_string()))?;
        Ok(Cluster {
            server,
            context,
            client,
            client_without_retry,
            ensured_namespaces: Default::default(),
        })
    }

    /// A cluster reached through a client built elsewhere: a program embedding postflight
    /// with its own client, or a test with a mocked API server.
    pub fn from_client(client: Client, server: &str) -> Self {
        Cluster {
            server: server.into(),
            context: None,
            client_without_retry: client.clone(),
            ensured_namespaces: Default::default(),
            client,
        }
    }

    /// The API server's URL, as the kubeconfig names it.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kubeconfig context in use, if one is known.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Asks the API server which of `accesses` this identity lacks. One
    /// SelfSubjectRulesReview per namespace the accesses name, and one for what is
    /// cluster-wide, list what the identity may do; an access those rules grant is had.
    /// Whatever they do not grant is asked about on its own with a
    /// SelfSubjectAccessReview, which is authoritative (rules reviews may be incomplete
    /// under other authorizers than RBAC, and never say no on their own). So a run with
    /// the permissions it needs makes a few requests instead of one per access.
    ///
    /// # Errors
    /// A review could not be made (the API is unreachable, or refuses reviews).
    pub async fn missing_access(
        &self,
        accesses: &[crate::rbac::Access],
    ) -> Result<Vec<crate::rbac::Access>, ClusterError> {
        let mut scopes: Vec<Option<&str>> =
            accesses.iter().map(|a| a.namespace.as_deref()).collect();
        scopes.sort();
        scopes.dedup();
        let reviews = scopes.iter().map(|scope| async move {
            let rules = self.rules_review(*scope).await?;
            Ok::<_, ClusterError>((*scope, rules))
        });
        let mut granted_rules = BTreeMap::new();
        for review in futures::future::join_all(reviews).await {
            let (scope, rules) = review?;
            granted_rules.insert(scope, rules);
        }
        let unproven: Vec<&crate::rbac::Access> = accesses
            .iter()
            .filter(|access| {
                !granted_rules
                    .get(&access.namespace.as_deref())
                    .is_some_and(|rules| crate::rbac::rules_grant(rules, access))
            })
            .collect();
        let answers = futures::future::join_all(unproven.into_iter().map(|access| async move {
            let allowed = self.access_review(access).await?;
            Ok::<_, ClusterError>((!allowed).then(|| access.clone()))
        }))
        .await;
        let mut missing = Vec::new();
        for answer in answers {
            missing.extend(answer?);
        }
        Ok(missing)
    }

    /// The rules that grant this identity anything in `namespace`, or, for `None`,
    /// cluster-wide: asked in a namespace that cannot exist (a name longer than a
    /// namespace may be), where no RoleBinding can add to what ClusterRoleBindings
    /// grant everywhere.
    async fn rules_review(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<k8s_openapi::api::authorization::v1::ResourceRule>, ClusterError> {
        use k8s_openapi::api::authorization::v1::{
            SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
        };
        const NO_NAMESPACE: &str =
            "postflight-cluster-wide-rules-only-no-namespace-can-have-this-name-it-is-64-chars";
        let api = Api::<SelfSubjectRulesReview>::all(self.client.clone());
        let review = SelfSubjectRulesReview {
            spec: SelfSubjectRulesReviewSpec {
                namespace: Some(namespace.unwrap_or(NO_NAMESPACE).to_string()),
            },
            ..Default::default()
        };
        let place = namespace.map_or("cluster-wide".to_string(), |ns| {
            format!("in namespace {ns}")
        });
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(api_error(format!(
                "asking the API server what postflight may do {place}"
            )))?;
        Ok(answer
            .status
            .map(|status| status.resource_rules)
            .unwrap_or_default())
    }

    /// Whether this identity has one access: a SelfSubjectAccessReview.
    async fn access_review(&self, access: &crate::rbac::Access) -> Result<bool, ClusterError> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let api = Api::<SelfSubjectAccessReview>::all(self.client.clone());
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.clone()),
                    group: Some(access.group.clone()),
                    resource: Some(access.resource.clone()),
                    subresource: access.subresource.clone(),
                    namespace: access.namespace.clone(),
                    name: access.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(api_error(format!(
                "asking the API server whether postflight may {}",
                access.describe()
            )))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// Whether the API answers at all (a discovery call).
    /// Asks the API server for its version: whether it answers, and accepts who we are.
    ///
    /// # Errors
    /// [`ClusterError::Unreachable`], with the server's URL and the cause in a word or
    /// two (refused, timed out, DNS, TLS, 401).
    pub async fn ping(&self) -> Result<String, ClusterError> {
        let version =
            self.client
                .apiserver_version()
                .await
                .map_err(|error| ClusterError::Unreachable {
                    server: self.server.clone(),
                    cause: unreachable_cause(&error),
                })?;
        Ok(version.git_version)
    }

    pub async fn node(&self, name: &str) -> Result<Node, ClusterError> {
        Api::<Node>::all(self.client.clone())
            .get(name)
            .await
            .map_err(api_error(format!("reading node {name}")))
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, ClusterError> {
        Ok(Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(api_error("listing nodes"))?
            .items)
    }

    /// The DaemonSets named `name`, in `namespace` or in every namespace: where and as
    /// whom calico-node runs.
    pub async fn daemonsets_named(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<k8s_openapi::api::apps::v1::DaemonSet>, ClusterError> {
        let api = match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        let place = namespace.map_or("every namespace".to_string(), |ns| {
            format!("namespace {ns}")
        });
        Ok(api
            .list(&params)
            .await
            .map_err(api_error(format!(
                "listing DaemonSets named {name} in {place}"
            )))?
            .items)
    }

    /// Watches objects selected by `config` until `decide` returns a value, evaluating it
    /// on the current set of objects after every event. Outages and 410 Gone are retried
    /// with kube-runtime's default backoff; the caller bounds the wait with a timeout.
    ///
    /// # Errors
    /// The API server refused the watch with 401, 403 or 404 (`action` says what was
    /// being waited for).
    pub async fn watch_until<K, T>(
        &self,
        action: &str,
        api: Api<K>,
        config: watcher::Config,
        mut decide: impl FnMut(&[K]) -> Option<T>,
    ) -> Result<T, ClusterError>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let mut objects: BTreeMap<String, K> = BTreeMap::new();
        let mut initial: BTreeMap<String, K> = BTreeMap::new();
        let mut stream = watcher(api, config).default_backoff().boxed();
        let key = |o: &K| {
            format!(
                "{}/{}",
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default()
            )
        };
        loop {
            match stream.next().await {
                // A (re)list starts: nothing is decided until it is complete, or an empty
                // or half-read list would pass for the cluster's state.
                Some(Ok(watcher::Event::Init)) => {
                    initial.clear();
                    continue;
                }
                Some(Ok(watcher::Event::InitApply(object))) => {
                    initial.insert(key(&object), object);
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => objects = std::mem::take(&mut initial),
                Some(Ok(watcher::Event::Apply(object))) => {
                    objects.insert(key(&object), object);
                }
                Some(Ok(watcher::Event::Delete(object))) => {
                    objects.remove(&key(&object));
                }
                Some(Err(error)) => {
                    self.end_wait_on_refusal(action, &error).await?;
                    continue;
                }
                None => std::future::pending::<()>().await,
            }
            let current: Vec<K> = objects.values().cloned().collect();
            if let Some(result) = decide(&current) {
                return Ok(result);
            }
        }
    }

    /// Waits until the object `name` meets `condition` (it is `None` when the object does
    /// not exist), on a watch of that one object, and returns it as it was then.
    /// Outages are ridden out; 401, 403 and 404 end the wait.
    ///
    /// # Caveats
    /// No deadline of its own: wrap it in [`tokio::time::timeout`].
    pub async fn await_object<K>(
        &self,
        action: &str,
        api: Api<K>,
        name: &str,
        condition: impl Condition<K>,
    ) -> Result<Option<K>, ClusterError>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        self.watch_until(action, api, config, |objects| {
            let object = objects.first();
            condition.matches_object(object).then(|| object.cloned())
        })
        .await
    }

    /// Watches one node until `decide` says so.
    pub async fn watch_node<T>(
        &self,
        name: &str,
        decide: impl FnMut(Option<&Node>) -> Option<T>,
    ) -> Result<T, ClusterError> {
        let mut decide = decide;
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        self.watch_until(
            &format!("watching node {name}"),
            Api::<Node>::all(self.client.clone()),
            config,
            move |nodes| decide(nodes.first()),
        )
        .await
    }

    /// Waits until the node matches `condition`, and returns what it looked like then.
    /// `last_seen` is kept current on every event, so a caller whose deadline expires can
    /// say what the node looked like last.
    ///
    /// # Caveats
    /// No deadline of its own: wrap it in [`tokio::time::timeout`].
    pub async fn wait_for_node(
        &self,
        name: &str,
        condition: impl Condition<Node>,
        last_seen: &std::sync::Mutex<Option<Node>>,
    ) -> Result<Node, ClusterError> {
        self.watch_node(name, |node| {
            *last_seen.lock().expect("last_seen lock") = node.cloned();
            node.filter(|node| condition.matches_object(Some(node)))
                .cloned()
        })
        .await
    }

    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Pods matching a label selector on one node.
    pub async fn pods_on_node(
        &self,
        namespace: &str,
        selector: &str,
        node: &str,
    ) -> Result<Vec<Pod>, ClusterError> {
        let params = ListParams::default()
            .labels(selector)
            .fields(&format!("spec.nodeName={node}"));
        Ok(self
            .pods(namespace)
            .list(&params)
            .await
            .map_err(api_error(format!("listing pods {selector} on {node}")))?
            .items)
    }

    pub async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        previous: bool,
        tail_lines: i64,
    ) -> Result<String, ClusterError> {
        let params = LogParams {
            container: container.map(String::from),
            previous,
            tail_lines: Some(tail_lines),
            ..Default::default()
        };
        let which = if previous { "previous" } else { "current" };
        let action = format!("reading the {which} log of {namespace}/{pod}");
        // As bytes: a container may log anything, and invalid UTF-8 must not cost the
        // FATAL line next to it. Bounded, keeping the newest end, where it is.
        let stream = self
            .pods(namespace)
            .log_stream(pod, &params)
            .await
            .map_err(api_error(action.clone()))?;
        let mut bytes = Vec::new();
        futures::AsyncReadExt::read_to_end(
            &mut futures::AsyncReadExt::take(stream, MAX_LOG_READ_BYTES),
            &mut bytes,
        )
        .await
        .map_err(|e| ClusterError::Exec {
            action,
            reason: e.to_string(),
        })?;
        Ok(crate::hostile::tail(
            &crate::hostile::lossy(bytes),
            crate::hostile::MAX_EVIDENCE_BYTES,
        )
        .into_owned())
    }

    /// Makes sure the probe namespace can take new pods. A namespace still Terminating
    /// (someone deleted it; a real API server refuses new pods in it) is waited out. A
    /// missing one is created, labelled as postflight's and for Pod Security
    /// `restricted` (which the probe pods meet), when this identity may. A
    /// least-privilege identity may not: its namespace and its Role in it come from the
    /// RBAC manifest (`postflight rbac`), so it waits for them to be provisioned again
    /// (GitOps, a pipeline step) and for its permission to create pods there to be back.
    /// postflight never deletes a namespace. The caller owns the deadline.
    ///
    /// # Errors
    /// The namespace cannot be read, or created for a reason other than a refusal, or a
    /// wait failed.
    /// Forgets that `name` was made ready: the next `ensure_namespace` looks again (it
    /// may have been deleted since).
    pub async fn forget_namespace(&self, name: &str) {
        self.ensured_namespaces.lock().await.remove(name);
    }

    pub async fn ensure_namespace(&self, name: &str) -> Result<(), ClusterError> {
        let mut ensured = self.ensured_namespaces.lock().await;
        if ensured.contains(name) {
            return Ok(());
        }
        self.make_namespace_ready(name).await?;
        ensured.insert(name.to_string());
        Ok(())
    }

    async fn make_namespace_ready(&self, name: &str) -> Result<(), ClusterError> {
        let api = Api::<Namespace>::all(self.client.clone());
        if let Some(existing) = api
            .get_opt(name)
            .await
            .map_err(api_error(format!("reading namespace {name}")))?
        {
            if existing.metadata.deletion_timestamp.is_none() {
                return Ok(());
            }
            let uid = existing.metadata.uid.clone().unwrap_or_default();
            self.await_object(
                &format!("waiting for the Terminating namespace {name} to go"),
                api.clone(),
                name,
                conditions::is_gone(&uid),
            )
            .await?;
        }
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.into());
        namespace.metadata.labels = Some(
            [
                (MANAGED_BY_LABEL.0, MANAGED_BY_LABEL.1),
                ("pod-security.kubernetes.io/enforce", "restricted"),
                ("pod-security.kubernetes.io/enforce-version", "latest"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        );
        match api.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 403 => {
                self.await_provisioned_namespace(name).await
            }
            Err(e) => Err(api_error(format!(
                "creating the missing probe namespace {name} (provision it with the RBAC manifest: postflight rbac | kubectl apply -f -)"
            ))(e)),
        }
    }

    /// Waits for a namespace postflight may not create to be provisioned again, and for
    /// the Role in it that lets postflight create probe pods. RBAC offers nothing to
    /// watch for a permission, so that part asks the API server again after a pause.
    async fn await_provisioned_namespace(&self, name: &str) -> Result<(), ClusterError> {
        let api = Api::<Namespace>::all(self.client.clone());
        self.await_object(
            &format!("waiting for the probe namespace {name} to be provisioned again"),
            api,
            name,
            conditions::is_namespace_active(),
        )
        .await?;
        let create_pods = crate::rbac::Access {
            verb: "create".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: None,
            namespace: Some(name.into()),
            name: None,
        };
        while !self
            .missing_access(std::slice::from_ref(&create_pods))
            .await?
            .is_empty()
        {
            tokio::time::sleep(PERMISSION_RECHECK_PAUSE).await;
        }
        Ok(())
    }

    /// Deletes one pod with `grace_seconds` of grace; one already gone is no error.
    ///
    /// # Errors
    /// The API refuses the deletion.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        grace_seconds: u32,
    ) -> Result<(), ClusterError> {
        let params = kube::api::DeleteParams::default().grace_period(grace_seconds);
        match self.pods(namespace).delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(api_error(format!("deleting pod {namespace}/{name}"))(error)),
        }
    }

    pub async fn create_pod(&self, pod: &Pod) -> Result<Pod, ClusterError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.pods(&namespace)
            .create(&PostParams::default(), pod)
            .await
            .map_err(api_error(format!("creating pod {namespace}/{name}")))
    }

    /// Runs a command in a container through the exec API (WebSocket) and collects its
    /// output and exit code.
    pub async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        argv: &[String],
    ) -> Result<ExecOutput, ClusterError> {
        let action = format!("exec in {namespace}/{pod}: {}", argv.join(" "));
        let params = AttachParams::default()
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut process = self
            .pods(namespace)
            .exec(pod, argv.to_vec(), &params)
            .await
            .map_err(api_error(action.clone()))?;
        let stdout_reader = process.stdout().ok_or_else(|| ClusterError::Exec {
            action: action.clone(),
            reason: "no stdout".into(),
        })?;
        let stderr_reader = process.stderr().ok_or_else(|| ClusterError::Exec {
            action: action.clone(),
            reason: "no stderr".into(),
        })?;
        let status = process.take_status().ok_or_else(|| ClusterError::Exec {
            action: action.clone(),
            reason: "no status channel".into(),
        })?;
        // As bytes, kept lossily and capped as they are read: what a probe image or a
        // node prints is not ours to trust, nor how much of it there is.
        let limit = crate::hostile::MAX_STREAM_BYTES;
        let (out, err) = tokio::join!(
            crate::host::read_capped(Some(stdout_reader), limit),
            crate::host::read_capped(Some(stderr_reader), limit)
        );
        let exec_error = |e: std::io::Error| ClusterError::Exec {
            action: action.clone(),
            reason: e.to_string(),
        };
        let (stdout, stderr) = (
            out.map_err(exec_error)?.into_text(),
            err.map_err(exec_error)?.into_text(),
        );
        let status = status.await;
        process.join().await.map_err(|e| ClusterError::Exec {
            action: action.clone(),
            reason: e.to_string(),
        })?;
        let exit_code = match status {
            Some(s) if s.status.as_deref() == Some("Success") => 0,
            Some(s) => s
                .details
                .and_then(|d| d.causes)
                .and_then(|causes| {
                    causes
                        .into_iter()
                        .find(|c| c.reason.as_deref() == Some("ExitCode"))
                })
                .and_then(|c| c.message)
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| ClusterError::Exec {
                    action: action.clone(),
                    reason: s.message.unwrap_or_else(|| "exec failed".into()),
                })?,
            None => {
                return Err(ClusterError::Exec {
                    action,
                    reason: "the exec stream ended without a status".into(),
                })
            }
        };
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }
}

/// The kubeconfig files kubectl would read without `--kubeconfig`: KUBECONFIG's, else
/// ~/.kube/config.
fn default_kubeconfig_paths() -> Vec<std::path::PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(value) if !value.is_empty() => std::env::split_paths(&value)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        _ => std::env::home_dir()
            .map(|home| vec![home.join(".kube").join("config")])
            .unwrap_or_default(),
    }
}

/// The default kubeconfig files, and the files their context names, are regular files of
/// a sane size (a missing one is kube's to report, or to fall back from).
fn check_default_kubeconfigs(context: Option<&str>) -> Result<(), ClusterError> {
    let refused = |reason: String| ClusterError::Kubeconfig {
        path: "(default)".into(),
        reason,
    };
    for path in default_kubeconfig_paths() {
        match crate::local_file::read(&path, "the kubeconfig") {
            Err(error) if !error.missing() => return Err(refused(error.to_string())),
            _ => {}
        }
    }
    match Kubeconfig::read() {
        Ok(file) => check_named_files(&file, context).map_err(refused),
        Err(_) => Ok(()),
    }
}

/// The files a kubeconfig's context names, which building its client reads whole: its
/// cluster's certificate authority, its user's client certificate and key, and its
/// tokenFile. Each must be a regular file of a sane size.
///
/// # Errors
/// One is not: which, and why.
fn check_named_files(file: &Kubeconfig, context: Option<&str>) -> Result<(), String> {
    let Some(name) = context.or(file.current_context.as_deref()) else {
        return Ok(());
    };
    // A context that is not there is kube's to report.
    let Some(chosen) = file
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
    else {
        return Ok(());
    };
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == chosen.cluster)
        .and_then(|c| c.cluster.as_ref());
    let user = chosen
        .user
        .as_ref()
        .and_then(|user| file.auth_infos.iter().find(|a| &a.name == user))
        .and_then(|a| a.auth_info.as_ref());
    let named = [
        (
            "its certificate-authority",
            cluster.and_then(|c| c.certificate_authority.as_deref()),
        ),
        (
            "its client-certificate",
            user.and_then(|u| u.client_certificate.as_deref()),
        ),
        ("its client-key", user.and_then(|u| u.client_key.as_deref())),
        ("its tokenFile", user.and_then(|u| u.token_file.as_deref())),
    ];
    for (what, path) in named {
        if let Some(path) = path {
            crate::local_file::read(Path::new(path), what).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Whether `token` can be sent as `Authorization: Bearer …`: no control character (ESC,
/// a newline, NUL) is allowed in an HTTP header.
fn sendable_token(token: &str) -> bool {
    http::HeaderValue::try_from(format!("Bearer {token}")).is_ok()
}

/// The user's token, inline or in its tokenFile, can be sent in a header. kube-client
/// panics on an inline one that cannot; a token file's is refused on every request. The
/// token is never repeated in the error.
///
/// # Errors
/// It cannot: where it is.
fn check_credentials(user: &kube::config::AuthInfo) -> Result<(), String> {
    use secrecy::ExposeSecret;
    const UNSENDABLE: &str = "holds a character that cannot be sent in an HTTP header (a control character such as ESC or a newline); write the token again without it";
    // The inline token wins over the file, as kube-client reads them.
    if let Some(token) = &user.token {
        return match sendable_token(token.expose_secret()) {
            true => Ok(()),
            false => Err(format!("the user's token {UNSENDABLE}")),
        };
    }
    if let Some(file) = &user.token_file {
        let token =
            crate::local_file::read(Path::new(file), "its tokenFile").map_err(|e| e.to_string())?;
        if !sendable_token(&String::from_utf8_lossy(&token)) {
            return Err(format!("its tokenFile {file} {UNSENDABLE}"));
        }
    }
    Ok(())
}

pub use conditions::{has_boot_id_other_than, has_reported_since, is_node_ready};

/// Node facts the checks read.
pub fn node_ready(node: &Node) -> bool {
    node_condition(node, "Ready").is_some_and(|c| c.status == "True")
}

/// Whether the node is cordoned (`spec.unschedulable`).
pub fn node_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

pub fn node_condition<'a>(
    node: &'a Node,
    kind: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

pub fn boot_id(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.boot_id.as_str())
}

/// "Ready=False (KubeletNotReady: PLEG is not healthy)" — the node's Ready condition as
/// an operator would want it quoted.
pub fn describe_ready_condition(node: &Node) -> String {
    match node_condition(node, "Ready") {
        Some(c) => format!(
            "Ready={} ({}: {})",
            c.status,
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default()
        ),
        None => "no Ready condition".into(),
    }
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    use mock::{mocked, status_json};

    /// A kubeconfig whose one user is `user` (YAML), in a directory of its own.
    fn kubeconfig_with(user: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://198.18.0.1:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    {user}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: admin}}\ncurrent-context: lab\n"
            ),
        )
        .unwrap();
        (dir, path)
    }

    async fn connect_error(path: &Path) -> String {
        match Cluster::connect(Some(path), None).await {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(error) => {
                assert!(
                    matches!(error, ClusterError::Kubeconfig { .. }),
                    "a usage error: {error}"
                );
                error.to_string()
            }
        }
    }

    #[tokio::test]
    async fn a_token_with_a_control_character_is_refused_not_a_panic_and_not_repeated() {
        let (_dir, path) = kubeconfig_with(r#"token: "SEKRIT\x1b[2Jtoken""#);
        let error = connect_error(&path).await;
        assert!(
            error.contains("context lab: the user's token holds a character that cannot be sent in an HTTP header"),
            "{error}"
        );
        assert!(
            !error.contains("SEKRIT"),
            "the token is never repeated: {error}"
        );
        let (_dir, good) = kubeconfig_with(r#"token: "SEKRITtoken""#);
        assert!(Cluster::connect(Some(&good), None).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_file_is_bounded_and_its_token_checked() {
        let (dir, path) = kubeconfig_with("tokenFile: /dev/zero");
        let error = connect_error(&path).await;
        assert!(
            error.contains("its tokenFile /dev/zero: not a regular file (a character device)"),
            "{error}"
        );
        std::fs::write(dir.path().join("token"), "SEKRIT\u{1b}x").unwrap();
        let (_other, path) = kubeconfig_with(&format!(
            "tokenFile: {}",
            dir.path().join("token").display()
        ));
        let error = connect_error(&path).await;
        assert!(
            error.contains("cannot be sent in an HTTP header"),
            "{error}"
        );
        assert!(!error.contains("SEKRIT"), "{error}");
    }

    #[tokio::test]
    async fn a_kubeconfig_that_is_not_a_regular_file_is_named_and_refused() {
        let error = connect_error(Path::new("/dev/zero")).await;
        assert_eq!(
            error,
            "cannot load the kubeconfig /dev/zero: not a regular file (a character device); give the path of the file itself"
        );
        let dir = tempfile::tempdir().unwrap();
        let error = connect_error(dir.path()).await;
        assert!(
            error.contains("not a regular file (a directory)"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_certificate_the_context_names_is_bounded_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://198.18.0.1:6443\n    certificate-authority: /dev/zero\nusers:\n- name: admin\n  user: {token: abc}\ncontexts:\n- name: lab\n  context: {cluster: lab, user: admin}\ncurrent-context: lab\n",
        )
        .unwrap();
        let error = connect_error(&path).await;
        assert!(
            error.contains("its certificate-authority /dev/zero: not a regular file"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_forbidden_watch_ends_the_wait_at_once_naming_the_refusal() {
        let cluster = mocked(|_, path| {
            match path {
            "/readyz" => (200, "ok".into()),
            _ => (
                403,
                status_json(403, "Forbidden", "nodes is forbidden: User \"system:serviceaccount:postflight:postflight\" cannot watch resource \"nodes\""),
            ),
        }
        });
        let last_seen = std::sync::Mutex::new(None);
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            cluster.wait_for_node("k8s-worker-03", is_node_ready(), &last_seen),
        )
        .await
        .expect("the refusal ends the wait, not the deadline");
        let error = waited.expect_err("a refusal");
        assert!(
            matches!(error, ClusterError::Refused { code: 403, .. }),
            "{error}"
        );
        assert_eq!(error.kind(), ErrorKind::Forbidden);
        let text = error.to_string();
        assert!(
            text.contains("watching node k8s-worker-03") && text.contains("cannot watch resource"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_refusal_from_a_server_still_starting_is_retried_not_final() {
        // /readyz is not ok yet: the 403 comes from an API server whose authorizer has not
        // synced, so the wait goes on (and here, with nothing else, reaches its deadline).
        let cluster = mocked(|_, path| match path {
            "/readyz" => (500, "[-]poststarthook/rbac/bootstrap-roles failed".into()),
            _ => (403, status_json(403, "Forbidden", "not yet")),
        });
        let last_seen = std::sync::Mutex::new(None);
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            cluster.wait_for_node("k8s-worker-03", is_node_ready(), &last_seen),
        )
        .await;
        assert!(waited.is_err(), "still waiting: {waited:?}");
    }

    /// What a rules review answers for an identity that may only read nodes.
    fn rules_reading_nodes() -> String {
        serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": "x"},
            "status": {"incomplete": false, "nonResourceRules": [], "resourceRules": [
                {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["nodes"]},
            ]},
        })
        .to_string()
    }

    #[tokio::test]
    async fn permissions_the_rules_grant_need_no_access_review_each() {
        let cluster = mocked(|method, path| match (method, path) {
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews") => {
                (201, rules_reading_nodes())
            }
            // Asked anything else, the test fails: the rules settled it.
            _ => (500, status_json(500, "InternalError", "not asked")),
        });
        let read_nodes = crate::rbac::Access {
            verb: "watch".into(),
            group: String::new(),
            resource: "nodes".into(),
            subresource: None,
            namespace: None,
            name: None,
        };
        let missing = cluster
            .missing_access(std::slice::from_ref(&read_nodes))
            .await
            .unwrap();
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[tokio::test]
    async fn a_missing_permission_is_found_by_asking_the_api_server() {
        let cluster = mocked(|method, path| match (method, path) {
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews") => {
                (201, rules_reading_nodes())
            }
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => (
                201,
                serde_json::json!({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": {}},
                    "status": {"allowed": false},
                })
                .to_string(),
            ),
            _ => (404, status_json(404, "NotFound", "no")),
        });
        let access = crate::rbac::Access {
            verb: "create".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: Some("eviction".into()),
            namespace: None,
            name: None,
        };
        let missing = cluster
            .missing_access(std::slice::from_ref(&access))
            .await
            .unwrap();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].describe(), access.describe());
    }

    use rstest::rstest;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("said the server", "Reason").with_code(code))
    }

    #[rstest]
    #[case::unauthorized_list(
        watcher::Error::InitialListFailed(kube::Error::Api(status(401))),
        Some(401)
    )]
    #[case::forbidden_watch(
        watcher::Error::WatchStartFailed(kube::Error::Api(status(403))),
        Some(403)
    )]
    #[case::not_found_during_watch(watcher::Error::WatchError(status(404)), Some(404))]
    #[case::gone_is_a_relist(watcher::Error::WatchError(status(410)), None)]
    #[case::server_error_is_retried(
        watcher::Error::WatchFailed(kube::Error::Api(status(503))),
        None
    )]
    #[case::no_resource_version(watcher::Error::NoResourceVersion, None)]
    fn only_401_403_and_404_end_a_wait(#[case] error: watcher::Error, #[case] ends: Option<u16>) {
        let refusal = final_refusal(&error);
        assert_eq!(refusal.as_ref().map(|(code, _)| *code), ends);
        if let Some((code, reason)) = refusal {
            let text = ClusterError::Refused {
                action: "watching node n".into(),
                code,
                reason,
            }
            .to_string();
            assert!(
                text.starts_with("watching node n: the API server answered"),
                "{text}"
            );
            assert!(text.contains("said the server"), "{text}");
        }
    }
}
