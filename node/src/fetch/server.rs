//! The serving side of `/clawmesh/blob/1`: answers chunk requests from the
//! node's blob store with verified reads, a bounded number of streams at a
//! time, each bounded in time.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncWriteExt as _, StreamExt as _};
use libp2p::Stream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{Instrument as _, debug, warn};

use super::buffers::BufferPool;
use super::metrics::FetchMetrics;
use super::wire::{BLOB_PROTOCOL, ChunkHeader, encode_chunk_header, read_request};
use crate::blob_store::{BlobId, BlobStore, GetError};
use crate::mesh::MeshHandle;

/// Default `ServeConfig::max_streams`.
pub const DEFAULT_MAX_SERVE_STREAMS: usize = 64;
/// Default `ServeConfig::request_timeout`.
pub const DEFAULT_SERVE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `ServeConfig::chunk_timeout`.
pub const DEFAULT_SERVE_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of the blob server.
#[derive(Clone, Copy, Debug)]
pub struct ServeConfig {
    /// Inbound streams served at once; more are closed unanswered.
    pub max_streams: usize,
    /// Time a peer has to send its request once the stream is open.
    pub request_timeout: Duration,
    /// Time to write one chunk to a peer.
    pub chunk_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_streams: DEFAULT_MAX_SERVE_STREAMS,
            request_timeout: DEFAULT_SERVE_REQUEST_TIMEOUT,
            chunk_timeout: DEFAULT_SERVE_CHUNK_TIMEOUT,
        }
    }
}

/// What the server serves chunks from. Reads block (disk), so they run on
/// tokio's blocking pool.
pub trait ChunkServe: Send + Sync + 'static {
    /// Chunk `index` of `blob`, verified; `None` if it is not held.
    fn chunk(&self, blob: &BlobId, index: u32) -> Option<Vec<u8>>;

    /// Chunk `index` of `blob` into `buf` (resized to fit), reusing its
    /// allocation; `false` if it is not held. The default calls `chunk`.
    fn chunk_into(&self, blob: &BlobId, index: u32, buf: &mut Vec<u8>) -> bool {
        match self.chunk(blob, index) {
            Some(bytes) => {
                *buf = bytes;
                true
            }
            None => false,
        }
    }
}

/// Serves with a cheap check only: the chunk list must cover the file and
/// the file must have the listed size. The store verified the blob when it
/// was written, and the fetcher hashes every chunk against the manifest and
/// drops a peer that sends wrong bytes, so re-hashing here would only spend
/// the holder's CPU; a holder whose disk rotted is found out by its fetchers
/// (and by the store's own verified reads).
impl ChunkServe for BlobStore {
    fn chunk(&self, blob: &BlobId, index: u32) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        self.chunk_into(blob, index, &mut buf).then_some(buf)
    }

    fn chunk_into(&self, blob: &BlobId, index: u32, buf: &mut Vec<u8>) -> bool {
        match read_chunk_unverified(self, blob, index, buf) {
            Ok(held) => held,
            Err(error) => {
                warn!(%blob, index, %error, "not serving a chunk the store cannot read");
                false
            }
        }
    }
}

