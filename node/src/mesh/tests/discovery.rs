use std::collections::HashSet;

use super::support::start_mesh;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_knowing_one_bootstrap_all_connect() {
    let nodes = start_mesh(5).await;
    let ids: HashSet<_> = nodes.iter().map(|n| n.id()).collect();
    for node in &nodes {
        let peers: HashSet<_> = node
            .handle
            .connected_peers()
            .await
            .unwrap()
            .into_iter()
            .collect();
        let others: HashSet<_> = ids.iter().copied().filter(|id| *id != node.id()).collect();
        assert!(others.is_subset(&peers), "{} sees {peers:?}", node.id());
        assert_eq!(node.handle.metrics().snapshot().peers_connected, 4);
    }
    for node in &nodes {
        node.handle.shutdown().await;
    }
}
