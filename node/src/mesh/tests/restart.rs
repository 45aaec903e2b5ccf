use std::collections::HashSet;

use libp2p::identity::Keypair;

use super::support::{start, test_config, wait_connected_to};
use crate::mesh::{IdentityError, load_or_create_identity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_peer_id_and_is_reachable_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(test_config(
        load_or_create_identity(dir.path()).unwrap(),
        &[],
    ))
    .await;
    let id = first.id();
    first.handle.shutdown().await;

    let mut again = start(test_config(
        load_or_create_identity(dir.path()).unwrap(),
        &[],
    ))
    .await;
    assert_eq!(again.id(), id);
    // A peer that expects that id at the new address connects: the stored
    // key is the one the transport authenticates with.
    let mut other = start(test_config(
        Keypair::generate_ed25519(),
        &[again.addr.clone()],
    ))
    .await;
    wait_connected_to(&mut other.events, &HashSet::from([id])).await;
    wait_connected_to(&mut again.events, &HashSet::from([other.id()])).await;
    again.handle.shutdown().await;
    other.handle.shutdown().await;
}

#[test]
fn corrupt_identity_file_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    load_or_create_identity(dir.path()).unwrap();
    let path = crate::mesh::identity_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, &bytes).unwrap();
    let err = load_or_create_identity(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "corrupt file must be left as it was"
    );
}
