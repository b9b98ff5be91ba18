//! A Kubernetes-compatible API server: the subset of the REST API that kube-rs and
//! kubectl use against a real cluster — discovery, CRUD with optimistic concurrency,
//! label and field selectors, watches with bookmarks and 410 Gone, server-side Tables,
//! pod logs, pod exec over the WebSocket channel protocols (v4 and v5), and eviction
//! through PodDisruptionBudgets — over TLS with bearer-token authentication.

pub mod exec;
pub mod resources;
pub mod selectors;
pub mod store;
pub mod tables;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use resources::Resource;
use selectors::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{ApiError, EventType, Store};

/// How often a watch that asked for bookmarks gets one. Kubernetes sends them about
/// once a minute; the lab is busier per second than most clusters, so more often.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// A watch without timeoutSeconds ends after this, as the real server's
/// --min-request-timeout (1800 s) randomised down; clients re-establish it.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// What the API server needs from the node side: how to run a command in a container and
/// where a container's log is. The lab's kubelets provide it.
pub trait PodRuntime: Send + Sync {
    fn exec_command(
        &self,
        pod: &Value,
        container: &str,
        argv: &[String],
    ) -> Result<tokio::process::Command, ApiError>;
    fn log_file(&self, pod: &Value, container: &str, previous: bool) -> Result<PathBuf, ApiError>;
}

pub struct ApiServer {
    pub store: Arc<Store>,
    token: String,
    runtime: Arc<dyn PodRuntime>,
    request_log: Mutex<std::fs::File>,
    /// While set, every request gets 503, as while the real API server restarts.
    pub paused: AtomicBool,
}

impl ApiServer {
    pub fn new(
        store: Arc<Store>,
        token: String,
        runtime: Arc<dyn PodRuntime>,
        request_log: std::fs::File,
    ) -> Arc<Self> {
        Arc::new(ApiServer {
            store,
            token,
            runtime,
            request_log: Mutex::new(request_log),
            paused: AtomicBool::new(false),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/pods/{name}/exec",
                axum::routing::any(exec::handle),
            )
            .fallback(handle)
            .layer(middleware::from_fn_with_state(
                self.clone(),
                authenticate_and_log,
            ))
            .with_state(self.clone())
    }
}

pub(crate) fn error_response(error: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.status(),
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn authenticate_and_log(
    State(server): State<Arc<ApiServer>>,
    request: Request,
    next: Next,
) -> Response {
    let line = format!("{} {}", request.method(), request.uri());
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let response = if server.paused.load(Ordering::SeqCst) {
        error_response(&ApiError::new(
            503,
            "ServiceUnavailable",
            "the lab API server is paused",
        ))
    } else if presented != Some(server.token.as_str()) {
        error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"))
    } else {
        next.run(request).await
    };
    if let Ok(mut log) = server.request_log.lock() {
        let _ = writeln!(
            log,
            "{} {line} {}",
            store::now_rfc3339(),
            response.status().as_u16()
        );
    }
    response
}

/// A request path, resolved against the served resources.
#[derive(Debug)]
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Discovery(Value),
    Resource(Target),
}

fn route(path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => {
            return Ok(Route::Discovery(json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-postflight-lab", "gitCommit": "lab",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "lab",
                "compiler": "rustc", "platform": "linux/amd64",
            })))
        }
        ["api"] => {
            return Ok(Route::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ))
        }
        ["apis"] => return Ok(Route::Discovery(resources::group_list())),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => {
            let (g, v) = resources::GROUPS
                .iter()
                .find(|(g, _)| g == group)
                .ok_or_else(not_found)?;
            return Ok(Route::Discovery(resources::group(g, v)));
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    if rest.is_empty() {
        return resources::resource_list(group, version)
            .map(Route::Discovery)
            .ok_or_else(not_found);
    }
    let namespaced_form = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some_and(|r| r.namespaced);
    let (namespace, rest) = if namespaced_form {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let resource = resources::find(group, version, rest[0]).ok_or_else(not_found)?;
    if rest.len() > 3 {
        return Err(not_found());
    }
    Ok(Route::Resource(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    }))
}

