//! Where chunks come from: the `ChunkSource` trait the fetch driver talks
//! to, and its libp2p implementation over `/clawmesh/blob/1`.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::PeerId;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::buffers::BufferPool;
use super::plan::RequestId;
use super::wire::{
    BLOB_PROTOCOL, BlobRequest, ChunkHeader, ReadError, read_chunk_header, write_request,
};
use crate::blob_store::BlobId;

/// Default `Libp2pSource::chunk_timeout`.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a stream to open (`Libp2pSource` waits the smaller of
/// this and its chunk timeout). Short, because a timed-out open is retried:
/// `libp2p_stream` can park an open made while the first connection to a
/// peer is being set up, and the next attempt finds the connection.
pub const MAX_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer of a peer, as the source read it (not yet verified).
#[derive(Debug)]
pub enum SourceReply {
    /// The bytes of a chunk, exactly as long as the manifest says, and
    /// their sha256 as the source computed it (the planner compares it with
    /// the manifest's; nothing the peer said about the hash is used).
    Chunk {
        /// Chunk index.
        index: u32,
        /// Its bytes.
        bytes: Vec<u8>,
        /// sha256 of `bytes`.
        sha256: [u8; 32],
    },
    /// The peer does not hold this chunk.
    NotHeld {
        /// Chunk index.
        index: u32,
    },
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No stream could be opened (no connection, or the peer does not speak
    /// the blob protocol): the peer is dropped for this blob.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// Reading or writing the stream failed, or the bytes were not the protocol.
    #[error("stream to {peer}: {source}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// The error.
        #[source]
        source: ReadError,
    },
    /// An answer for another chunk than the next one asked for.
    #[error("peer {peer} answered chunk {got}, chunk {expected} was next")]
    OutOfOrder {
        /// The peer.
        peer: PeerId,
        /// The chunk expected next.
        expected: u32,
        /// The chunk announced.
        got: u32,
    },
    /// An answer announcing another length than the manifest's: cut before
    /// reading its body.
    #[error("peer {peer} announced {got} bytes for chunk {index}, the manifest says {expected}")]
    Length {
        /// The peer.
        peer: PeerId,
        /// Chunk index.
        index: u32,
        /// Length per the manifest.
        expected: u32,
        /// Length announced.
        got: u32,
    },
    /// The stream did not open in time: the request is retried (counted as
    /// a failure of the peer), the peer is not dropped at once.
    #[error("no stream to {peer} within {after:?}")]
    OpenTimeout {
        /// The peer.
        peer: PeerId,
        /// The wait.
        after: Duration,
    },
    /// No answer within the chunk timeout.
    #[error("peer {peer} sent nothing for chunk {index} within {after:?}")]
    Timeout {
        /// The peer.
        peer: PeerId,
        /// Chunk waited for.
        index: u32,
        /// The timeout.
        after: Duration,
    },
}

/// What a source task sends the driver.
#[derive(Debug)]
pub(crate) enum DriverMsg {
    Reply(RequestId, SourceReply),
    End(RequestId, Result<(), SourceError>),
}

/// Where a source delivers the answers of one request.
#[derive(Clone, Debug)]
pub struct ReplySink {
    id: RequestId,
    tx: mpsc::Sender<DriverMsg>,
}

impl ReplySink {
    pub(crate) fn new(id: RequestId, tx: mpsc::Sender<DriverMsg>) -> Self {
        Self { id, tx }
    }

    /// Hands one answer to the driver; `false` if the fetch is over (stop reading).
    pub async fn send(&self, reply: SourceReply) -> bool {
        self.tx.send(DriverMsg::Reply(self.id, reply)).await.is_ok()
    }

    pub(crate) async fn end(&self, result: Result<(), SourceError>) {
        // The fetch may be over already; nobody to tell then.
        let _ = self.tx.send(DriverMsg::End(self.id, result)).await;
    }
}

/// A chunk wanted from a peer: its index and its length per the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WantedChunk {
    /// Chunk index.
    pub index: u32,
    /// Bytes the manifest says it has.
    pub len: u32,
}

/// Asks peers for chunks. Implementations read answers in request order,
/// refuse any length other than the wanted one before reading a body, hash
/// each body, and hand each answer to `replies` in request order.
pub trait ChunkSource: Send + Sync + 'static {
    /// Asks `peer` for `chunks` of `blob`.
    fn fetch_chunks(
        &self,
        peer: PeerId,
        blob: BlobId,
        chunks: Vec<WantedChunk>,
        replies: ReplySink,
    ) -> BoxFuture<'static, Result<(), SourceError>>;

    /// Takes back the bytes of a chunk the fetch is done with (written, or
    /// dropped), for reuse by the next answer. The default frees them.
    fn recycle(&self, bytes: Vec<u8>) {
        drop(bytes);
    }
}

