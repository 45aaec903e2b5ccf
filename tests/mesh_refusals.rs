//! End-to-end: a rogue libp2p peer, built from the node crate's own mesh
//! layer with an identity of its own, joins a mesh of real `clawmesh node`
//! processes and sends malformed sync frames and heads announcements. The
//! node refuses each with a reason its status shows, loses no document,
//! stays up and still converges on a later release.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use clawmesh_crdt::proto::v1 as wire;
use clawmesh_crdt::{DocumentId, Health, NodeStatus, PackageStatus, ReleaseState};
use clawmesh_e2e::{Mesh, clawmesh_ok, s, status_json, wait_for};
use clawmesh_node::mesh::{
    HeadsDelivery, MeshConfig, MeshHandle, MeshNetwork, load_or_create_identity,
};
use prost::Message as _;

const CONVERGE: Duration = Duration::from_secs(60);
const COUNTER: &str = "dev.clawmesh.counter";

/// The rogue: a mesh peer that speaks the wire protocols but sends garbage.
struct Rogue {
    runtime: tokio::runtime::Runtime,
    handle: MeshHandle,
}

impl Rogue {
    /// Joins through `bootstrap` (a node's p2p address) with a fresh identity in `dir`.
    fn join(dir: &std::path::Path, bootstrap: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.block_on(async {
            let mut cfg = MeshConfig::new(load_or_create_identity(dir).unwrap());
            cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
            cfg.bootstrap = vec![bootstrap.parse().unwrap()];
            let (handle, mut events) = MeshNetwork::spawn(cfg).unwrap();
            // The node syncs with us; nobody answers, but the events are drained
            // so the swarm never stalls on a full queue.
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            handle
        });
        Self { runtime, handle }
    }

    fn peer_id(&self) -> String {
        self.handle.local_peer_id().to_string()
    }

    /// Queues one raw frame on the sync stream to the peer named `to`.
    fn send_frame(&self, to: &str, bytes: Vec<u8>) {
        self.runtime.block_on(async {
            let peers = self.handle.connected_peers().await.unwrap();
            let peer = peers
                .into_iter()
                .find(|p| p.to_string() == to)
                .expect("connected to the node");
            self.handle.send_sync(peer, bytes).await.unwrap();
        });
    }

    /// Publishes a raw heads payload; whether anyone was subscribed yet.
    fn publish_heads(&self, bytes: Vec<u8>) -> HeadsDelivery {
        self.runtime
            .block_on(self.handle.publish_heads(bytes))
            .unwrap()
    }

    fn connected_to(&self, peer: &str) -> bool {
        self.runtime
            .block_on(self.handle.connected_peers())
            .unwrap()
            .iter()
            .any(|p| p.to_string() == peer)
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.runtime.block_on(self.handle.shutdown());
    }
}

