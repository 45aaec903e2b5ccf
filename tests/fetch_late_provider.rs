//! End-to-end: a holder that appears while a fetch runs joins it.
//!
//! The fetcher's only provider when its fetch starts serves wrong bytes:
//! it is banned at its first chunk and the fetch is left with no provider.
//! A second holder, not running when the fetch began, starts and connects
//! to the fetcher; the running fetch's provider lookup finds it and it
//! serves the whole blob. Without late joining the fetch ends with
//! `no_providers` before the second holder exists.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clawmesh_e2e::{NodeProcess, Publisher, clawmesh_ok, s, wait_catalog_lists};
use clawmesh_node::blob_store::BlobId;

const CONVERGE: Duration = Duration::from_secs(60);
const COUNTER: &str = "dev.clawmesh.counter";
/// How long the fetcher's starved fetch keeps looking for a provider
/// (`CLAWMESH_FETCH_JOIN_WAIT_MS`): long enough for a node process to start
/// on a loaded machine; the test waits on the fetch's own answer, not this.
const JOIN_WAIT_MS: &str = "60000";

fn peer_of(node: &NodeProcess) -> String {
    let addr = node.info["p2p"][0].as_str().expect("p2p address");
    addr.rsplit('/').next().unwrap().to_string()
}

/// The one blob file in a node's store.
fn blob_file(node_dir: &Path) -> PathBuf {
    let top = node_dir.join("blobs").join("sha256");
    let mut files = Vec::new();
    for shard in std::fs::read_dir(&top).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_none() {
                files.push(path);
            }
        }
    }
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}

#[test]
fn a_holder_that_starts_during_a_fetch_whose_only_provider_lies_completes_it() {
    let root = tempfile::tempdir().unwrap();
    let [liar_dir, late_dir, fetcher_dir] =
        ["liar", "late", "fetcher"].map(|n| root.path().join(n));
    let publisher = Publisher::new(root.path(), &[&liar_dir, &late_dir, &fetcher_dir]);
    // One package: published on the running liar (so it reaches the
    // catalog), stored on the late holder before that one ever runs.
    let liar = NodeProcess::start(&liar_dir, &[]);
    let liar_id = peer_of(&liar);
    let pkg = publisher.pack("counter.wasm", COUNTER, "1.0.0", &[]);
    for dir in [&liar_dir, &late_dir] {
        clawmesh_ok(&["publish", s(&pkg), "--node", s(dir)]);
    }
    // The liar's copy rots after it was stored: its server's cheap check
    // (chunk list, file size) passes, the bytes are wrong.
    let rotten = blob_file(&liar_dir);
    let mut bytes = std::fs::read(&rotten).unwrap();
    let blob = BlobId::of(&bytes);
    for b in bytes.iter_mut().step_by(97) {
        *b ^= 0x5a;
    }
    let mut perms = std::fs::metadata(&rotten).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&rotten, perms).unwrap();
    std::fs::write(&rotten, &bytes).unwrap();

    let fetcher_addr_of = |n: &NodeProcess| n.info["p2p"][0].as_str().unwrap().to_string();
    let fetcher = NodeProcess::start_with_env(
        &fetcher_dir,
        &["--bootstrap", &fetcher_addr_of(&liar)],
        &[("CLAWMESH_FETCH_JOIN_WAIT_MS", JOIN_WAIT_MS)],
    );
    wait_catalog_lists(
        "the fetcher to learn 1.0.0 from the liar's catalog",
        &fetcher_dir,
        COUNTER,
        "1.0.0",
        CONVERGE,
    );

    // The fetch starts: its providers are the liar alone (the late holder
    // does not run yet). Its first progress line says it runs.
    let stream = UnixStream::connect(fetcher_dir.join("admin.sock")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut request = serde_json::to_vec(
        &serde_json::json!({"op": "fetch", "package": COUNTER, "version": "1.0.0"}),
    )
    .unwrap();
    request.push(b'\n');
    (&stream).write_all(&request).unwrap();
    let mut lines = BufReader::new(&stream).lines();
    let mut next_line = || -> serde_json::Value {
        let line = lines.next().expect("an answer line").unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let first = next_line();
    assert_eq!(first["ok"]["kind"], "progress", "{first}");

    // The late holder starts now and connects to the fetcher.
    let late = NodeProcess::start(&late_dir, &["--bootstrap", &fetcher_addr_of(&fetcher)]);
    let late_id = peer_of(&late);

    let done = loop {
        let line = next_line();
        if line["ok"]["kind"] != "progress" {
            break line;
        }
    };
    let report = &done["ok"];
    assert_eq!(report["kind"], "done", "{done}");
    assert_eq!(report["blob"], blob.to_hex(), "{done}");
    let size = report["size"].as_u64().unwrap();
    assert_eq!(report["fetched_bytes"].as_u64(), Some(size), "{done}");
    let used: Vec<&str> = report["peers_used"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["peer"].as_str())
        .collect();
    assert_eq!(used, vec![late_id.as_str()], "{done}");
    let liars: Vec<&str> = report["liars"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["peer"].as_str())
        .collect();
    assert_eq!(liars, vec![liar_id.as_str()], "{done}");

    let store = clawmesh_node::data_dir::DataDir::new(&fetcher_dir)
        .blob_store()
        .unwrap();
    assert_eq!(BlobId::of(&store.get(&blob).unwrap()), blob);
    drop((liar, late, fetcher));
}
