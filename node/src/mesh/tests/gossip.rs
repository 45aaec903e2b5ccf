use super::support::{start_mesh, wait_for};
use crate::mesh::{MAX_HEADS_BYTES, NetEvent, PublishError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_heads_reach_every_other_node() {
    let mut nodes = start_mesh(3).await;
    let publisher = nodes[0].id();
    let heads = b"heads: 3f2a..".to_vec();
    nodes[0].handle.publish_heads(heads.clone()).await.unwrap();
    for node in &mut nodes[1..] {
        let got = wait_for(&mut node.events, "heads", |event| match event {
            NetEvent::Heads { from, bytes } if *from == publisher => Some(bytes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(got, heads);
    }
    assert_eq!(nodes[0].handle.metrics().snapshot().heads_out, 1);
    for node in &nodes {
        node.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_heads_are_refused_before_gossip() {
    let nodes = start_mesh(2).await;
    let err = nodes[0]
        .handle
        .publish_heads(vec![0; MAX_HEADS_BYTES + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::TooLarge { .. }), "{err}");
    for node in &nodes {
        node.handle.shutdown().await;
    }
}
