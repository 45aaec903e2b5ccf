//! End-to-end: `clawmesh demo --json` runs every act on real node processes
//! (a five-node mesh on loopback) and says each did what it claims.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use clawmesh_e2e::{clawmesh, s};

#[test]
fn the_demo_runs_every_act_and_each_does_what_it_claims() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = clawmesh(&["demo", "--json", "--data-dir", s(&data)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clawmesh demo failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("--json prints one JSON document");
    assert_eq!(report["passed"], true, "{report:#}");
    let acts = report["acts"].as_array().expect("acts");
    let numbers: Vec<u64> = acts.iter().map(|a| a["act"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=7).collect::<Vec<_>>(), "{report:#}");
    for act in acts {
        assert_eq!(
            act["ok"], true,
            "act {} did not do what it claims: {}",
            act["act"], act["detail"]
        );
    }
    // What the acts claim, in the figures they measured.
    let f = &report["figures"];
    assert_eq!(f["active_ms"].as_array().unwrap().len(), 5, "{f:#}");
    assert!(
        f["active_ms"]
            .as_array()
            .unwrap()
            .iter()
            .all(serde_json::Value::is_number),
        "{f:#}"
    );
    assert_eq!(f["load"]["errors"], 0, "{f:#}");
    assert!(f["load"]["served"].as_u64().unwrap() > 0, "{f:#}");
    assert!(
        f["load"]["state_kept"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| *k == true),
        "{f:#}"
    );
    assert!(f["failed_nodes"].as_u64().unwrap() >= 3, "{f:#}");
    assert_eq!(f["converged_to"], "5.0.0", "{f:#}");
    // The report is a self-contained HTML file with its charts.
    let html =
        std::fs::read_to_string(report["report_html"].as_str().expect("report path")).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.matches("<svg").count() >= 5);
    assert!(!html.contains("<script"), "the report runs no scripts");
    // Every node process is gone once the demo returns.
    for i in 1..=5 {
        let node = data.join("mesh").join(format!("node{i}"));
        assert!(
            !node.join("node.json").exists(),
            "node{i} still running (its node.json exists)"
        );
    }
}
