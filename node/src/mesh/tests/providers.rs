//! DHT provider records between real swarms on loopback: a lookup finds a
//! provider through a node that stored its record, and records a peer
//! forges or that break the store's rules are refused.

use std::collections::HashSet;
use std::time::Duration;

use futures::AsyncWriteExt as _;
use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::support::{TestNode, WAIT, start, test_config, wait_connected_to};
use crate::mesh::{KAD_PROTOCOL, LookupError, MeshMetricsSnapshot};

const LOOKUP: Duration = Duration::from_secs(10);

/// Polls the node's metrics until `done` holds; the metrics are the only
/// outside view of what the swarm task stored.
async fn wait_metrics(node: &TestNode, what: &str, done: impl Fn(&MeshMetricsSnapshot) -> bool) {
    let polled = tokio::time::timeout(WAIT, async {
        loop {
            if done(&node.handle.metrics().snapshot()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    polled.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}: {:?}",
            node.handle.metrics().snapshot()
        )
    });
}

async fn joined(bootstrap: &TestNode) -> TestNode {
    let mut node = start(test_config(
        Keypair::generate_ed25519(),
        std::slice::from_ref(&bootstrap.addr),
    ))
    .await;
    wait_connected_to(&mut node.events, &HashSet::from([bootstrap.id()])).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_is_found_through_the_node_that_stored_its_record() {
    let hub = start(test_config(Keypair::generate_ed25519(), &[])).await;
    let holder = joined(&hub).await;
    let blob = [7u8; 32];
    holder.handle.start_providing(blob).await.unwrap();
    // Providing twice is one record.
    holder.handle.start_providing(blob).await.unwrap();
    assert_eq!(holder.handle.provided_blobs().await.unwrap(), vec![blob]);
    wait_metrics(&hub, "the hub to store the holder's record", |m| {
        m.provider_records == 1
    })
    .await;

    let fetcher = joined(&hub).await;
    let found = fetcher.handle.get_providers(blob, 4, LOOKUP).await.unwrap();
    assert_eq!(found, vec![holder.id()]);
    // The provider was dialled before the answer.
    assert!(
        fetcher
            .handle
            .connected_peers()
            .await
            .unwrap()
            .contains(&holder.id())
    );
    // Nobody provides this one: an empty answer, not an error.
    let none = fetcher.handle.get_providers([8u8; 32], 4, LOOKUP).await;
    assert_eq!(none, Ok(Vec::new()));
    let m = fetcher.handle.metrics().snapshot();
    assert_eq!(
        (
            m.provider_lookups,
            m.provider_lookup_hits,
            m.providers_found
        ),
        (2, 1, 1)
    );
    assert_eq!(
        fetcher.handle.get_providers(blob, 0, LOOKUP).await,
        Err(LookupError::Empty)
    );

    // Once the holder stops providing, it no longer lists the blob itself.
    holder.handle.stop_providing(blob).await.unwrap();
    assert!(holder.handle.provided_blobs().await.unwrap().is_empty());
    assert_eq!(holder.handle.metrics().snapshot().blobs_provided, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_provided_before_any_peer_reaches_the_first_one_to_connect() {
    // Alone: the publication reaches nobody (kad would only try again at
    // the next re-publication, an hour later).
    let holder = start(test_config(Keypair::generate_ed25519(), &[])).await;
    let blob = [9u8; 32];
    holder.handle.start_providing(blob).await.unwrap();
    // A peer joins through the holder: the next bootstrap tick (1 s in
    // tests) publishes the record again, and the peer stores it.
    let hub = joined(&holder).await;
    wait_metrics(&hub, "the holder's record to reach the peer", |m| {
        m.provider_records == 1
    })
    .await;
}

/// A Kademlia `ADD_PROVIDER` message (libp2p's dht.proto), length-prefixed
/// as kad's codec reads it: type = 2, key, one provider peer.
fn add_provider_message(key: &[u8], provider: &PeerId) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2);
        varint(out, bytes.len());
        out.extend_from_slice(bytes);
    }
    fn varint(out: &mut Vec<u8>, mut n: usize) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut peer = Vec::new();
    field(&mut peer, 1, &provider.to_bytes());
    let mut message = vec![0x08, 0x02];
    field(&mut message, 2, key);
    field(&mut message, 9, &peer);
    let mut framed = Vec::new();
    varint(&mut framed, message.len());
    framed.extend_from_slice(&message);
    framed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_provider_records_are_refused() {
    let node = start(test_config(Keypair::generate_ed25519(), &[])).await;
    let rogue = joined(&node).await;
    let victim = PeerId::random();
    let (forged_key, honest_key) = ([1u8; 32], [2u8; 32]);

    let mut stream = rogue
        .handle
        .stream_control()
        .open_stream(node.id(), KAD_PROTOCOL)
        .await
        .unwrap();
    // In order on one stream: a record naming another peer as provider, a
    // key that is not a sha256, then an honest record (the rogue itself).
    for message in [
        add_provider_message(&forged_key, &victim),
        add_provider_message(b"short", &rogue.id()),
        add_provider_message(&honest_key, &rogue.id()),
    ] {
        stream.write_all(&message).await.unwrap();
    }
    stream.flush().await.unwrap();
    wait_metrics(&node, "the honest record and the short key", |m| {
        m.provider_records_stored == 1 && m.provider_records_refused == 1
    })
    .await;
    stream.close().await.unwrap();

    // The forged record came first on the stream: it is not in the store.
    assert_eq!(node.handle.metrics().snapshot().provider_records, 1);
    let forged = node.handle.get_providers(forged_key, 4, LOOKUP).await;
    assert_eq!(forged, Ok(Vec::new()));
    let honest = node.handle.get_providers(honest_key, 4, LOOKUP).await;
    assert_eq!(honest, Ok(vec![rogue.id()]));
}