pub(crate) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn handle(
    State(server): State<Arc<ApiServer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(&server, &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn dispatch(
    server: &Arc<ApiServer>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = match route(uri.path())? {
        Route::Discovery(document) if method == Method::GET => {
            return Ok(json_response(StatusCode::OK, &document))
        }
        Route::Discovery(_) => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "discovery is read-only",
            ))
        }
        Route::Resource(target) => target,
    };
    let query = query_pairs(uri);
    let store = &server.store;
    let key = target.resource.key;
    let namespace = target.namespace.clone().unwrap_or_default();
    if target.resource.namespaced != target.namespace.is_some()
        && !(target.resource.namespaced && target.name.is_none() && *method == Method::GET)
    {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    };
    match (
        method.clone(),
        target.name.as_deref(),
        target.subresource.as_deref(),
    ) {
        (Method::GET, None, None) => {
            let labels = LabelSelector::parse(query_value(&query, "labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(query_value(&query, "fieldSelector").unwrap_or(""))?;
            if matches!(query_value(&query, "watch"), Some("true" | "1")) {
                return watch(
                    server,
                    target.resource,
                    target.namespace.clone(),
                    labels,
                    fields,
                    &query,
                );
            }
            let (items, revision) = store.list(key, target.namespace.as_deref());
            let items: Vec<Value> = items
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .collect();
            if wants_table(headers) {
                return Ok(json_response(
                    StatusCode::OK,
                    &tables::table(key, &items, revision),
                ));
            }
            let list = json!({
                "kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version(),
                "metadata": {"resourceVersion": revision.to_string()}, "items": items,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        (Method::GET, Some(name), None | Some("status")) => {
            let object = store
                .get(key, &namespace, name)
                .ok_or_else(|| ApiError::not_found(key.split('.').next().unwrap_or(key), name))?;
            if wants_table(headers) {
                return Ok(json_response(
                    StatusCode::OK,
                    &tables::table(key, &[object], store.revision()),
                ));
            }
            Ok(json_response(StatusCode::OK, &object))
        }
        (Method::GET, Some(name), Some("log")) if key == "pods" => {
            pod_log(server, &namespace, name, &query)
        }
        (Method::POST, None, None) => {
            let mut object = parse_body()?;
            if target.resource.namespaced {
                ensure_namespace(store, &namespace)?;
            }
            object["kind"] = json!(target.resource.kind);
            object["apiVersion"] = json!(target.resource.api_version());
            if key == "pods" {
                default_pod(&mut object);
            }
            if key == "namespaces" {
                object["status"] = json!({"phase": "Active"});
            }
            Ok(json_response(
                StatusCode::CREATED,
                &store.create(key, &namespace, object)?,
            ))
        }
        (Method::POST, Some(name), Some("eviction")) if key == "pods" => {
            evict(store, &namespace, name)
        }
        (Method::PUT, Some(name), None) => {
            let mut object = parse_body()?;
            object["kind"] = json!(target.resource.kind);
            object["apiVersion"] = json!(target.resource.api_version());
            Ok(json_response(
                StatusCode::OK,
                &store.replace(key, &namespace, name, object)?,
            ))
        }
        (Method::PUT, Some(name), Some("status")) => {
            let object = parse_body()?;
            let updated = store.update(key, &namespace, name, |current| {
                if let Some(expected) = store::revision_of(&object) {
                    if Some(expected) != store::revision_of(current) {
                        return Err(ApiError::conflict(key, name));
                    }
                }
                current["status"] = object["status"].clone();
                Ok(())
            })?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let patch = parse_body()?;
            if content_type.starts_with("application/apply-patch")
                && store.get(key, &namespace, name).is_none()
            {
                let mut object = patch;
                object["kind"] = json!(target.resource.kind);
                object["apiVersion"] = json!(target.resource.api_version());
                object["metadata"]["name"] = json!(name);
                return Ok(json_response(
                    StatusCode::CREATED,
                    &store.create(key, &namespace, object)?,
                ));
            }
            let status_only = sub == Some("status");
            let updated = store.update(key, &namespace, name, |current| {
                let mut next = current.clone();
                apply_patch(&mut next, &patch, &content_type)?;
                if let Some(expected) = store::revision_of(&patch) {
                    if Some(expected) != store::revision_of(current) {
                        return Err(ApiError::conflict(key, name));
                    }
                }
                if status_only {
                    current["status"] = next["status"].take();
                } else {
                    next["status"] = current["status"].clone();
                    *current = next;
                }
                Ok(())
            })?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Method::DELETE, Some(name), None) => {
            let deleted = delete(store, key, &namespace, name)?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        (Method::DELETE, None, None) => {
            let labels = LabelSelector::parse(query_value(&query, "labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(query_value(&query, "fieldSelector").unwrap_or(""))?;
            let (items, _) = store.list(key, target.namespace.as_deref());
            let mut deleted = Vec::new();
            for item in items
                .iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
            {
                if let Ok(gone) =
                    delete(store, key, store::namespace_of(item), store::name_of(item))
                {
                    deleted.push(gone);
                }
            }
            let list = json!({"kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version(), "metadata": {}, "items": deleted});
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", uri.path()),
        )),
    }
}

fn ensure_namespace(store: &Store, namespace: &str) -> Result<(), ApiError> {
    match store.get("namespaces", "", namespace) {
        Some(ns) if ns["metadata"]["deletionTimestamp"].is_string() => Err(ApiError::new(
            403,
            "Forbidden",
            format!("unable to create new content in namespace {namespace} because it is being terminated"),
        )),
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("namespaces", namespace)),
    }
}

/// The defaults the real API server's admission fills in and that clients read back.
fn default_pod(pod: &mut Value) {
    if pod["spec"]["restartPolicy"].is_null() {
        pod["spec"]["restartPolicy"] = json!("Always");
    }
    if pod["spec"]["terminationGracePeriodSeconds"].is_null() {
        pod["spec"]["terminationGracePeriodSeconds"] = json!(30);
    }
    pod["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
}

fn apply_patch(target: &mut Value, patch: &Value, content_type: &str) -> Result<(), ApiError> {
    if content_type.starts_with("application/json-patch+json") {
        let operations: json_patch::Patch = serde_json::from_value(patch.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
        json_patch::patch(target, &operations)
            .map_err(|e| ApiError::new(422, "Invalid", format!("JSON patch failed: {e}")))
    } else {
        // Merge patch; strategic merge and apply patches are treated as merge patches,
        // which is what they are for every field the lab's clients change (scalars and
        // maps: unschedulable, labels, annotations, lease spec).
        json_patch::merge(target, patch);
        Ok(())
    }
}

/// Deletes an object. Pods and namespaces go at once: the lab's kubelets and
/// namespace deletion react to the DELETED event, so no finalizer phase is modelled.
fn delete(
    store: &Store,
    key: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Value, ApiError> {
    if key == "namespaces" {
        store
            .get(key, "", name)
            .ok_or_else(|| ApiError::not_found(key, name))?;
        for resource in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            for object in store.list(resource.key, Some(name)).0 {
                let _ = store.delete(resource.key, name, store::name_of(&object));
            }
        }
    }
    store.delete(key, namespace, name)
}

fn pod_log(
    server: &ApiServer,
    namespace: &str,
    name: &str,
    query: &[(String, String)],
) -> Result<Response, ApiError> {
    let pod = server
        .store
        .get("pods", namespace, name)
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let container = match query_value(query, "container") {
        Some(c) => c.to_string(),
        None => pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let previous = matches!(query_value(query, "previous"), Some("true" | "1"));
    let path = server.runtime.log_file(&pod, &container, previous)?;
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let text = match query_value(query, "tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut tail = lines[lines.len().saturating_sub(n)..].join("\n");
            if !tail.is_empty() {
                tail.push('\n');
            }
            tail
        }
        None => text,
    };
    Ok((StatusCode::OK, [("content-type", "text/plain")], text).into_response())
}

/// The Eviction API: a pod goes only if every PodDisruptionBudget that selects it allows
/// one more disruption; otherwise 429, which clients retry (as `kubectl drain` does).
fn evict(store: &Store, namespace: &str, name: &str) -> Result<Response, ApiError> {
    let pod = store
        .get("pods", namespace, name)
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let (pods, _) = store.list("pods", Some(namespace));
    for pdb in store.list("poddisruptionbudgets.policy", Some(namespace)).0 {
        let selector = LabelSelector::from_object(&pdb["spec"]["selector"]);
        if !selector.matches(&pod) {
            continue;
        }
        let selected: Vec<&Value> = pods.iter().filter(|p| selector.matches(p)).collect();
        let healthy = selected.iter().filter(|p| pod_is_ready(p)).count() as i64;
        let expected = selected.len() as i64;
        let resolve = |v: &Value| -> Option<i64> {
            v.as_i64().or_else(|| {
                v.as_str()
                    .and_then(|s| s.strip_suffix('%'))
                    .and_then(|p| p.parse::<i64>().ok())
                    .map(|p| (p * expected + 99) / 100)
            })
        };
        let allowed = if let Some(min) = resolve(&pdb["spec"]["minAvailable"]) {
            healthy - min
        } else if let Some(max) = resolve(&pdb["spec"]["maxUnavailable"]) {
            max - (expected - healthy)
        } else {
            healthy
        };
        let pod_counts = pod_is_ready(&pod);
        if pod_counts && allowed <= 0 {
            return Err(ApiError::new(
                429,
                "TooManyRequests",
                format!(
                    "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {} needs {} healthy pods and has {healthy} currently",
                    store::name_of(&pdb),
                    healthy - allowed
                ),
            ));
        }
    }
    store.delete("pods", namespace, name)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

pub fn pod_is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn watch(
    server: &Arc<ApiServer>,
    resource: &'static Resource,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &[(String, String)],
) -> Result<Response, ApiError> {
    let store = server.store.clone();
    let since = query_value(query, "resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))
        });
    let since = since.transpose()?;
    let bookmarks = matches!(
        query_value(query, "allowWatchBookmarks"),
        Some("true" | "1")
    );
    let timeout = query_value(query, "timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let in_scope = move |object: &Value| {
        namespace
            .as_deref()
            .is_none_or(|ns| ns == store::namespace_of(object))
    };
    let matches =
        move |object: &Value| in_scope(object) && labels.matches(object) && fields.matches(object);

    // Without a resourceVersion a watch starts with the current state as ADDED events.
    let (initial, replay, mut live, mut last_seen) = match since {
        Some(since) => {
            let (replay, live) = store.watch_since(since)?;
            (Vec::new(), replay, live, since)
        }
        None => {
            let (replay, live) = store.watch_since(store.revision())?;
            let (items, revision) = store.list(resource.key, None);
            (items, replay, live, revision)
        }
    };
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(256);
    let kind = resource.kind;
    let api_version = resource.api_version();
    tokio::spawn(async move {
        let line = |kind: &str, object: &Value| {
            Ok(Bytes::from(format!(
                "{}\n",
                json!({"type": kind, "object": object})
            )))
        };
        let mut visible: std::collections::HashSet<(String, String)> =
            std::collections::HashSet::new();
        let key_of = |o: &Value| {
            (
                store::namespace_of(o).to_string(),
                store::name_of(o).to_string(),
            )
        };
        for object in initial.iter().filter(|o| matches(o)) {
            visible.insert(key_of(object));
            if sender.send(line("ADDED", object)).await.is_err() {
                return;
            }
        }
        if since.is_some() {
            for object in store
                .list(resource.key, None)
                .0
                .iter()
                .filter(|o| matches(o))
            {
                visible.insert(key_of(object));
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmark = tokio::time::interval(BOOKMARK_INTERVAL);
        bookmark.tick().await;
        let mut pending = replay.into_iter();
        loop {
            let event = if let Some(event) = pending.next() {
                event
            } else {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = bookmark.tick(), if bookmarks => {
                        let object = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_seen.to_string()}});
                        if sender.send(line("BOOKMARK", &object)).await.is_err() { return; }
                        continue;
                    }
                    _ = sender.closed() => return,
                    received = live.recv() => match received {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let gone = ApiError::new(410, "Expired", "watch fell behind; re-list").status();
                            let _ = sender.send(line("ERROR", &gone)).await;
                            return;
                        }
                        Err(_) => return,
                    },
                }
            };
            if event.revision <= last_seen {
                continue;
            }
            last_seen = event.revision;
            if event.resource != resource.key {
                continue;
            }
            let key = key_of(&event.object);
            let now_matches = event.kind != EventType::Deleted && matches(&event.object);
            let was_visible = visible.contains(&key);
            let kind = match (event.kind, was_visible, now_matches) {
                (EventType::Deleted, true, _) => "DELETED",
                (_, false, true) => "ADDED",
                (_, true, true) => "MODIFIED",
                (_, true, false) => "DELETED",
                _ => continue,
            };
            if now_matches {
                visible.insert(key);
            } else {
                visible.remove(&key);
            }
            if sender.send(line(kind, &event.object)).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(body)
        .unwrap())
}
