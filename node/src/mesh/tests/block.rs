use super::support::{next_frame, start_mesh, wait_for};
use crate::mesh::{NetEvent, SendError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stops_traffic_both_ways_and_unblock_restores_it() {
    let mut nodes = start_mesh(2).await;
    let (a_id, b_id) = (nodes[0].id(), nodes[1].id());

    nodes[0].handle.block(b_id).await.unwrap();
    wait_for(&mut nodes[0].events, "A to drop B", |e| {
        (*e == NetEvent::PeerDisconnected(b_id)).then_some(())
    })
    .await;
    wait_for(&mut nodes[1].events, "B to lose A", |e| {
        (*e == NetEvent::PeerDisconnected(a_id)).then_some(())
    })
    .await;

    // A refuses to send to B outright.
    let err = nodes[0]
        .handle
        .send_sync(b_id, b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err, SendError::Blocked { peer: b_id });
    // B's frame cannot get through: A refuses B's connection, and B is told.
    nodes[1]
        .handle
        .send_sync(a_id, b"y".to_vec())
        .await
        .unwrap();
    let lost = wait_for(
        &mut nodes[1].events,
        "B's frame to be undelivered",
        |e| match e {
            NetEvent::SyncUndelivered { to, frames } if *to == a_id => Some(*frames),
            _ => None,
        },
    )
    .await;
    assert_eq!(lost, 1);
    assert!(
        !nodes[0]
            .handle
            .connected_peers()
            .await
            .unwrap()
            .contains(&b_id)
    );

    nodes[0].handle.unblock(b_id).await.unwrap();
    wait_for(&mut nodes[0].events, "A to reconnect to B", |e| {
        (*e == NetEvent::PeerConnected(b_id)).then_some(())
    })
    .await;
    nodes[0]
        .handle
        .send_sync(b_id, b"z".to_vec())
        .await
        .unwrap();
    assert_eq!(next_frame(&mut nodes[1].events, a_id).await, b"z");
    nodes[1]
        .handle
        .send_sync(a_id, b"w".to_vec())
        .await
        .unwrap();
    assert_eq!(next_frame(&mut nodes[0].events, b_id).await, b"w");
    for node in &nodes {
        node.handle.shutdown().await;
    }
}
