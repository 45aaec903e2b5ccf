//! Where chunks come from: the `ChunkSource` trait the fetch driver talks
//! to, and its libp2p implementation over `/clawmesh/blob/1`.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::plan::RequestId;
use super::wire::{
    BLOB_PROTOCOL, BlobRequest, ChunkHeader, ReadError, read_chunk_header, write_request,
};
use crate::blob_store::BlobId;

/// Default `Libp2pSource::chunk_timeout`.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// One answer of a peer, as the source read it (not yet verified).
#[derive(Debug)]
pub enum SourceReply {
    /// The bytes of a chunk, exactly as long as the manifest says.
    Chunk {
        /// Chunk index.
        index: u32,
        /// Its bytes.
        bytes: Vec<u8>,
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
/// refuse any length other than the wanted one before reading a body, and
/// hand each answer to `replies` as it arrives.
pub trait ChunkSource: Send + Sync + 'static {
    /// Asks `peer` for `chunks` of `blob`.
    fn fetch_chunks(
        &self,
        peer: PeerId,
        blob: BlobId,
        chunks: Vec<WantedChunk>,
        replies: ReplySink,
    ) -> BoxFuture<'static, Result<(), SourceError>>;
}

/// `ChunkSource` over libp2p streams.
#[derive(Clone)]
pub struct Libp2pSource {
    control: libp2p_stream::Control,
    chunk_timeout: Duration,
}

impl Libp2pSource {
    /// A source opening streams through `control` (see `MeshHandle::stream_control`),
    /// waiting at most `chunk_timeout` for the stream to open and for each chunk.
    pub fn new(control: libp2p_stream::Control, chunk_timeout: Duration) -> Self {
        Self {
            control,
            chunk_timeout,
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
        let after = self.chunk_timeout;
        Box::pin(async move {
            let first = chunks.first().map_or(0, |c| c.index);
            let mut stream = match timeout(after, control.open_stream(peer, BLOB_PROTOCOL)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(SourceError::Unreachable {
                        peer,
                        reason: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(SourceError::Unreachable {
                        peer,
                        reason: format!("no stream within {after:?}"),
                    });
                }
            };
            let stream_err = |source: ReadError| SourceError::Stream { peer, source };
            let request = BlobRequest {
                blob,
                chunks: chunks.iter().map(|c| c.index).collect(),
            };
            match timeout(after, write_request(&mut stream, &request)).await {
                Ok(r) => r.map_err(stream_err)?,
                Err(_) => {
                    return Err(SourceError::Timeout {
                        peer,
                        index: first,
                        after,
                    });
                }
            }
            for want in chunks {
                let read = async {
                    let header = read_chunk_header(&mut stream).await.map_err(stream_err)?;
                    if header.index() != want.index {
                        return Err(SourceError::OutOfOrder {
                            peer,
                            expected: want.index,
                            got: header.index(),
                        });
                    }
                    match header {
                        ChunkHeader::NotHeld { index } => Ok(SourceReply::NotHeld { index }),
                        ChunkHeader::Data { index, len } => {
                            if len != want.len {
                                return Err(SourceError::Length {
                                    peer,
                                    index,
                                    expected: want.len,
                                    got: len,
                                });
                            }
                            let mut bytes = vec![0u8; len as usize];
                            stream
                                .read_exact(&mut bytes)
                                .await
                                .map_err(|e| stream_err(ReadError::Io(e)))?;
                            Ok(SourceReply::Chunk { index, bytes })
                        }
                    }
                };
                let reply = match timeout(after, read).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(SourceError::Timeout {
                            peer,
                            index: want.index,
                            after,
                        });
                    }
                };
                if !replies.send(reply).await {
                    break;
                }
            }
            // The answers are all in; a failed close loses nothing.
            let _ = timeout(after, stream.close()).await;
            Ok(())
        })
    }
}