/// `ChunkSource` over libp2p streams.
#[derive(Clone)]
pub struct Libp2pSource {
    control: libp2p_stream::Control,
    chunk_timeout: Duration,
    buffers: BufferPool,
}

impl Libp2pSource {
    /// A source opening streams through `control` (see `MeshHandle::stream_control`),
    /// waiting at most `chunk_timeout` for the stream to open and for each chunk.
    pub fn new(control: libp2p_stream::Control, chunk_timeout: Duration) -> Self {
        Self {
            control,
            chunk_timeout,
            buffers: BufferPool::default(),
        }
    }
}

impl ChunkSource for Libp2pSource {
    fn fetch_chunks(
        &self,
        peer: PeerId,
        blob: BlobId,
        chunks: Vec<WantedChunk>,
        replies: ReplySink,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        let mut control = self.control.clone();
        let buffers = self.buffers.clone();
        let after = self.chunk_timeout;
        let open_after = after.min(MAX_OPEN_TIMEOUT);
        Box::pin(async move {
            let first = chunks.first().map_or(0, |c| c.index);
            let mut stream =
                match timeout(open_after, control.open_stream(peer, BLOB_PROTOCOL)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return Err(SourceError::Unreachable {
                            peer,
                            reason: e.to_string(),
                        });
                    }
                    Err(_) => {
                        return Err(SourceError::OpenTimeout {
                            peer,
                            after: open_after,
                        });
                    }
                };
            let request = BlobRequest {
                blob,
                chunks: chunks.iter().map(|c| c.index).collect(),
            };
            match timeout(after, write_request(&mut stream, &request)).await {
                Ok(r) => r.map_err(|source| SourceError::Stream { peer, source })?,
                Err(_) => {
                    return Err(SourceError::Timeout {
                        peer,
                        index: first,
                        after,
                    });
                }
            }
            // The previous chunk is hashed on a blocking thread while the
            // next one is read; answers still go out in request order.
            let mut hashing: Option<JoinHandle<SourceReply>> = None;
            for want in chunks {
                let reply =
                    match timeout(after, read_answer(&mut stream, peer, want, &buffers)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            return Err(SourceError::Timeout {
                                peer,
                                index: want.index,
                                after,
                            });
                        }
                    };
                if let Some(done) = hashing.take()
                    && !replies.send(hashed(done, peer).await?).await
                {
                    return Ok(());
                }
                match reply {
                    Answer::NotHeld { index } => {
                        if !replies.send(SourceReply::NotHeld { index }).await {
                            return Ok(());
                        }
                    }
                    Answer::Data { index, bytes } => {
                        hashing = Some(tokio::task::spawn_blocking(move || {
                            let sha256 = Sha256::digest(&bytes).into();
                            SourceReply::Chunk {
                                index,
                                bytes,
                                sha256,
                            }
                        }));
                    }
                }
            }
            if let Some(done) = hashing.take()
                && !replies.send(hashed(done, peer).await?).await
            {
                return Ok(());
            }
            // The answers are all in; a failed close loses nothing.
            let _ = timeout(after, stream.close()).await;
            Ok(())
        })
    }

    fn recycle(&self, bytes: Vec<u8>) {
        self.buffers.give(bytes);
    }
}

/// One answer as read off the stream, not yet hashed.
enum Answer {
    NotHeld { index: u32 },
    Data { index: u32, bytes: Vec<u8> },
}

/// Reads the answer for `want`: its header, checked against the request
/// and the manifest's length before any body byte is read, then the body.
async fn read_answer(
    stream: &mut libp2p::Stream,
    peer: PeerId,
    want: WantedChunk,
    buffers: &BufferPool,
) -> Result<Answer, SourceError> {
    let header = read_chunk_header(stream)
        .await
        .map_err(|source| SourceError::Stream { peer, source })?;
    if header.index() != want.index {
        return Err(SourceError::OutOfOrder {
            peer,
            expected: want.index,
            got: header.index(),
        });
    }
    match header {
        ChunkHeader::NotHeld { index } => Ok(Answer::NotHeld { index }),
        ChunkHeader::Data { index, len } => {
            if len != want.len {
                return Err(SourceError::Length {
                    peer,
                    index,
                    expected: want.len,
                    got: len,
                });
            }
            // Only now, with the length checked against the manifest.
            let mut bytes = buffers.take(len as usize);
            if let Err(e) = stream.read_exact(&mut bytes).await {
                buffers.give(bytes);
                return Err(SourceError::Stream {
                    peer,
                    source: ReadError::Io(e),
                });
            }
            Ok(Answer::Data { index, bytes })
        }
    }
}

async fn hashed(task: JoinHandle<SourceReply>, peer: PeerId) -> Result<SourceReply, SourceError> {
    task.await.map_err(|e| SourceError::Stream {
        peer,
        source: ReadError::Io(std::io::Error::other(e)),
    })
}
