//! Outbound sync frames: one writer task per peer, owning one reused stream.
//!
//! The swarm task only `try_send`s into a writer's bounded queue, so a slow
//! or dead peer never stalls it. The writer opens `/clawmesh/sync/1` on the
//! first frame, keeps the stream for the frames after it, and closes it after
//! half the idle timeout without frames, so it always goes quiet before the
//! reader at the other end gives up on it.

use std::time::Duration;

use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{Instrument, debug, warn};

use super::config::SYNC_PROTOCOL;
use super::event::NetEvent;
use super::frame::write_frame;
use super::metrics::MeshMetrics;

/// Everything a writer task needs.
pub(crate) struct SyncWriter {
    pub(crate) peer: PeerId,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) frames: mpsc::Receiver<Vec<u8>>,
    pub(crate) events: mpsc::Sender<NetEvent>,
    pub(crate) metrics: MeshMetrics,
    pub(crate) max_frame: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// Why a frame could not be delivered.
#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("opening {SYNC_PROTOCOL} stream timed out")]
    OpenTimeout,
    #[error("opening {SYNC_PROTOCOL} stream: {0}")]
    Open(#[from] libp2p_stream::OpenStreamError),
    #[error("writing frame timed out")]
    WriteTimeout,
    #[error(transparent)]
    Write(#[from] super::frame::WriteFrameError),
}

impl SyncWriter {
    /// Runs until the queue is closed and drained, the stream fails, or the
    /// peer has been idle; the swarm task then forgets this writer.
    pub(crate) fn run(self) -> impl Future<Output = ()> + Send + 'static {
        let span = tracing::debug_span!("sync_out", peer = %self.peer);
        self.write_loop().instrument(span)
    }

    async fn write_loop(mut self) {
        let mut stream: Option<Stream> = None;
        let stream_idle = self.idle_timeout / 2;
        loop {
            let frame = match timeout(stream_idle, self.frames.recv()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_idle) => {
                    // New frames now go to a fresh writer; finish what is queued.
                    self.frames.close();
                    continue;
                }
            };
            if let Err(error) = self.deliver(&mut stream, &frame).await {
                self.frames.close();
                let mut lost = 1;
                while self.frames.try_recv().is_ok() {
                    lost += 1;
                }
                self.metrics.sync_frames_dropped.inc_by(lost as u64);
                warn!(%error, frames = lost, "sync frames undelivered");
                let event = NetEvent::SyncUndelivered {
                    to: self.peer,
                    frames: lost,
                };
                if self.events.try_send(event).is_err() {
                    self.metrics.events_dropped.inc();
                }
                stream = None;
                break;
            }
        }
        if let Some(mut stream) = stream {
            use futures::AsyncWriteExt as _;
            // Closing politely lets the reader see a clean end; a peer that
            // does not acknowledge in time just gets the stream dropped.
            let _ = timeout(self.request_timeout, stream.close()).await;
        }
        debug!("sync writer finished");
    }

    /// Writes `frame` on the current stream, or on a fresh one if there is
    /// none or the current one has failed (the reader may have timed it out).
    async fn deliver(
        &mut self,
        stream: &mut Option<Stream>,
        frame: &[u8],
    ) -> Result<(), DeliverError> {
        if let Some(current) = stream.as_mut() {
            match self.write(current, frame).await {
                Ok(()) => return Ok(()),
                Err(error) => debug!(%error, "reused sync stream failed; reopening"),
            }
            *stream = None;
        }
        let mut fresh = timeout(
            self.request_timeout,
            self.control.open_stream(self.peer, SYNC_PROTOCOL),
        )
        .await
        .map_err(|_| DeliverError::OpenTimeout)??;
        debug!("opened sync stream");
        self.write(&mut fresh, frame).await?;
        *stream = Some(fresh);
        Ok(())
    }

    async fn write(&self, stream: &mut Stream, frame: &[u8]) -> Result<(), DeliverError> {
        timeout(
            self.request_timeout,
            write_frame(stream, frame, self.max_frame),
        )
        .await
        .map_err(|_| DeliverError::WriteTimeout)??;
        self.metrics.sync_frames_out.inc();
        self.metrics.sync_bytes_out.inc_by(frame.len() as u64);
        Ok(())
    }
}
