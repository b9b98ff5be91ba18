//! The lab's `agnhost netexec`: the HTTP endpoints of the Kubernetes e2e test image that
//! connectivity probes use (`/`, `/hostname`, `/echo?msg=`, `/clientip`, `/healthz`).

use axum::extract::{ConnectInfo, Query};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;

pub async fn netexec(http_port: u16) -> std::io::Result<()> {
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    let app = Router::new()
        .route(
            "/",
            get(|| async { format!("NOW: {}", k8s_openapi::jiff::Timestamp::now()) }),
        )
        .route("/hostname", get(move || async move { hostname }))
        .route(
            "/echo",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                q.get("msg").cloned().unwrap_or_default()
            }),
        )
        .route(
            "/clientip",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", http_port)).await?;
    eprintln!("Started HTTP server on port {http_port}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
