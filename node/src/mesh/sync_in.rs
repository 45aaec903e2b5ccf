//! Inbound sync streams: accepted on `/clawmesh/sync/1`, each read in its own
//! task, frame by frame, with the frame limit checked before allocating.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::{PeerId, Stream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{Instrument, debug, warn};

use super::config::MAX_INBOUND_SYNC_STREAMS;
use super::event::NetEvent;
use super::frame::{read_frame_body, read_frame_len};
use super::metrics::MeshMetrics;

/// Everything the acceptor and its readers need.
#[derive(Clone)]
pub(crate) struct SyncReaders {
    pub(crate) events: mpsc::Sender<NetEvent>,
    pub(crate) metrics: MeshMetrics,
    pub(crate) max_frame: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl SyncReaders {
    /// Accepts inbound sync streams until the swarm goes away, reading at
    /// most `MAX_INBOUND_SYNC_STREAMS` at once; readers stop with this task.
    pub(crate) async fn accept(self, mut incoming: libp2p_stream::IncomingStreams) {
        let permits = Arc::new(Semaphore::new(MAX_INBOUND_SYNC_STREAMS));
        let mut readers = JoinSet::new();
        loop {
            tokio::select! {
                next = incoming.next() => {
                    let Some((peer, stream)) = next else { break };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        warn!(%peer, limit = MAX_INBOUND_SYNC_STREAMS, "too many inbound sync streams; dropping one");
                        continue;
                    };
                    let reader = self.clone();
                    let span = tracing::debug_span!("sync_in", %peer);
                    readers.spawn(async move {
                        reader.read(peer, stream).await;
                        drop(permit);
                    }.instrument(span));
                }
                Some(_) = readers.join_next(), if !readers.is_empty() => {}
            }
        }
    }

    /// Reads frames until the stream ends, idles, fails or announces a frame
    /// above the limit; each frame becomes a `NetEvent::SyncFrame`.
    async fn read(self, peer: PeerId, mut stream: Stream) {
        debug!("accepted sync stream");
        loop {
            let len = match timeout(self.idle_timeout, read_frame_len(&mut stream)).await {
                Err(_) => {
                    debug!("sync stream idle; closing");
                    break;
                }
                Ok(Ok(None)) => {
                    debug!("sync stream closed by peer");
                    break;
                }
                Ok(Err(error)) => {
                    debug!(%error, "sync stream failed");
                    break;
                }
                Ok(Ok(Some(len))) => len,
            };
            if len > self.max_frame {
                self.metrics.sync_frames_oversize.inc();
                warn!(
                    len,
                    max = self.max_frame,
                    "sync frame above the limit; closing stream"
                );
                break;
            }
            let bytes = match timeout(self.request_timeout, read_frame_body(&mut stream, len)).await
            {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(error)) => {
                    debug!(%error, len, "sync stream failed inside a frame");
                    break;
                }
                Err(_) => {
                    warn!(len, "sync frame body not received in time; closing stream");
                    break;
                }
            };
            self.metrics.sync_frames_in.inc();
            self.metrics.sync_bytes_in.inc_by(len as u64);
            // Waiting here is back-pressure: a consumer that lags slows this
            // peer's stream, not the swarm.
            if self
                .events
                .send(NetEvent::SyncFrame { from: peer, bytes })
                .await
                .is_err()
            {
                break;
            }
        }
        use futures::AsyncWriteExt as _;
        let _ = timeout(self.request_timeout, stream.close()).await;
    }
}
