use std::collections::HashSet;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::identity::Keypair;

use super::support::{next_frame, start, test_config, wait_connected_to};
use crate::mesh::{SYNC_PROTOCOL, SendError};

const MAX_FRAME: usize = 64 * 1024;
const FRAMES: usize = 50;

/// Frame `i` from `sender`: varied lengths (empty and near the limit
/// included) and contents that identify sender and position.
fn frame(sender: u8, i: usize) -> Vec<u8> {
    let len = if i == 0 { 0 } else { (i * 7919) % MAX_FRAME };
    (0..len).map(|j| sender ^ (i as u8) ^ (j as u8)).collect()
}

async fn two_nodes() -> (super::support::TestNode, super::support::TestNode) {
    let mut cfg = test_config(Keypair::generate_ed25519(), &[]);
    cfg.max_frame = MAX_FRAME;
    cfg.send_queue = FRAMES + 1;
    let mut a = start(cfg).await;
    let mut cfg = test_config(Keypair::generate_ed25519(), &[a.addr.clone()]);
    cfg.max_frame = MAX_FRAME;
    cfg.send_queue = FRAMES + 1;
    let mut b = start(cfg).await;
    wait_connected_to(&mut a.events, &HashSet::from([b.id()])).await;
    wait_connected_to(&mut b.events, &HashSet::from([a.id()])).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_intact_and_in_order_both_ways() {
    let (mut a, mut b) = two_nodes().await;
    let (a_id, b_id) = (a.id(), b.id());
    let (a_handle, b_handle) = (a.handle.clone(), b.handle.clone());
    let a_sends = tokio::spawn(async move {
        for i in 0..FRAMES {
            a_handle.send_sync(b_id, frame(0xA0, i)).await.unwrap();
        }
    });
    let b_sends = tokio::spawn(async move {
        for i in 0..FRAMES {
            b_handle.send_sync(a_id, frame(0x0B, i)).await.unwrap();
        }
    });
    for i in 0..FRAMES {
        assert_eq!(
            next_frame(&mut b.events, a_id).await,
            frame(0xA0, i),
            "frame {i} A→B"
        );
    }
    for i in 0..FRAMES {
        assert_eq!(
            next_frame(&mut a.events, b_id).await,
            frame(0x0B, i),
            "frame {i} B→A"
        );
    }
    a_sends.await.unwrap();
    b_sends.await.unwrap();
    let sent = a.handle.metrics().snapshot();
    assert_eq!(sent.sync_frames_out, FRAMES as u64);
    assert_eq!(sent.sync_frames_in, FRAMES as u64);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_oversize_and_self() {
    let (a, b) = two_nodes().await;
    let err = a
        .handle
        .send_sync(b.id(), vec![0; MAX_FRAME + 1])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SendError::TooLarge {
            len: MAX_FRAME + 1,
            max: MAX_FRAME
        }
    );
    let err = a.handle.send_sync(a.id(), vec![1]).await.unwrap_err();
    assert_eq!(err, SendError::ToSelf);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_length_prefix_closes_only_that_stream() {
    let (mut a, b) = two_nodes().await;
    let a_id = a.id();

    // A raw stream announcing one byte more than A accepts, with no body.
    let mut control = b.handle.stream_control();
    let mut raw = control.open_stream(a_id, SYNC_PROTOCOL).await.unwrap();
    let announced = u32::try_from(MAX_FRAME + 1).unwrap();
    raw.write_all(&announced.to_be_bytes()).await.unwrap();
    raw.flush().await.unwrap();
    // A closes the stream instead of waiting for (or allocating) the body.
    let mut rest = Vec::new();
    let read = raw.read_to_end(&mut rest).await;
    assert!(
        read.is_err() || rest.is_empty(),
        "A answered an oversize frame: {rest:?}"
    );
    assert_eq!(a.handle.metrics().snapshot().sync_frames_oversize, 1);
    assert_eq!(a.handle.metrics().snapshot().sync_frames_in, 0);

    // The connection survives and the next frames get through.
    assert!(a.handle.connected_peers().await.unwrap().contains(&b.id()));
    b.handle.send_sync(a_id, b"after".to_vec()).await.unwrap();
    assert_eq!(next_frame(&mut a.events, b.id()).await, b"after");
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}
