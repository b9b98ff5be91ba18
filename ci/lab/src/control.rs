//! The lab daemon's control socket (a Unix socket in the state directory): how
//! `postflight-lab reboot`, the nodes' own `systemctl reboot` and the fault knobs reach
//! the running lab. Plain HTTP/1.0, so the client needs nothing but a socket.

use crate::controlplane::ControlPlane;
use crate::kubelet::Runtime;
use crate::system::{io_context, Result};
use crate::topology::Topology;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use k8s_openapi::api::core::v1::{Node, Pod};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct Control {
    runtime: Arc<Runtime>,
    plane: Arc<tokio::sync::Mutex<ControlPlane>>,
    admin: kube::Client,
}

pub fn serve(
    topology: &Topology,
    runtime: Arc<Runtime>,
    plane: Arc<tokio::sync::Mutex<ControlPlane>>,
    admin: kube::Client,
) -> Result<()> {
    let path = topology.control_socket();
    let _ = std::fs::remove_file(&path);
    let listener = io_context(std::os::unix::net::UnixListener::bind(&path), || {
        format!("binding {}", path.display())
    })?;
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::UnixListener::from_std(listener).expect("inside the runtime");
    let app = Router::new()
        .route("/nodes/{node}/reboot", post(reboot))
        .route("/apiserver/pause", post(pause))
        .route("/etcd/compact", post(compact))
        .route("/status", get(status))
        .with_state(Control {
            runtime,
            plane,
            admin,
        });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

/// `?unclean=1`: the machine dies without shutting down (a power cut, `systemctl reboot
/// --force --force`, a kernel panic): no graceful node shutdown is reported.
async fn reboot(
    State(control): State<Control>,
    Path(node): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let graceful = query.get("unclean").is_none_or(|v| v != "1");
    if control.runtime.topology.node(&node).is_none() {
        return (
            StatusCode::NOT_FOUND,
            format!("no node {node} in this lab\n"),
        );
    }
    // Answer first: the caller is often a shell on the node, which the reboot kills.
    let answer = format!(
        "rebooting {node}{}\n",
        if graceful {
            ""
        } else {
            " without shutting down"
        }
    );
    tokio::spawn(async move {
        if let Err(e) = control.runtime.reboot(&node, graceful).await {
            tracing::error!(node, "reboot failed: {e}");
        }
    });
    (StatusCode::ACCEPTED, answer)
}

/// A real outage: the API server process goes away for the given time, then starts
/// again. Answers at once; the outage runs on.
async fn pause(
    State(control): State<Control>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let seconds: u64 = query
        .get("seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let freeze = query.get("freeze").is_some_and(|v| v == "true");
    let mut plane = control.plane.clone().lock_owned().await;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let down = Duration::from_secs(seconds);
        let result = if freeze {
            plane.freeze(down, stopped_tx).await
        } else {
            plane.outage(down, stopped_tx).await
        };
        if let Err(e) = result {
            tracing::error!("the API server did not come back: {e}");
        }
    });
    // The answer waits until the server is really down, so a caller's next request
    // meets the outage.
    let _ = stopped_rx.await;
    let how = if freeze { "frozen" } else { "down" };
    (
        StatusCode::ACCEPTED,
        format!("API server {how} for {seconds}s\n"),
    )
}

async fn compact(State(control): State<Control>) -> (StatusCode, String) {
    let mut plane = control.plane.lock().await;
    match plane.compact_etcd().await {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn pod_status_text(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    if pod.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    waiting
        .or_else(|| status.and_then(|s| s.phase.clone()))
        .unwrap_or_else(|| "Unknown".into())
}

async fn status(State(control): State<Control>) -> String {
    let runtime = &control.runtime;
    let nodes: kube::Api<Node> = kube::Api::all(control.admin.clone());
    let pods: kube::Api<Pod> = kube::Api::all(control.admin.clone());
    let mut text = String::new();
    for node in &runtime.topology.nodes {
        let object = nodes.get_opt(&node.name).await.ok().flatten();
        let ready = object.as_ref().is_some_and(crate::daemon::node_is_ready);
        let boot_id = object
            .as_ref()
            .and_then(|n| Some(n.status.as_ref()?.node_info.as_ref()?.boot_id.clone()))
            .unwrap_or_default();
        let argv = [
            "birdc",
            "-s",
            crate::calico::BIRD_SOCKET,
            "show",
            "protocols",
        ]
        .map(String::from);
        let mut command = crate::node::enter_command(
            &runtime.topology,
            node,
            &runtime.topology.node_netns(node),
            &argv,
        );
        let bgp = tokio::task::spawn_blocking(move || command.output())
            .await
            .ok()
            .and_then(|o| o.ok())
            .map(|o| {
                let out = String::from_utf8_lossy(&o.stdout).to_string();
                let sessions: Vec<&str> = out.lines().filter(|l| l.contains(" BGP ")).collect();
                let established = sessions
                    .iter()
                    .filter(|l| l.contains("Established"))
                    .count();
                format!("{established}/{} established", sessions.len())
            });
        let powered_off = crate::node::NodePaths::new(&runtime.topology, node)
            .powered_off_flag
            .exists();
        text.push_str(&format!(
            "node {:<16} {:<15} {:<9} power {:<3} boot {}  bgp {}\n",
            node.name,
            node.ip,
            if ready { "Ready" } else { "NotReady" },
            if powered_off { "off" } else { "on" },
            boot_id,
            bgp.unwrap_or_else(|| "unknown".into())
        ));
    }
    match pods.list(&Default::default()).await {
        Ok(list) => {
            for pod in list {
                let status = pod.status.as_ref();
                let restarts: i32 = status
                    .and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|c| c.restart_count)
                    .sum();
                text.push_str(&format!(
                    "pod  {}/{} on {} {} {} restarts {}\n",
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    pod.metadata.name.as_deref().unwrap_or(""),
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .unwrap_or("-"),
                    status.and_then(|s| s.pod_ip.as_deref()).unwrap_or("-"),
                    pod_status_text(&pod),
                    restarts
                ));
            }
        }
        Err(e) => text.push_str(&format!("pods: the API server did not answer: {e}\n")),
    }
    text
}

/// Sends one request to a lab's control socket and returns the body of a 2xx answer.
pub fn request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
) -> std::result::Result<String, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e} (is the lab up?)", socket.display()))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: lab\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let ok = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if ok {
        Ok(body.to_string())
    } else {
        Err(format!(
            "{}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        ))
    }
}