/// Why a held chunk could not be read for serving.
#[derive(Debug, thiserror::Error)]
enum ServeReadError {
    #[error(transparent)]
    Store(#[from] GetError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob file is {on_disk} bytes, its chunk list says {listed}")]
    Size { on_disk: u64, listed: u64 },
}

/// Reads chunk `index` into `buf`; `Ok(false)` if it is not held.
fn read_chunk_unverified(
    store: &BlobStore,
    blob: &BlobId,
    index: u32,
    buf: &mut Vec<u8>,
) -> Result<bool, ServeReadError> {
    let info = match store.info(blob) {
        Ok(info) => info,
        Err(GetError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if index as usize >= info.chunks.len() {
        return Ok(false);
    }
    let offset = u64::from(index) * u64::from(info.chunk_size);
    let len = info
        .size
        .saturating_sub(offset)
        .min(u64::from(info.chunk_size));
    let path = store.path_of(blob);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(&path, e)),
    };
    let on_disk = file.metadata().map_err(|e| io_error(&path, e))?.len();
    if on_disk != info.size {
        return Err(ServeReadError::Size {
            on_disk,
            listed: info.size,
        });
    }
    buf.resize(usize::try_from(len).unwrap_or(0), 0);
    file.read_exact_at(buf, offset)
        .map_err(|e| io_error(&path, e))?;
    Ok(true)
}

fn io_error(path: &std::path::Path, source: io::Error) -> ServeReadError {
    ServeReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The blob protocol is already accepted on this swarm.
#[derive(Debug, thiserror::Error)]
#[error("stream protocol {BLOB_PROTOCOL} is already being served on this swarm")]
pub struct AlreadyServing;

/// Starts serving `/clawmesh/blob/1` on `mesh` from `source`. The server runs
/// until the returned task is aborted.
pub fn spawn_blob_server(
    mesh: &MeshHandle,
    source: Arc<dyn ChunkServe>,
    config: ServeConfig,
    metrics: FetchMetrics,
) -> Result<tokio::task::JoinHandle<()>, AlreadyServing> {
    let incoming = mesh
        .stream_control()
        .accept(BLOB_PROTOCOL)
        .map_err(|_| AlreadyServing)?;
    Ok(tokio::spawn(serve(incoming, source, config, metrics)))
}

/// Answers inbound streams until `incoming` ends.
pub async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    source: Arc<dyn ChunkServe>,
    config: ServeConfig,
    metrics: FetchMetrics,
) {
    let permits = Arc::new(Semaphore::new(config.max_streams.max(1)));
    let buffers = BufferPool::default();
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    metrics.streams_refused.inc();
                    warn!(%peer, limit = config.max_streams, "too many blob streams; refusing one");
                    continue;
                };
                let source = Arc::clone(&source);
                let metrics = metrics.clone();
                let buffers = buffers.clone();
                streams.spawn(async move {
                    answer(stream, source, config, metrics, buffers).await;
                    drop(permit);
                }.instrument(tracing::debug_span!("blob_out", %peer)));
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

async fn answer(
    mut stream: Stream,
    source: Arc<dyn ChunkServe>,
    config: ServeConfig,
    metrics: FetchMetrics,
    buffers: BufferPool,
) {
    let request = match timeout(config.request_timeout, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(error)) => {
            debug!(%error, "bad blob request");
            return;
        }
        Err(_) => {
            debug!("no blob request in time");
            return;
        }
    };
    debug!(blob = %request.blob, chunks = request.chunks.len(), "serving");
    let blob = request.blob;
    // Buffers come from the server's pool and go back to it.
    let read = |index: u32| {
        let src = Arc::clone(&source);
        let mut buf = buffers.take_any();
        tokio::task::spawn_blocking(move || {
            let held = src.chunk_into(&blob, index, &mut buf);
            (held, buf)
        })
    };
    // The next chunk is read from disk while this one is written out.
    let mut next = request.chunks.first().map(|&i| read(i));
    for (at, &index) in request.chunks.iter().enumerate() {
        let Some(reading) = next.take() else { break };
        let (held, body) = reading.await.unwrap_or((false, Vec::new()));
        next = request.chunks.get(at + 1).map(|&i| read(i));
        let header = match u32::try_from(body.len()) {
            Ok(len) if held => ChunkHeader::Data { index, len },
            _ => ChunkHeader::NotHeld { index },
        };
        let sent = if held { &body[..] } else { &[] };
        let write = async {
            stream.write_all(&encode_chunk_header(header)).await?;
            stream.write_all(sent).await
        };
        let written = timeout(config.chunk_timeout, write).await;
        let sent = sent.len() as u64;
        buffers.give(body);
        match written {
            Ok(Ok(())) => {
                metrics.bytes_out.inc_by(sent);
            }
            Ok(Err(error)) => {
                debug!(%error, index, "blob stream failed");
                return;
            }
            Err(_) => {
                debug!(index, "peer too slow to take a chunk; closing");
                return;
            }
        }
    }
    let _ = timeout(config.chunk_timeout, stream.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_store::BlobStoreLimits;

    #[test]
    fn chunks_are_read_into_a_reused_buffer_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), BlobStoreLimits::default()).unwrap();
        let chunk = 64 * 1024;
        let bytes: Vec<u8> = (0..2 * chunk + 100).map(|i| (i % 251) as u8).collect();
        let id = store.put(&bytes, None, chunk as u32).unwrap();
        // One buffer for every read, as the server's pool hands it out.
        let mut buf = vec![0xff; 3 * chunk];
        for (index, range) in [
            (2, 2 * chunk..bytes.len()),
            (0, 0..chunk),
            (1, chunk..2 * chunk),
        ] {
            assert!(store.chunk_into(&id, index, &mut buf));
            assert_eq!(buf, bytes[range], "chunk {index}");
        }
        assert!(
            !store.chunk_into(&id, 3, &mut buf),
            "past the end is not held"
        );
        assert!(
            !store.chunk_into(&BlobId([7; 32]), 0, &mut buf),
            "another blob is not held"
        );
        assert_eq!(
            store.chunk(&id, 1).as_deref(),
            Some(&bytes[chunk..2 * chunk])
        );
    }
}
