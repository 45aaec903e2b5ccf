//! End-to-end: DHT provider records on real `clawmesh node` processes.
//!
//! - A node fetches a blob that no status lists from a holder it is not
//!   connected to: the holder announced the blob as a provider record to the
//!   hub when it was published; the fetcher learns the holder only through a
//!   provider lookup (the hub stored the record), dials it and fetches.
//! - A rogue peer, built from the node crate's own mesh layer, sends the hub
//!   raw Kademlia `ADD_PROVIDER` messages: one naming another peer as the
//!   provider, one whose key is not a sha256, one honest. Only the honest
//!   record is stored.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use clawmesh_e2e::{
    NodeProcess, Publisher, admin, clawmesh_ok, http_get, s, status_json, wait_catalog_lists,
    wait_for,
};
use clawmesh_node::mesh::{
    KAD_PROTOCOL, MeshConfig, MeshHandle, MeshNetwork, load_or_create_identity,
};
use futures::AsyncWriteExt as _;

const CONVERGE: Duration = Duration::from_secs(60);
const COUNTER: &str = "dev.clawmesh.counter";

/// The value of the sample `name` (exact series, labels included) on the
/// node's `/metrics`, if exported.
fn metric(node: &NodeProcess, name: &str) -> Option<f64> {
    let (code, body) = http_get(&format!("{}/metrics", node.http()));
    assert_eq!(code, 200);
    String::from_utf8(body).unwrap().lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn wait_metric(node: &NodeProcess, what: &str, name: &str, done: impl Fn(f64) -> bool) {
    wait_for(what, CONVERGE, || match metric(node, name) {
        Some(v) if done(v) => Ok(()),
        other => Err(format!("{name} = {other:?}")),
    });
}

fn peer_of(node: &NodeProcess) -> String {
    let addr = node.info["p2p"][0].as_str().expect("p2p address");
    addr.rsplit('/').next().unwrap().to_string()
}

fn dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|n| root.join(n)).collect()
}

