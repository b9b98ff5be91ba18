//! The lab's `agnhost netexec`: the HTTP endpoints of the Kubernetes e2e test image that
//! connectivity probes use (`/`, `/hostname`, `/echo?msg=`, `/clientip`, `/healthz`,
//! `/dial`).

use axum::extract::{ConnectInfo, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// agnhost's limit for each try of its own fetch.
const DIAL_TRY_TIMEOUT: Duration = Duration::from_secs(5);

type DialClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub async fn netexec(http_port: u16) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", http_port)).await?;
    eprintln!("Started HTTP server on port {http_port}");
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    serve(listener, hostname).await
}

async fn serve(listener: tokio::net::TcpListener, hostname: String) -> std::io::Result<()> {
    // Each dial opens a connection of its own, as agnhost's does (it closes its idle
    // ones after every dial): one kept from before a fault was injected would not show it.
    let client: DialClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let app =
        Router::new()
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
            .route(
                "/dial",
                get(move |Query(q): Query<HashMap<String, String>>| async move {
                    dial(&client, &q).await
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// `/dial?host=H&port=P&request=R&protocol=http&tries=N`: this pod fetches
/// `http://H:P/R` N times and answers `{"responses":[bodies],"errors":[messages]}`, 200
/// when the last try got an answer (whatever its status, as agnhost's own client does
/// not look at it), 417 when it did not, 400 for parameters it cannot use.
async fn dial(client: &DialClient, query: &HashMap<String, String>) -> (StatusCode, String) {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    let tries = match query.get("tries").map(|t| t.parse::<u32>()) {
        None => 1,
        Some(Ok(tries)) => tries,
        Some(Err(e)) => return bad(format!("tries parameter is invalid. {e}")),
    };
    let Some(request) = query.get("request").filter(|r| !r.is_empty()) else {
        return bad("request parameter not specified.".into());
    };
    match query
        .get("protocol")
        .map(|p| p.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("http") => {}
        // agnhost also dials UDP and SCTP; postflight's probes use HTTP only, so the lab
        // does not simulate those.
        Some(protocol @ ("udp" | "sctp")) => {
            return bad(format!("protocol {protocol} is not supported by the lab"))
        }
        Some(protocol) => return bad(format!("unsupported protocol. {protocol}")),
    }
    // agnhost resolves host:port first; the lab's pods have no DNS, so an IP it must be.
    let address = match (
        query.get("host").map(|h| h.parse::<IpAddr>()),
        query.get("port").map(|p| p.parse::<u16>()),
    ) {
        (Some(Ok(ip)), Some(Ok(port))) => SocketAddr::new(ip, port),
        _ => return bad("host and/or port param are invalid.".into()),
    };
    let uri = format!("http://{address}/{}", request.trim_start_matches('/'));
    let Ok(uri) = uri.parse::<hyper::Uri>() else {
        return bad(format!("request parameter is invalid: {request}"));
    };
    let mut responses = Vec::new();
    let mut errors = Vec::new();
    let mut last_succeeded = false;
    for _ in 0..tries {
        match tokio::time::timeout(DIAL_TRY_TIMEOUT, fetch(client, uri.clone())).await {
            Ok(Ok(body)) => {
                responses.push(body);
                last_succeeded = true;
            }
            Ok(Err(error)) => {
                errors.push(format!("Get \"{uri}\": {error}"));
                last_succeeded = false;
            }
            Err(_) => {
                errors.push(format!(
                    "Get \"{uri}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                ));
                last_succeeded = false;
            }
        }
    }
    let body = serde_json::json!({ "responses": responses, "errors": errors }).to_string();
    let status = if last_succeeded {
        StatusCode::OK
    } else {
        StatusCode::EXPECTATION_FAILED
    };
    (status, body)
}

async fn fetch(client: &DialClient, uri: hyper::Uri) -> Result<String, String> {
    let response = client.get(uri).await.map_err(|e| error_chain(&e))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// The error with its causes: hyper's own message alone ("client error (Connect)")
/// hides the refused or unreachable connection under it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// A netexec on a free loopback port; it lives as long as the test's runtime.
    async fn start() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, "pod-b".into()));
        address
    }

    /// A port nothing listens on: bound, then released.
    async fn closed_port() -> u16 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn get(uri: String) -> (u16, String) {
        let client: DialClient = Client::builder(TokioExecutor::new()).build_http();
        let response = client.get(uri.parse().unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn dial_answers_200_with_the_targets_answer_when_it_reached_it() {
        let asked = start().await;
        let target = start().await;
        let (status, body) = get(format!(
            "http://{asked}/dial?host=127.0.0.1&port={}&request=hostname&protocol=http&tries=2",
            target.port()
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "responses": ["pod-b", "pod-b"], "errors": [] })
        );
    }

    #[tokio::test]
    async fn dial_answers_417_with_the_error_when_it_could_not_reach_the_target() {
        let asked = start().await;
        let closed = closed_port().await;
        let (status, body) = get(format!(
            "http://{asked}/dial?host=127.0.0.1&port={closed}&request=hostname&protocol=http"
        ))
        .await;
        assert_eq!(status, 417, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["responses"], serde_json::json!([]));
        let errors = body["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "tries defaults to 1: {body}");
        assert!(
            errors[0].as_str().unwrap().contains("refused"),
            "the error says why: {body}"
        );
    }

    #[rstest]
    #[case::no_request("host=127.0.0.1&port=1&protocol=http")]
    #[case::empty_request("host=127.0.0.1&port=1&request=")]
    #[case::bad_tries("host=127.0.0.1&port=1&request=hostname&tries=x")]
    #[case::not_an_address("host=127.0.0.1%26host%3D10.0.0.1&port=1&request=hostname")]
    #[case::no_port("host=127.0.0.1&request=hostname")]
    #[case::unknown_protocol("host=127.0.0.1&port=1&request=hostname&protocol=gopher")]
    #[case::udp_not_simulated("host=127.0.0.1&port=1&request=hostname&protocol=udp")]
    #[tokio::test]
    async fn dial_answers_400_to_parameters_it_cannot_use(#[case] query: &str) {
        let asked = start().await;
        let (status, body) = get(format!("http://{asked}/dial?{query}")).await;
        assert_eq!(status, 400, "{body}");
    }
}
