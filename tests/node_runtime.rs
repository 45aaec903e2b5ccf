//! End-to-end: a real `clawmesh node` process deploys published skills into
//! worker processes, serves them over HTTP and the CLI, refuses bad
//! deploys by name while the running skill keeps serving, and stops cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use clawmesh_e2e::{
    NodeProcess, Publisher, clawmesh, clawmesh_fails, clawmesh_ok, http_get, http_post, s,
};

#[test]
fn node_deploys_serves_refuses_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    let publisher = Publisher::new(dir.path(), &[&node_dir]);
    publisher.publish(
        &node_dir,
        "counter.wasm",
        "dev.clawmesh.counter",
        "1.0.0",
        &[],
    );
    publisher.publish(
        &node_dir,
        "fixture_wrong_world.wasm",
        "dev.clawmesh.broken",
        "1.0.0",
        &[],
    );

    let mut node = NodeProcess::start(&node_dir, &[]);
    let nd = s(&node_dir);
    let out = clawmesh_ok(&[
        "deploy",
        "dev.clawmesh.counter@1.0.0",
        "--node",
        nd,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], "1.0.0");

    // The CLI and HTTP reach the same instance: state is shared.
    assert_eq!(
        clawmesh_ok(&[
            "invoke",
            "dev.clawmesh.counter",
            "add",
            "--data",
            "5",
            "--node",
            nd
        ])
        .trim(),
        "5"
    );
    let (status, body) = http_post(
        &format!("{}/v1/skills/dev.clawmesh.counter/add", node.http()),
        b"7",
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&body).trim().to_string()),
        (200, "12".to_string())
    );
    assert_eq!(
        clawmesh_ok(&["invoke", "dev.clawmesh.counter", "get", "--node", nd]).trim(),
        "12"
    );

    // Status names the worker, its pid and the cgroup support.
    let status: serde_json::Value =
        serde_json::from_str(&clawmesh_ok(&["status", "--json", "--node", nd])).unwrap();
    let local = &status["local"];
    let skills = local["skills"].as_array().unwrap();
    assert_eq!(skills.len(), 1, "{status}");
    assert_eq!(skills[0]["package"], "dev.clawmesh.counter");
    assert!(skills[0]["pid"].as_u64().is_some(), "{status}");
    assert!(local["cgroups"].is_object(), "{status}");
    assert!(
        status["mesh"]["node"].is_string(),
        "the mesh side reports too: {status}"
    );

    // A component of the wrong world is refused by name; counter keeps serving.
    let err = clawmesh_fails(&["deploy", "dev.clawmesh.broken@1.0.0", "--node", nd], 1);
    assert!(err.contains("handle") || err.contains("export"), "{err}");
    let err = clawmesh_fails(&["deploy", "dev.clawmesh.counter@9.9.9", "--node", nd], 1);
    assert!(err.contains("not_published"), "{err}");
    let err = clawmesh_fails(&["deploy", "not a package@1", "--node", nd], 1);
    assert!(err.contains("bad_request"), "{err}");
    assert_eq!(
        clawmesh_ok(&["invoke", "dev.clawmesh.counter", "get", "--node", nd]).trim(),
        "12"
    );

    // Errors are JSON with a stable code.
    let (status, body) = http_post(
        &format!("{}/v1/skills/dev.clawmesh.nothing/add", node.http()),
        b"",
    );
    assert_eq!(status, 404);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(e["error"]["code"].is_string(), "{e}");
    let out = clawmesh(&["invoke", "dev.clawmesh.counter", "no-such-op", "--node", nd]);
    assert_eq!(out.status.code(), Some(1));

    // Probes and metrics.
    assert_eq!(http_get(&format!("{}/livez", node.http())).0, 200);
    assert_eq!(http_get(&format!("{}/readyz", node.http())).0, 200);
    let (status, metrics) = http_get(&format!("{}/metrics", node.http()));
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("dev.clawmesh.counter"), "{metrics}");

    // A second node on the same data dir is refused.
    let second = clawmesh(&["node", "--data-dir", nd]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already runs"));

    assert!(node.stop(), "node did not exit cleanly on SIGTERM");
    assert!(!node_dir.join("node.json").exists());
}
