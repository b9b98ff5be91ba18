//! A mocked API server for unit tests: requests are answered by a plain function of the
//! method and path, through kube's own client, so the code under test speaks HTTP to it
//! exactly as to a real one.

use super::Cluster;
use kube::Client;

/// A mocked API server: each request is answered by `answer(method, path)` with a
/// status code and a body.
pub fn mocked(answer: fn(&str, &str) -> (u16, String)) -> Cluster {
    use kube::client::Body;
    let (service, mut handle) =
        tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let (code, body) = answer(request.method().as_str(), request.uri().path());
            reply.send_response(
                http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(body.into_bytes()))
                    .expect("a response"),
            );
        }
    });
    Cluster::from_client(
        Client::new(service, "default"),
        "https://mock.invalid:6443/",
    )
}

pub fn status_json(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
    .to_string()
}
