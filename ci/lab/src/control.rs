//! The lab daemon's control socket (a Unix socket in the state directory): how
//! `postflight-lab reboot`, the nodes' own `systemctl reboot` and the fault knobs reach
//! the running lab. Plain HTTP/1.0, so the client needs nothing but a socket.

use crate::apiserver::ApiServer;
use crate::kubelet::Runtime;
use crate::system::{io_context, Result};
use crate::topology::Topology;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct Control {
    runtime: Arc<Runtime>,
    api: Arc<ApiServer>,
}

pub fn serve(topology: &Topology, runtime: Arc<Runtime>, api: Arc<ApiServer>) -> Result<()> {
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
        .route("/status", get(status))
        .with_state(Control { runtime, api });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

async fn reboot(State(control): State<Control>, Path(node): Path<String>) -> (StatusCode, String) {
    if control.runtime.topology.node(&node).is_none() {
        return (
            StatusCode::NOT_FOUND,
            format!("no node {node} in this lab\n"),
        );
    }
    // Answer first: the caller is often a shell on the node, which the reboot kills.
    let answer = format!("rebooting {node}\n");
    tokio::spawn(async move {
        if let Err(e) = control.runtime.reboot(&node).await {
            tracing::error!(node, "reboot failed: {}", e.message);
        }
    });
    (StatusCode::ACCEPTED, answer)
}

async fn pause(
    State(control): State<Control>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let seconds: u64 = query
        .get("seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    control.api.paused.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        control.api.paused.store(false, Ordering::SeqCst);
    });
    (
        StatusCode::ACCEPTED,
        format!("API server paused for {seconds}s\n"),
    )
}

async fn status(State(control): State<Control>) -> String {
    let runtime = &control.runtime;
    let mut text = String::new();
    for node in &runtime.topology.nodes {
        let object = runtime.store.get("nodes", "", &node.name);
        let ready = object
            .as_ref()
            .is_some_and(crate::controllers::node_is_ready);
        let boot_id = object
            .as_ref()
            .and_then(|o| o["status"]["nodeInfo"]["bootID"].as_str().map(String::from))
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
        text.push_str(&format!(
            "node {:<16} {:<15} {:<9} boot {}  bgp {}\n",
            node.name,
            node.ip,
            if ready { "Ready" } else { "NotReady" },
            boot_id,
            bgp.unwrap_or_else(|| "unknown".into())
        ));
    }
    for pod in runtime.store.list("pods", None).0 {
        let restarts: i64 = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["restartCount"].as_i64())
            .sum();
        text.push_str(&format!(
            "pod  {}/{} on {} {} {} restarts {}\n",
            pod["metadata"]["namespace"].as_str().unwrap_or(""),
            pod["metadata"]["name"].as_str().unwrap_or(""),
            pod["spec"]["nodeName"].as_str().unwrap_or("-"),
            pod["status"]["podIP"].as_str().unwrap_or("-"),
            crate::apiserver::tables::pod_status_text(&pod),
            restarts
        ));
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
