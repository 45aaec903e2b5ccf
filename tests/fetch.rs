//! Peer-to-peer blob fetch over real libp2p on 127.0.0.1, in one process:
//! a lying holder is banned and named, a holder killed mid-transfer is
//! replaced by the others, and a corrupt chunk never lands in the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use clawmesh_node::blob_store::{BlobId, BlobStore, BlobStoreLimits};
use clawmesh_node::fetch::{
    ChunkFailure, ChunkLayout, ChunkServe, FetchConfig, FetchError, FetchMetrics, FetchProgress,
    LoopbackNode, ServeConfig, fetch_blob, spawn_blob_server, spawn_loopback_node,
};
use clawmesh_node::fetch::{Libp2pSource, PartialBlob};

const CHUNK: u32 = 64 * 1024;
const SIZE: usize = 4 * 1024 * 1024;
/// Bound on waiting for the fetcher's bootstrap connections.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn blob() -> Vec<u8> {
    // Not constant: a chunk swapped for another would not verify.
    (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn store_with(dir: &std::path::Path, name: &str, bytes: Option<&[u8]>) -> BlobStore {
    let store = BlobStore::open(dir.join(name), BlobStoreLimits::default()).unwrap();
    if let Some(bytes) = bytes {
        store.put(bytes, None, CHUNK).unwrap();
    }
    store
}

/// Serves wrong bytes for every even chunk.
struct Liar(BlobStore);

impl ChunkServe for Liar {
    fn chunk(&self, blob: &BlobId, index: u32) -> Option<Vec<u8>> {
        let mut bytes = self.0.chunk(blob, index)?;
        if index.is_multiple_of(2) {
            bytes[0] ^= 0xff;
        }
        Some(bytes)
    }
}

/// Serves `before` chunks, says so on `served`, then stalls until `gate` is dropped.
struct Staller {
    store: BlobStore,
    before: usize,
    count: Mutex<usize>,
    served: Mutex<Option<std_mpsc::Sender<()>>>,
    gate: Mutex<std_mpsc::Receiver<()>>,
}

impl ChunkServe for Staller {
    fn chunk(&self, blob: &BlobId, index: u32) -> Option<Vec<u8>> {
        let mut count = self.count.lock().unwrap();
        if *count < self.before {
            *count += 1;
            return self.store.chunk(blob, index);
        }
        drop(count);
        if let Some(tx) = self.served.lock().unwrap().take() {
            tx.send(()).unwrap();
        }
        // Blocks until the test drops the gate's sender.
        let _ = self.gate.lock().unwrap().recv();
        None
    }
}

async fn holder(source: Arc<dyn ChunkServe>) -> (LoopbackNode, tokio::task::JoinHandle<()>) {
    let node = spawn_loopback_node(Vec::new()).await.unwrap();
    let server = spawn_blob_server(
        &node.mesh,
        source,
        ServeConfig::default(),
        FetchMetrics::default(),
    )
    .unwrap();
    (node, server)
}

fn test_config() -> FetchConfig {
    FetchConfig {
        chunk_timeout: std::time::Duration::from_secs(20),
        ..FetchConfig::default()
    }
}

async fn fetch_from(
    holders: &[&LoopbackNode],
    store: &BlobStore,
    layout: ChunkLayout,
    metrics: &FetchMetrics,
) -> (
    LoopbackNode,
    Result<clawmesh_node::fetch::FetchReport, FetchError>,
) {
    let fetcher = spawn_loopback_node(holders.iter().map(|h| h.addr.clone()).collect())
        .await
        .unwrap();
    let peers: Vec<_> = holders.iter().map(|h| h.peer_id()).collect();
    fetcher
        .wait_connected(&peers, CONNECT_TIMEOUT)
        .await
        .unwrap();
    let source = Arc::new(Libp2pSource::new(
        fetcher.mesh.stream_control(),
        test_config().chunk_timeout,
    ));
    let providers: Vec<_> = holders.iter().map(|h| h.peer_id()).collect();
    let result = fetch_blob(
        store,
        layout,
        providers,
        source,
        &test_config(),
        metrics,
        &FetchProgress::hidden(),
    )
    .await;
    (fetcher, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_holders_one_liar_gives_the_right_blob_and_names_the_liar() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = blob();
    let layout = ChunkLayout::of_bytes(&bytes, CHUNK);
    let (a, _sa) = holder(Arc::new(store_with(dir.path(), "a", Some(&bytes)))).await;
    let (b, _sb) = holder(Arc::new(store_with(dir.path(), "b", Some(&bytes)))).await;
    let (liar, _sl) = holder(Arc::new(Liar(store_with(dir.path(), "liar", Some(&bytes))))).await;
    let store = store_with(dir.path(), "fetcher", None);
    let metrics = FetchMetrics::default();
    let (_fetcher, result) = fetch_from(&[&a, &liar, &b], &store, layout.clone(), &metrics).await;
    let report = result.unwrap();
    assert_eq!(store.get(&layout.blob).unwrap(), bytes);
    assert_eq!(report.liars.len(), 1, "{report:?}");
    assert_eq!(report.liars[0].0, liar.peer_id());
    assert_eq!(
        report.liars[0].1 % 2,
        0,
        "the liar lies on even chunks only"
    );
    assert!(
        report.peers_used.iter().all(|(p, _)| *p != liar.peer_id()),
        "{report:?}"
    );
    assert!(metrics.failures(ChunkFailure::HashMismatch) >= 1);
    assert_eq!(metrics.bytes_in.get(), report.fetched_bytes);
    assert_eq!(report.fetched_bytes, SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_mid_transfer_is_replaced_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = blob();
    let layout = ChunkLayout::of_bytes(&bytes, CHUNK);
    let (served_tx, served_rx) = std_mpsc::channel();
    let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
    let staller = Staller {
        store: store_with(dir.path(), "victim", Some(&bytes)),
        before: 2,
        count: Mutex::new(0),
        served: Mutex::new(Some(served_tx)),
        gate: Mutex::new(gate_rx),
    };
    let (victim, victim_server) = holder(Arc::new(staller)).await;
    let (a, _sa) = holder(Arc::new(store_with(dir.path(), "a", Some(&bytes)))).await;
    let (b, _sb) = holder(Arc::new(store_with(dir.path(), "b", Some(&bytes)))).await;
    let store = store_with(dir.path(), "fetcher", None);
    let metrics = FetchMetrics::default();
    let victim_peer = victim.peer_id();
    let fetch = {
        let store = store.clone();
        let metrics = metrics.clone();
        let addrs = [victim.addr.clone(), a.addr.clone(), b.addr.clone()];
        let peers = vec![victim_peer, a.peer_id(), b.peer_id()];
        let layout = layout.clone();
        tokio::spawn(async move {
            let fetcher = spawn_loopback_node(addrs.to_vec()).await.unwrap();
            fetcher
                .wait_connected(&peers, CONNECT_TIMEOUT)
                .await
                .unwrap();
            let source = Arc::new(Libp2pSource::new(
                fetcher.mesh.stream_control(),
                test_config().chunk_timeout,
            ));
            let r = fetch_blob(
                &store,
                layout,
                peers,
                source,
                &test_config(),
                &metrics,
                &FetchProgress::hidden(),
            )
            .await;
            (fetcher, r)
        })
    };
    // The victim has served its chunks and is now stuck inside a request: kill it.
    tokio::task::spawn_blocking(move || served_rx.recv().unwrap())
        .await
        .unwrap();
    victim.mesh.shutdown().await;
    victim_server.abort();
    let (_fetcher, result) = fetch.await.unwrap();
    drop(gate_tx);
    let report = result.unwrap();
    assert_eq!(store.get(&layout.blob).unwrap(), bytes);
    assert!(report.liars.is_empty());
    let others: u64 = report
        .peers_used
        .iter()
        .filter(|(p, _)| *p != victim_peer)
        .map(|(_, n)| n)
        .sum();
    assert!(others >= layout.chunk_count() as u64 - 2, "{report:?}");
    assert!(
        metrics.failures(ChunkFailure::Stream) + metrics.failures(ChunkFailure::Unreachable) >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunks_never_land_and_no_providers_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = blob();
    let layout = ChunkLayout::of_bytes(&bytes, CHUNK);
    // One liar, and one honest node that does not hold the blob at all.
    let (liar, _sl) = holder(Arc::new(Liar(store_with(dir.path(), "liar", Some(&bytes))))).await;
    let (empty, _se) = holder(Arc::new(store_with(dir.path(), "empty", None))).await;
    let store = store_with(dir.path(), "fetcher", None);
    let metrics = FetchMetrics::default();
    let (_fetcher, result) = fetch_from(&[&liar, &empty], &store, layout.clone(), &metrics).await;
    match result {
        Err(FetchError::NoProviders {
            blob,
            missing,
            liars,
        }) => {
            assert_eq!(blob, layout.blob);
            assert!(!missing.is_empty());
            assert_eq!(liars.len(), 1);
            assert_eq!(liars[0].0, liar.peer_id());
        }
        other => panic!("expected NoProviders, got {other:?}"),
    }
    assert!(!store.contains(&layout.blob));
    assert!(store.list().unwrap().is_empty());
    assert!(metrics.failures(ChunkFailure::NotHeld) >= 1);
    // Whatever the temp file holds is verified chunk by chunk on resume:
    // none of the liar's wrong chunks is counted as held.
    let partial = PartialBlob::open(&store, layout.clone()).unwrap();
    for (i, held) in partial.held().iter().enumerate() {
        if *held {
            assert_eq!(
                i % 2,
                1,
                "chunk {i} held, but the liar never served it right"
            );
        }
    }
}

/// `clawmesh fetch PKG@VERSION --node DIR` with no `--peer`, on real node
/// processes: the node fetches from its mesh (the manifest came through the
/// mesh catalog, the blob from the one peer holding it) and the CLI gets the
/// report over the admin socket; a blob no reachable peer holds exits 4.
#[test]
fn cli_fetch_without_peers_goes_through_the_running_node() {
    use clawmesh_e2e::{Mesh, admin_raw, clawmesh_fails, clawmesh_ok, wait_for};
    const COUNTER: &str = "dev.clawmesh.counter";
    const CONVERGE: std::time::Duration = std::time::Duration::from_secs(60);
    let mut mesh = Mesh::start(2);
    let holder = mesh.bootstrap.rsplit('/').next().unwrap().to_string();
    let catalog_has = |node: usize, version: &str| {
        let request = format!(r#"{{"op":"catalog","package":"{COUNTER}"}}"#);
        let answer = admin_raw(&mesh.dirs[node], &request);
        let versions = answer["ok"]["versions"].clone();
        if versions
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == version))
        {
            Ok(())
        } else {
            Err(format!("{answer}"))
        }
    };
    mesh.publisher
        .publish(&mesh.dirs[0], "counter.wasm", COUNTER, "1.0.0", &[]);
    wait_for("node1 to learn 1.0.0 from the mesh", CONVERGE, || {
        catalog_has(1, "1.0.0")
    });

    let package = format!("{COUNTER}@1.0.0");
    let out = clawmesh_ok(&["fetch", &package, "--node", mesh.node(1), "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["kind"], "done", "{report}");
    let size = report["size"].as_u64().unwrap();
    assert!(size > 0);
    assert_eq!(report["fetched_bytes"].as_u64(), Some(size), "{report}");
    assert_eq!(report["peers_used"][0]["peer"], holder.as_str(), "{report}");
    assert_eq!(report["liars"].as_array().map(Vec::len), Some(0));
    let blob: [u8; 32] = hex::decode(report["blob"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let store = clawmesh_node::data_dir::DataDir::new(&mesh.dirs[1])
        .blob_store()
        .unwrap();
    assert_eq!(BlobId::of(&store.get(&BlobId(blob)).unwrap()), BlobId(blob));

    // Held now: nothing is fetched again.
    let again: serde_json::Value = serde_json::from_str(
        clawmesh_ok(&["fetch", &package, "--node", mesh.node(1), "--json"]).trim(),
    )
    .unwrap();
    assert_eq!(again["fetched_bytes"].as_u64(), Some(0), "{again}");

    // 2.0.0's only holder stops: node1 knows the manifest, nobody serves the blob.
    // Another component, so another blob than the one node1 now holds.
    mesh.publisher
        .publish(&mesh.dirs[0], "counter_v2.wasm", COUNTER, "2.0.0", &[]);
    wait_for("node1 to learn 2.0.0 from the mesh", CONVERGE, || {
        catalog_has(1, "2.0.0")
    });
    mesh.stop(0);
    let err = clawmesh_fails(
        &["fetch", &format!("{COUNTER}@2.0.0"), "--node", mesh.node(1)],
        4,
    );
    assert!(err.contains("no provider"), "{err}");
}