fn refused(node_dir: &std::path::Path) -> Vec<String> {
    status_json(node_dir)["mesh"]["refused"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the node's status lists a refusal from `from` whose reason contains `why`.
fn wait_refusal(node_dir: &std::path::Path, from: &str, why: &str) {
    let prefix = format!("from {from}: ");
    wait_for(&format!("a refusal saying {why:?}"), CONVERGE, || {
        let all = refused(node_dir);
        if all
            .iter()
            .any(|r| r.starts_with(&prefix) && r.contains(why))
        {
            Ok(())
        } else {
            Err(format!("refused: {all:?}"))
        }
    });
}

fn heads(node_dir: &std::path::Path) -> serde_json::Value {
    status_json(node_dir)["mesh"]["heads"].clone()
}

#[test]
fn a_rogue_peer_s_malformed_frames_and_announcements_are_refused_and_nothing_is_lost() {
    let mesh = Mesh::start(2);
    let key = s(&mesh.publisher.key);
    mesh.publisher
        .publish(&mesh.dirs[0], "counter.wasm", COUNTER, "1.0.0", &[]);
    clawmesh_ok(&[
        "release",
        &format!("{COUNTER}@1.0.0"),
        "--key",
        key,
        "--node",
        mesh.node(1),
    ]);
    mesh.wait_active(COUNTER, "1.0.0", CONVERGE);
    // Both nodes hold the same documents: the node under attack is quiet.
    let before = wait_for("both nodes to hold identical documents", CONVERGE, || {
        let (a, b) = (heads(&mesh.dirs[0]), heads(&mesh.dirs[1]));
        let nonempty = ["catalog", "intents"]
            .iter()
            .all(|d| a[d].as_array().is_some_and(|h| !h.is_empty()));
        if a == b && nonempty {
            Ok(a)
        } else {
            Err(format!("{a} vs {b}"))
        }
    });

    let victim = &mesh.dirs[0];
    let node = mesh.nodes[0].as_ref().unwrap();
    let victim_id = node.info["peer_id"]
        .as_str()
        .expect("peer_id in node.json")
        .to_string();
    let rogue = Rogue::join(&mesh.dir.path().join("rogue"), &mesh.bootstrap);
    let rogue_id = rogue.peer_id();
    wait_for("the node and the rogue to see each other", CONVERGE, || {
        let peers = status_json(victim)["mesh"]["peers"].clone();
        let seen = peers
            .as_array()
            .is_some_and(|p| p.iter().any(|p| *p == rogue_id.as_str()));
        if seen && rogue.connected_to(&victim_id) {
            Ok(())
        } else {
            Err(format!("node peers {peers}"))
        }
    });

    // (a) Sync frames.
    rogue.send_frame(&victim_id, vec![0xff; 64]);
    wait_refusal(victim, &rogue_id, "malformed sync frame");
    let unknown = wire::SyncFrame {
        document: Some(wire::DocumentId { kind: 99, shard: 0 }),
        sync_message: vec![0x42],
        status: None,
    };
    rogue.send_frame(&victim_id, unknown.encode_to_vec());
    wait_refusal(victim, &rogue_id, "sync frame names no known document");
    let retired = wire::SyncFrame {
        document: Some(wire::DocumentId {
            kind: wire::DocumentKind::Status as i32,
            shard: 0,
        }),
        sync_message: vec![0x42],
        status: None,
    };
    rogue.send_frame(&victim_id, retired.encode_to_vec());
    wait_for(
        "a frame for the retired status documents to be refused too",
        CONVERGE,
        || {
            let n = refused(victim)
                .iter()
                .filter(|r| r.contains("sync frame names no known document"))
                .count();
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} refusals"))
            }
        },
    );
    for doc in [DocumentId::Catalog, DocumentId::Intents] {
        let corrupt = wire::SyncFrame {
            document: Some(doc.to_wire()),
            // automerge's sync message tag, then bytes that decode as nothing.
            sync_message: [&[0x42u8][..], &[0xff; 40]].concat(),
            status: None,
        };
        rogue.send_frame(&victim_id, corrupt.encode_to_vec());
        wait_refusal(victim, &rogue_id, &format!("document {doc}: "));
    }

    // (b) Status board exchanges: an undecodable record is refused; a
    // record forged in the node's own name, above its seq, is answered by
    // the node's own status above it (the forged package never shows).
    let exchange = |records: Vec<Vec<u8>>| {
        wire::SyncFrame {
            document: None,
            sync_message: vec![],
            status: Some(wire::StatusExchange {
                records,
                ..Default::default()
            }),
        }
        .encode_to_vec()
    };
    rogue.send_frame(&victim_id, exchange(vec![vec![0xff; 16]]));
    wait_refusal(
        victim,
        &rogue_id,
        "status exchange: malformed status record",
    );
    let forged_package: clawmesh_crdt::PackageName = "com.example.forged".parse().unwrap();
    let forged = NodeStatus {
        node_id: victim_id.clone(),
        seq: 1_000,
        packages: [(
            forged_package.clone(),
            PackageStatus {
                state: ReleaseState::Failed,
                version: Some("1.0.0".parse().unwrap()),
                running: None,
                failed_version: None,
                health: Health::Unknown,
                updated_at_ms: 0,
                blobs_held: vec![],
                known_intent_clock: 0,
                detail: "forged".into(),
            },
        )]
        .into(),
    };
    rogue.send_frame(&victim_id, exchange(vec![forged.encode()]));
    wait_for(
        "the node to outrank the forged record of itself",
        CONVERGE,
        || {
            let mesh = status_json(victim)["mesh"].clone();
            let own = mesh["nodes"][&victim_id].clone();
            let refuted = own.get(forged_package.as_str()).is_none() && own.get(COUNTER).is_some();
            if refuted {
                Ok(())
            } else {
                Err(format!("own status {own}"))
            }
        },
    );

    // (c) Heads announcements on the gossip topic. Publishing is retried
    // until the node is subscribed as far as the rogue knows.
    let oversized = wire::HeadsAnnouncement {
        documents: (0..60)
            .map(|i| wire::DocumentHeads {
                document: Some(DocumentId::Catalog.to_wire()),
                heads: vec![vec![i; 32]],
            })
            .collect(),
    }
    .encode_to_vec();
    assert!(
        oversized.len() > clawmesh_crdt::peer::MAX_ANNOUNCEMENT_BYTES,
        "{}",
        oversized.len()
    );
    let oversized_len = oversized.len();
    wait_for("the oversized announcement to be refused", CONVERGE, || {
        let delivery = rogue.publish_heads(oversized.clone());
        let why = format!("announcement is {oversized_len} bytes");
        if refused(victim)
            .iter()
            .any(|r| r.contains(&rogue_id) && r.contains(&why))
        {
            Ok(())
        } else {
            Err(format!("last publish {delivery:?}"))
        }
    });
    wait_for("the malformed announcement to be refused", CONVERGE, || {
        let delivery = rogue.publish_heads(vec![0xff; 64]);
        if refused(victim)
            .iter()
            .any(|r| r.contains(&rogue_id) && r.contains("malformed announcement"))
        {
            Ok(())
        } else {
            Err(format!("last publish {delivery:?}"))
        }
    });

    // Every refusal came from the rogue; nothing reached the documents.
    let all = refused(victim);
    assert!(
        all.iter()
            .all(|r| r.starts_with(&format!("from {rogue_id}: "))),
        "{all:?}"
    );
    assert_eq!(heads(victim), before, "a refused frame changed a document");
    assert_eq!(
        status_json(victim)["mesh"]["targets"][COUNTER]["version"],
        "1.0.0"
    );

    // The node is up and still converges on a later release (the rogue still connected).
    mesh.publisher
        .publish(&mesh.dirs[1], "counter.wasm", COUNTER, "2.0.0", &[]);
    clawmesh_ok(&[
        "release",
        &format!("{COUNTER}@2.0.0"),
        "--key",
        key,
        "--node",
        mesh.node(1),
    ]);
    mesh.wait_target(COUNTER, "2.0.0", CONVERGE);
    mesh.wait_active(COUNTER, "2.0.0", CONVERGE);
    drop(rogue);
}
