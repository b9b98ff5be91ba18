//! `pods/exec` over WebSocket, with the Kubernetes channel protocols `v4.channel.k8s.io`
//! and `v5.channel.k8s.io` (what kubectl ≥ 1.31 and kube-rs speak). Every binary frame
//! starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 error (a meta/v1 Status when
//! the command ends), 4 resize, 255 close (v5: the client closed a stream).

use super::store::ApiError;
use super::{error_response, query_pairs, ApiServer};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::Response;
use serde_json::json;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

pub async fn handle(
    State(server): State<Arc<ApiServer>>,
    Path((namespace, name)): Path<(String, String)>,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return error_response(&ApiError::bad_request(
            "exec needs a WebSocket upgrade (SPDY is not served)",
        ));
    };
    let query = query_pairs(&uri);
    let argv: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let flag = |key: &str| {
        query
            .iter()
            .any(|(k, v)| k == key && (v == "true" || v == "1"))
    };
    let Some(pod) = server.store.get("pods", &namespace, &name) else {
        return error_response(&ApiError::not_found("pods", &name));
    };
    let container = query
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            pod["spec"]["containers"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
    if argv.is_empty() {
        return error_response(&ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    let command = match server.runtime.exec_command(&pod, &container, &argv) {
        Ok(command) => command,
        Err(error) => return error_response(&error),
    };
    let (want_stdin, want_stdout, want_stderr) = (flag("stdin"), flag("stdout"), flag("stderr"));
    upgrade
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            run(socket, command, argv, want_stdin, want_stdout, want_stderr).await;
        })
}

fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

async fn run(
    mut socket: WebSocket,
    mut command: tokio::process::Command,
    argv: Vec<String>,
    want_stdin: bool,
    want_stdout: bool,
    want_stderr: bool,
) {
    command
        .stdin(if want_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": format!("failed to start {argv:?}: {e}"), "reason": "InternalError"});
            let _ = socket
                .send(frame(ERROR, status.to_string().as_bytes()))
                .await;
            let _ = socket.send(normal_close()).await;
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => if want_stdout && socket.send(frame(STDOUT, &out_buf[..n])).await.is_err() { return; },
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => if want_stderr && socket.send(frame(STDERR, &err_buf[..n])).await.is_err() { return; },
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    STDIN => if let Some(input) = stdin.as_mut() { let _ = input.write_all(&data[1..]).await; },
                    CLOSE if data.get(1) == Some(&STDIN) => { stdin = None; }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
    let status = match child.wait().await {
        Ok(status) if status.success() => json!({"metadata": {}, "status": "Success"}),
        Ok(status) => {
            let code = status.code().unwrap_or(
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0),
            );
            json!({
                "metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        Err(e) => {
            json!({"metadata": {}, "status": "Failure", "message": e.to_string(), "reason": "InternalError"})
        }
    };
    let _ = socket
        .send(frame(ERROR, status.to_string().as_bytes()))
        .await;
    let _ = socket.send(normal_close()).await;
}
