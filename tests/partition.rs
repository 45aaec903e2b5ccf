//! End-to-end: four real `clawmesh node` processes split into two groups,
//! a conflicting release on each side, then the heal. Every node must
//! converge on one target, hold every intent issued on either side, and
//! hold the same documents.
//!
//! As root with iproute2, each node runs in a network namespace of its own
//! (`nsenter --net`, or `ip netns exec` without util-linux), its veth on its group's bridge; the partition takes
//! down the veth pair joining the two bridges. Otherwise (or with
//! `CLAWMESH_PARTITION=blocklist`) each side blocks the other's peer ids
//! (libp2p block lists, as the demo's act 6 does). The test prints which ran.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clawmesh_e2e::{
    NetnsLab, NodeProcess, Publisher, admin, clawmesh_ok, s, status_json, wait_for,
};

const CONVERGE: Duration = Duration::from_secs(45);
const COUNTER: &str = "dev.clawmesh.counter";
const N: usize = 4;
const GROUP_A: [usize; 2] = [0, 1];
const GROUP_B: [usize; 2] = [2, 3];
const VERSION_A: &str = "2.0.0";
const VERSION_B: &str = "3.0.0";

/// The nodes, then the lab: fields drop in order, so every node is stopped
/// before its namespace goes.
struct Cluster {
    nodes: Vec<NodeProcess>,
    lab: Option<NetnsLab>,
    publisher: Publisher,
    dirs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(lab: Option<NetnsLab>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..N)
            .map(|i| dir.path().join(format!("node{i}")))
            .collect();
        let refs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
        let publisher = Publisher::new(dir.path(), &refs);
        let mut nodes: Vec<NodeProcess> = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let bootstrap = nodes
                .first()
                .map(|n: &NodeProcess| n.info["p2p"][0].as_str().expect("p2p address").to_string());
            let mut extra: Vec<String> = Vec::new();
            if let Some(b) = bootstrap {
                extra.extend(["--bootstrap".into(), b]);
            }
            let node = match &lab {
                Some(lab) => {
                    extra.extend(["--listen".into(), format!("/ip4/{}/tcp/0", lab.addr(i))]);
                    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                    let wrapper = lab.wrapper(i);
                    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
                    NodeProcess::start_wrapped(&wrapper, d, &extra, &[])
                }
                None => {
                    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                    NodeProcess::start(d, &extra)
                }
            };
            nodes.push(node);
        }
        Self {
            nodes,
            lab,
            publisher,
            dirs,
            _dir: dir,
        }
    }

    fn peer_id(&self, i: usize) -> String {
        self.nodes[i].info["peer_id"]
            .as_str()
            .expect("peer_id in node.json")
            .to_string()
    }

    fn target(&self, i: usize) -> String {
        status_json(&self.dirs[i])["mesh"]["targets"][COUNTER]["version"]
            .as_str()
            .unwrap_or("-")
            .to_string()
    }

    /// Digest → version of every intent node `i` holds.
    fn intents(&self, i: usize) -> BTreeSet<(String, String)> {
        let st = status_json(&self.dirs[i]);
        st["mesh"]["intents"]
            .as_array()
            .expect("intents in status")
            .iter()
            .map(|v| {
                (
                    v["digest"].as_str().unwrap().to_string(),
                    v["version"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn peers(&self, i: usize) -> usize {
        status_json(&self.dirs[i])["mesh"]["peers"]
            .as_array()
            .map_or(0, Vec::len)
    }

    fn block(&self, op: &str) {
        for (side, other) in [(GROUP_A, GROUP_B), (GROUP_B, GROUP_A)] {
            let peers: Vec<String> = other.iter().map(|i| self.peer_id(*i)).collect();
            for i in side {
                admin(&self.dirs[i], serde_json::json!({"op": op, "peers": peers})).unwrap();
            }
        }
    }

    fn split(&self) {
        match &self.lab {
            Some(lab) => lab.split(),
            None => {
                self.block("block_peers");
                for i in 0..N {
                    wait_for(
                        &format!("node{i} to see only its own side"),
                        CONVERGE,
                        || {
                            let p = self.peers(i);
                            if p == 1 {
                                Ok(())
                            } else {
                                Err(format!("{p} peers"))
                            }
                        },
                    );
                }
            }
        }
    }

    fn heal(&self) {
        match &self.lab {
            Some(lab) => lab.heal().unwrap(),
            None => self.block("unblock_peers"),
        }
    }

    fn release(&self, i: usize, version: &str) -> u64 {
        let out = clawmesh_ok(&[
            "release",
            &format!("{COUNTER}@{version}"),
            "--key",
            s(&self.publisher.key),
            "--node",
            s(&self.dirs[i]),
            "--json",
        ]);
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        out["clock"].as_u64().expect("clock in release --json")
    }
}

fn partition_mode() -> (Option<NetnsLab>, String) {
    if std::env::var("CLAWMESH_PARTITION").is_ok_and(|m| m == "blocklist") {
        return (
            None,
            "libp2p block lists (CLAWMESH_PARTITION=blocklist)".into(),
        );
    }
    match NetnsLab::create(N, &GROUP_A) {
        Ok(lab) => (
            Some(lab),
            "network namespaces with veth pairs and bridges".into(),
        ),
        Err(why) => (
            None,
            format!("libp2p block lists (no network namespaces: {why})"),
        ),
    }
}

#[test]
fn a_split_mesh_with_conflicting_releases_on_each_side_converges_after_the_heal_and_loses_nothing()
{
    let (lab, mode) = partition_mode();
    eprintln!("partition mode: {mode}");
    let cluster = Cluster::start(lab);
    for i in 0..N {
        wait_for(&format!("node{i} to see {} peers", N - 1), CONVERGE, || {
            let p = cluster.peers(i);
            if p >= N - 1 {
                Ok(())
            } else {
                Err(format!("{p} peers"))
            }
        });
    }
    // A release everyone agrees on, then one version published on each side.
    cluster
        .publisher
        .publish(&cluster.dirs[0], "counter.wasm", COUNTER, "1.0.0", &[]);
    let base_clock = cluster.release(0, "1.0.0");
    for i in 0..N {
        wait_for(&format!("node{i} to target 1.0.0"), CONVERGE, || {
            let t = cluster.target(i);
            if t == "1.0.0" { Ok(()) } else { Err(t) }
        });
    }
    cluster.publisher.publish(
        &cluster.dirs[GROUP_A[1]],
        "counter.wasm",
        COUNTER,
        VERSION_A,
        &[],
    );
    cluster.publisher.publish(
        &cluster.dirs[GROUP_B[1]],
        "counter.wasm",
        COUNTER,
        VERSION_B,
        &[],
    );

    cluster.split();
    // Conflicting releases: each side's intent carries the same clock, and
    // neither side sees the other's.
    let clock_a = cluster.release(GROUP_A[0], VERSION_A);
    let clock_b = cluster.release(GROUP_B[0], VERSION_B);
    assert_eq!(
        (clock_a, clock_b),
        (base_clock + 1, base_clock + 1),
        "each side issues the next clock"
    );
    let want = |i: usize| {
        if GROUP_A.contains(&i) {
            VERSION_A
        } else {
            VERSION_B
        }
    };
    wait_for("each side to target its own release", CONVERGE, || {
        let targets: Vec<String> = (0..N).map(|i| cluster.target(i)).collect();
        if (0..N).all(|i| targets[i] == want(i)) {
            Ok(())
        } else {
            Err(format!("{targets:?}"))
        }
    });
    // Still split: no node holds the other side's intent.
    for i in 0..N {
        let other = if GROUP_A.contains(&i) {
            VERSION_B
        } else {
            VERSION_A
        };
        let held = cluster.intents(i);
        assert!(
            held.iter().all(|(_, v)| v != other),
            "node{i} saw across the partition: {held:?}"
        );
    }
    let issued: BTreeSet<(String, String)> = (0..N).flat_map(|i| cluster.intents(i)).collect();
    assert_eq!(issued.len(), 3, "{issued:?}");

    cluster.heal();
    // One target everywhere; a deploy only moves a target up, so the higher wins.
    let winner = wait_for("every node to converge on one target", CONVERGE, || {
        let targets: Vec<String> = (0..N).map(|i| cluster.target(i)).collect();
        if targets.iter().all(|t| *t == targets[0]) && targets[0] != "1.0.0" {
            Ok(targets[0].clone())
        } else {
            Err(format!("{targets:?}"))
        }
    });
    assert_eq!(winner, VERSION_B);
    // Nothing lost: every intent issued on either side is held by every
    // node, and every node holds the same catalog and intents documents.
    for i in 0..N {
        wait_for(&format!("node{i} to hold every intent"), CONVERGE, || {
            let held = cluster.intents(i);
            if held == issued {
                Ok(())
            } else {
                Err(format!("{held:?}"))
            }
        });
    }
    wait_for(
        "every node to hold the same catalog and intents",
        CONVERGE,
        || {
            let heads: Vec<serde_json::Value> = (0..N)
                .map(|i| {
                    let h = status_json(&cluster.dirs[i])["mesh"]["heads"].clone();
                    serde_json::json!([h["catalog"], h["intents"]])
                })
                .collect();
            if heads.iter().all(|h| *h == heads[0]) {
                Ok(())
            } else {
                Err(format!("{heads:?}"))
            }
        },
    );
    for (i, d) in cluster.dirs.iter().enumerate() {
        wait_for(&format!("node{i} to run {VERSION_B}"), CONVERGE, || {
            let local = status_json(d)["mesh"]["local"][COUNTER].clone();
            if local["state"] == "active" && local["running"] == VERSION_B {
                Ok(())
            } else {
                Err(format!("{local}"))
            }
        });
    }
    // Every node's status reached every node: the boards are equal.
    wait_for("every node to hold the same status board", CONVERGE, || {
        let digests: Vec<serde_json::Value> = (0..N)
            .map(|i| status_json(&cluster.dirs[i])["mesh"]["status_board"].clone())
            .collect();
        let all_nodes = digests.iter().all(|d| d["nodes"] == serde_json::json!(N));
        if all_nodes && digests.iter().all(|d| d["digest"] == digests[0]["digest"]) {
            Ok(())
        } else {
            Err(format!("{digests:?}"))
        }
    });
    eprintln!("partition mode: {mode}: converged on {winner}");
}