#[test]
fn a_blob_no_status_lists_is_fetched_from_a_holder_found_through_provider_records() {
    let root = tempfile::tempdir().unwrap();
    let dirs = dirs(root.path(), &["hub", "holder", "fetcher"]);
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let publisher = Publisher::new(root.path(), &refs);
    let hub = NodeProcess::start(&dirs[0], &[]);
    let bootstrap = hub.info["p2p"][0].as_str().unwrap().to_string();
    let holder = NodeProcess::start(&dirs[1], &["--bootstrap", &bootstrap]);
    let holder_id = peer_of(&holder);

    // The fetcher's identity exists before it runs, so the holder refuses
    // it from the start: the two never connect, and the holder never learns
    // the fetcher's addresses.
    let fetcher_id = load_or_create_identity(&dirs[2])
        .unwrap()
        .public()
        .to_peer_id()
        .to_string();
    admin(
        &dirs[1],
        serde_json::json!({"op": "block_peers", "peers": [fetcher_id]}),
    )
    .unwrap();

    // Published on the holder, never released: no status lists the blob.
    // The publish announces it, which provides it on the DHT: the hub, the
    // only peer the holder's query reaches, stores the record.
    publisher.publish(&dirs[1], "counter.wasm", COUNTER, "1.0.0", &[]);
    wait_metric(
        &hub,
        "the hub to store the holder's provider record",
        "clawmesh_mesh_provider_records",
        |v| v >= 1.0,
    );
    wait_metric(
        &holder,
        "the holder to provide its blob",
        "clawmesh_mesh_blobs_provided",
        |v| v == 1.0,
    );

    let fetcher = NodeProcess::start(&dirs[2], &["--bootstrap", &bootstrap]);
    wait_catalog_lists(
        "the fetcher to learn 1.0.0 from the mesh catalog",
        &dirs[2],
        COUNTER,
        "1.0.0",
        CONVERGE,
    );
    // Connected to the hub only: the holder closes every connection the
    // fetcher's DHT queries open to it (the fetcher counts each for the
    // moment the holder takes to refuse it). Nothing is released.
    wait_metric(
        &fetcher,
        "the fetcher to be connected to the hub only",
        "clawmesh_mesh_peers_connected",
        |v| v == 1.0,
    );
    let status = status_json(&dirs[2]);
    assert_eq!(
        status["mesh"]["targets"],
        serde_json::json!({}),
        "nothing is released, so no status lists a blob"
    );

    // The holder accepts the fetcher again; it cannot dial it (it never
    // learnt an address), so the fetcher finds it through the DHT.
    admin(
        &dirs[1],
        serde_json::json!({"op": "unblock_peers", "peers": [fetcher_id]}),
    )
    .unwrap();
    let package = format!("{COUNTER}@1.0.0");
    let out = clawmesh_ok(&["fetch", &package, "--node", s(&dirs[2]), "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["kind"], "done", "{report}");
    let size = report["size"].as_u64().unwrap();
    assert!(size > 0);
    assert_eq!(report["fetched_bytes"].as_u64(), Some(size), "{report}");
    assert_eq!(
        report["peers_used"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(
        report["peers_used"][0]["peer"],
        holder_id.as_str(),
        "{report}"
    );
    let from_kad: Vec<&str> = report["kad_providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(from_kad, vec![holder_id.as_str()], "{report}");
    assert_eq!(
        metric(&fetcher, "clawmesh_mesh_provider_lookup_hits_total"),
        Some(1.0)
    );

    // The fetcher now holds the blob and provides it in turn.
    wait_metric(
        &fetcher,
        "the fetcher to provide the fetched blob",
        "clawmesh_mesh_blobs_provided",
        |v| v == 1.0,
    );
    drop((hub, holder, fetcher));
}

/// A Kademlia `ADD_PROVIDER` message (libp2p's dht.proto), length-prefixed
/// as kad's codec reads it: type = 2, key, one provider peer (its id bytes).
fn add_provider_message(key: &[u8], provider: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut n: usize) {
        while n >= 0x80 {
            out.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2);
        varint(out, bytes.len());
        out.extend_from_slice(bytes);
    }
    let mut peer = Vec::new();
    field(&mut peer, 1, provider);
    let mut message = vec![0x08, 0x02];
    field(&mut message, 2, key);
    field(&mut message, 9, &peer);
    let mut framed = Vec::new();
    varint(&mut framed, message.len());
    framed.extend_from_slice(&message);
    framed
}

/// An in-process mesh peer with an identity of its own.
fn spawn_peer(runtime: &tokio::runtime::Runtime, dir: &Path, bootstrap: &str) -> MeshHandle {
    runtime.block_on(async {
        let mut cfg = MeshConfig::new(load_or_create_identity(dir).unwrap());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.bootstrap = vec![bootstrap.parse().unwrap()];
        let (handle, mut events) = MeshNetwork::spawn(cfg).unwrap();
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        handle
    })
}

#[test]
fn provider_records_naming_another_peer_or_no_blob_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let dirs = dirs(root.path(), &["hub", "rogue", "victim", "observer"]);
    Publisher::new(root.path(), &[&dirs[0]]);
    let hub = NodeProcess::start(&dirs[0], &[]);
    let hub_id = peer_of(&hub);
    let bootstrap = hub.info["p2p"][0].as_str().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rogue = spawn_peer(&runtime, &dirs[1], &bootstrap);
    // The peer the rogue claims provides a blob: a real identity that never joins.
    let victim = load_or_create_identity(&dirs[2])
        .unwrap()
        .public()
        .to_peer_id();
    let (forged_key, honest_key) = ([1u8; 32], [2u8; 32]);

    runtime.block_on(async {
        let hub_peer = tokio::time::timeout(CONVERGE, async {
            loop {
                if let Some(p) = rogue
                    .connected_peers()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|p| p.to_string() == hub_id)
                {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("rogue connected to the hub");
        let mut stream = rogue
            .stream_control()
            .open_stream(hub_peer, KAD_PROTOCOL)
            .await
            .unwrap();
        // In this order on one stream, which the hub reads in order.
        for message in [
            add_provider_message(&forged_key, &victim.to_bytes()),
            add_provider_message(b"not a sha256", &rogue.local_peer_id().to_bytes()),
            add_provider_message(&honest_key, &rogue.local_peer_id().to_bytes()),
        ] {
            stream.write_all(&message).await.unwrap();
        }
        stream.flush().await.unwrap();
        // Kept open until the hub has read all three (closing at once may
        // reset the stream before the last message is read).
        wait_metric(
            &hub,
            "the honest record",
            "clawmesh_mesh_provider_records_stored_total",
            |v| v == 1.0,
        );
        stream.close().await.unwrap();
    });
    // The forged record came first: the store holds only the honest one,
    // and the short key is counted as refused.
    assert_eq!(metric(&hub, "clawmesh_mesh_provider_records"), Some(1.0));
    assert_eq!(
        metric(
            &hub,
            r#"clawmesh_mesh_provider_records_refused_total{reason="not_a_blob_key"}"#
        ),
        Some(1.0)
    );
    // An honest peer asks the hub (a node never lists the asker itself as
    // a provider, so the rogue cannot ask for its own record).
    let observer = spawn_peer(&runtime, &dirs[3], &bootstrap);
    let lookup = |key| {
        runtime
            .block_on(observer.get_providers(key, 4, Duration::from_secs(10)))
            .unwrap()
    };
    assert_eq!(
        lookup(forged_key),
        vec![],
        "the hub lists a provider for the forged key"
    );
    assert_eq!(lookup(honest_key), vec![rogue.local_peer_id()]);
    runtime.block_on(observer.shutdown());
    runtime.block_on(rogue.shutdown());
    drop(hub);
}
