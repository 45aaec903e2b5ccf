//! The runtime's HTTP routes served over TCP, with a real counter worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use clawmesh_node::runtime::{RuntimeHttpState, SkillLimits, router};
use runtime_common::{Harness, http_exchange};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_status_metrics_and_probes_over_http() {
    let harness = Harness::new("http");
    harness
        .deploy("counter", "counter", SkillLimits::default())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(RuntimeHttpState::new(harness.supervisor.clone()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(
        http_exchange(addr, "POST", "/v1/skills/counter/add", b"41").await,
        (200, "41".into())
    );
    assert_eq!(
        http_exchange(addr, "POST", "/v1/skills/counter/add", b"").await,
        (200, "42".into())
    );

    let (status, body) = http_exchange(addr, "POST", "/v1/skills/counter/add", b"many").await;
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("skill_error")),
        "{body}"
    );
    assert!(
        error["error"]["message"].as_str().unwrap().contains("many"),
        "{body}"
    );

    let (status, body) = http_exchange(addr, "POST", "/v1/skills/absent/get", b"").await;
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("no_such_skill"))
    );

    let (status, body) = http_exchange(addr, "GET", "/v1/status", b"").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(json["skills"][0]["package"], "counter");
    assert_eq!(json["skills"][0]["state"], "ready");
    assert!(json["cgroups"]["version"].is_string(), "{body}");

    let (status, body) = http_exchange(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    for expected in [
        "clawmesh_skill_requests_total{package=\"counter\"} 3",
        "clawmesh_skill_errors_total{package=\"counter\",code=\"skill_error\"} 1",
        "clawmesh_skill_latency_seconds_count{package=\"counter\"} 3",
    ] {
        assert!(body.contains(expected), "missing {expected} in\n{body}");
    }
    // Unknown package names come from the network: no label series for them.
    assert!(!body.contains("absent"), "{body}");

    assert_eq!(http_exchange(addr, "GET", "/livez", b"").await.0, 200);
    let (status, body) = http_exchange(addr, "GET", "/readyz", b"").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, json["ready"].as_bool()), (200, Some(true)));
    assert!(json["cgroups"].is_object(), "{body}");

    server.abort();
    harness.shutdown().await;
}
