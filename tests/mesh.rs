//! End-to-end mesh tests on real `clawmesh node` processes on loopback:
//! joining through one bootstrap peer, releasing from any node, conflicting
//! intents, catching up after downtime, refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use clawmesh_e2e::{Mesh, admin_raw, clawmesh_fails, clawmesh_ok, s, status_json, wait_for};

const CONVERGE: Duration = Duration::from_secs(60);
const COUNTER: &str = "dev.clawmesh.counter";

#[test]
fn five_nodes_join_through_one_bootstrap_and_a_release_reaches_every_node() {
    let mesh = Mesh::start(5);
    for (i, d) in mesh.dirs.iter().enumerate() {
        wait_for(&format!("node{i} to know 4 peers"), CONVERGE, || {
            let peers = status_json(d)["mesh"]["peers"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            if peers >= 4 {
                Ok(())
            } else {
                Err(format!("{peers} peers"))
            }
        });
    }
    // Published on node 1, released from node 2.
    mesh.publisher
        .publish(&mesh.dirs[1], "counter.wasm", COUNTER, "1.0.0", &[]);
    clawmesh_ok(&[
        "release",
        &format!("{COUNTER}@1.0.0"),
        "--key",
        s(&mesh.publisher.key),
        "--node",
        mesh.node(2),
    ]);
    mesh.wait_target(COUNTER, "1.0.0", CONVERGE);
    mesh.wait_active(COUNTER, "1.0.0", CONVERGE);
    // Every node's view of the mesh agrees on who runs what.
    wait_for("every node to see 5 Active reports", CONVERGE, || {
        let st = status_json(&mesh.dirs[4]);
        let rows = st["mesh"]["nodes"].as_object().cloned().unwrap_or_default();
        let active = rows
            .values()
            .filter(|r| r[COUNTER]["state"] == "active")
            .count();
        if active == 5 {
            Ok(())
        } else {
            Err(format!("{active} active"))
        }
    });
}

#[test]
fn conflicting_intents_converge_and_refusals_change_nothing() {
    let mut mesh = Mesh::start(4);
    for v in ["1.0.0", "1.5.0", "2.0.0"] {
        mesh.publisher
            .publish(&mesh.dirs[0], "counter.wasm", COUNTER, v, &[]);
    }
    let old = clawmesh_ok(&[
        "release",
        &format!("{COUNTER}@1.0.0"),
        "--key",
        s(&mesh.publisher.key),
        "--node",
        mesh.node(0),
        "--json",
    ]);
    let old: serde_json::Value = serde_json::from_str(&old).unwrap();
    mesh.wait_target(COUNTER, "1.0.0", CONVERGE);

    // Node 3 is down while two nodes take conflicting intents signed with
    // the same clock: neither saw the other.
    mesh.stop(3);
    let key = clawmesh_crdt::PublisherKey::from_key_file(
        &std::fs::read_to_string(&mesh.publisher.key).unwrap(),
    )
    .unwrap();
    let clock = old["clock"].as_u64().unwrap() + 1;
    for (node, version) in [(1, "2.0.0"), (2, "1.5.0")] {
        let intent = clawmesh_crdt::Intent {
            package: COUNTER.parse().unwrap(),
            version: version.parse().unwrap(),
            action: clawmesh_crdt::IntentAction::Deploy,
            clock,
            author: key.key_id().clone(),
            issued_at_ms: 0,
            rollout_max_parallel_percent: 100,
        };
        let signed = clawmesh_crdt::SignedIntent::sign(intent, &key).unwrap();
        let answer = admin_raw(
            &mesh.dirs[node],
            &serde_json::json!({"op": "submit_intent", "envelope_hex": hex::encode(signed.envelope_bytes())}).to_string(),
        );
        assert!(answer["ok"].is_object(), "{answer}");
    }
    // A deploy only moves a target up: 2.0.0 wins on every node, whatever the order.
    mesh.wait_target(COUNTER, "2.0.0", CONVERGE);

    // The node that was down catches up after restart (anti-entropy).
    mesh.restart(3);
    mesh.wait_target(COUNTER, "2.0.0", CONVERGE);

    // A replayed older intent changes nothing.
    let replay = admin_raw(
        &mesh.dirs[2],
        &serde_json::json!({"op": "submit_intent", "envelope_hex": old["envelope_hex"]})
            .to_string(),
    );
    assert!(
        replay["ok"].is_object(),
        "a replay is a valid (old) intent: {replay}"
    );
    // The driver applies a submission before it answers a later query, so
    // this status already includes the replay.
    let after = status_json(&mesh.dirs[2]);
    assert_eq!(
        after["mesh"]["targets"][COUNTER]["version"], "2.0.0",
        "{after}"
    );
    let targets_before = after["mesh"]["targets"].clone();
    // An intent signed by a key outside the trust root is refused.
    let stranger = mesh.dir.path().join("mallory.key");
    clawmesh_ok(&["key", "gen", "--out", s(&stranger)]);
    let err = clawmesh_fails(
        &[
            "release",
            &format!("{COUNTER}@1.0.0"),
            "--key",
            s(&stranger),
            "--node",
            mesh.node(0),
        ],
        1,
    );
    assert!(err.contains("intent_refused"), "{err}");
    // A malformed intent envelope is refused with a reason.
    let bad = admin_raw(
        &mesh.dirs[0],
        r#"{"op":"submit_intent","envelope_hex":"0a02ffff"}"#,
    );
    assert!(bad["error"]["code"].is_string(), "{bad}");
    // Rollback is the explicit way down.
    clawmesh_ok(&[
        "rollback",
        COUNTER,
        "--key",
        s(&mesh.publisher.key),
        "--node",
        mesh.node(1),
    ]);
    mesh.wait_target(COUNTER, "1.5.0", CONVERGE);
    assert_ne!(
        status_json(&mesh.dirs[0])["mesh"]["targets"],
        targets_before
    );
}
