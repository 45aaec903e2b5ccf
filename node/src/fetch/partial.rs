//! `PartialBlob`: a fetch's temp file under the store's `tmp/`, written
//! chunk by chunk at each chunk's offset and resumable: reopening it finds
//! the chunks already there by hashing them against the manifest. The whole
//! blob's sha256 is computed as the file fills, over the contiguous prefix of
//! held chunks in chunk order, so the final check costs no extra pass. It
//! becomes a blob only through `finish`, which compares that hash with the
//! manifest's and only then renames the file into the store; until then the
//! store itself is untouched.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::layout::ChunkLayout;
use crate::blob_store::{BlobId, BlobStore, PutError};

/// Why a partial blob could not be opened, written or finished.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    /// The manifest's size, chunk size and chunk list disagree.
    #[error(
        "blob {blob}: manifest layout is inconsistent ({size} bytes, chunk size {chunk_size}, {chunks} chunk hashes)"
    )]
    Layout {
        /// The blob.
        blob: BlobId,
        /// Manifest size.
        size: u64,
        /// Manifest chunk size.
        chunk_size: u32,
        /// Chunk hashes listed.
        chunks: usize,
    },
    /// Another fetch of the same blob holds the temp file.
    #[error("blob {blob} is already being fetched (temp file {path} is locked)")]
    Busy {
        /// The blob.
        blob: BlobId,
        /// The temp file.
        path: PathBuf,
    },
    /// A chunk index past the end, or bytes of the wrong length.
    #[error("chunk {index}: {len} bytes given, {expected} expected")]
    ChunkLength {
        /// Chunk index.
        index: u32,
        /// Bytes given.
        len: usize,
        /// The chunk's length per the manifest.
        expected: u32,
    },
    /// `finish` was called with chunks still missing.
    #[error("blob {blob}: {missing} chunks still missing")]
    Incomplete {
        /// The blob.
        blob: BlobId,
        /// How many.
        missing: usize,
    },
    /// The disk said no.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The store refused the finished file (it did not hash to the blob's
    /// address, or the store is full); the store is unchanged.
    #[error(transparent)]
    Install(#[from] PutError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PartialError + 'a {
    move |source| PartialError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A blob being fetched.
#[derive(Debug)]
pub struct PartialBlob {
    store: BlobStore,
    layout: ChunkLayout,
    path: PathBuf,
    file: Flock<File>,
    held: Vec<bool>,
    /// sha256 of chunks `0..prefix_next`, all held.
    prefix: Sha256,
    prefix_next: u32,
    /// Bytes written since the last sync request.
    unsynced: u64,
    /// Syncs the file on its own thread, so writing never waits for the disk.
    syncer: Option<Syncer>,
}

/// A thread that fsyncs one file when asked, so its writer never waits for
/// the disk.
#[derive(Debug)]
pub(crate) struct Syncer {
    /// One pending request at most: a sync asked while one is queued is
    /// covered by it.
    ask: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl Syncer {
    /// Starts the thread syncing `file` (a duplicate of the writer's handle).
    pub(crate) fn start(file: File) -> io::Result<Self> {
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("fetch-sync".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Self { ask, thread })
    }

    /// Asks for a sync; a request already queued covers this one.
    pub(crate) fn ask(&self) {
        let _ = self.ask.try_send(());
    }

    /// Waits for the syncs asked so far; the first error, if any.
    pub(crate) fn stop(self) -> io::Result<()> {
        drop(self.ask);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the fetch's sync thread panicked")))
    }
}

/// A sync of the file is asked each time this much more of it is written
/// (in arrival order, not hashed order: the disk starts on a chunk as soon
/// as it is in); it runs on a thread of its own while the transfer goes on,
/// so the fsync before the rename finds little left to write.
pub(crate) const SYNC_STEP: u64 = 16 << 20;

impl PartialBlob {
    /// The temp file a fetch of `blob` writes to.
    pub fn path_for(store: &BlobStore, blob: &BlobId) -> PathBuf {
        store
            .root()
            .join("tmp")
            .join(format!("fetch-{}.partial", blob.to_hex()))
    }

    /// Opens (or resumes) the temp file for `layout`. Chunks already in it
    /// count as held only if they hash to the manifest's chunk hash.
    pub fn open(store: &BlobStore, layout: ChunkLayout) -> Result<Self, PartialError> {
        if !layout.is_consistent() {
            return Err(PartialError::Layout {
                blob: layout.blob,
                size: layout.size,
                chunk_size: layout.chunk_size,
                chunks: layout.chunk_count(),
            });
        }
        let path = Self::path_for(store, &layout.blob);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(PartialError::Busy {
                    blob: layout.blob,
                    path,
                });
            }
            Err((_, errno)) => return Err(io_err("lock", &path)(io::Error::from(errno))),
        };
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let mut held = vec![false; layout.chunk_count()];
        if len == layout.size {
            // Resume: keep what verifies, refetch the rest.
            let mut buf = vec![0u8; layout.chunk_size as usize];
            file.seek(SeekFrom::Start(0))
                .map_err(io_err("seek", &path))?;
            for (i, slot) in held.iter_mut().enumerate() {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let chunk = &mut buf[..layout.chunk_len(index) as usize];
                file.read_exact(chunk).map_err(io_err("read", &path))?;
                *slot = Sha256::digest(&*chunk).as_slice() == layout.chunk_sha256[i].as_slice();
            }
        } else {
            file.set_len(0).map_err(io_err("truncate", &path))?;
            file.set_len(layout.size).map_err(io_err("size", &path))?;
        }
        Ok(Self {
            store: store.clone(),
            layout,
            path,
            file,
            held,
            prefix: Sha256::new(),
            prefix_next: 0,
            unsynced: 0,
            syncer: None,
        })
    }

    /// Which chunks are held (verified) already.
    pub fn held(&self) -> &[bool] {
        &self.held
    }

    /// The blob's layout.
    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    /// Writes chunk `index` at its offset. Call it only with bytes the
    /// planner accepted (verified); `finish` re-hashes everything anyway.
    pub(crate) fn write_chunk(&mut self, index: u32, bytes: &[u8]) -> Result<(), PartialError> {
        let expected = self.layout.chunk_len(index);
        if expected == 0 || bytes.len() != expected as usize {
            return Err(PartialError::ChunkLength {
                index,
                len: bytes.len(),
                expected,
            });
        }
        self.file
            .write_all_at(bytes, self.layout.offset(index))
            .map_err(io_err("write", &self.path))?;
        self.held[index as usize] = true;
        self.sync_behind(bytes.len())?;
        self.advance_prefix(Some((index, bytes)))
    }

    /// Hashes the held chunks that now follow the hashed prefix, in order:
    /// `just_written` from memory, the others read back from the file.
    fn advance_prefix(&mut self, just_written: Option<(u32, &[u8])>) -> Result<(), PartialError> {
        let mut buf = Vec::new();
        while let Some(&true) = self.held.get(self.prefix_next as usize) {
            let index = self.prefix_next;
            match just_written {
                Some((i, bytes)) if i == index => self.prefix.update(bytes),
                _ => {
                    buf.resize(self.layout.chunk_len(index) as usize, 0);
                    self.file
                        .read_exact_at(&mut buf, self.layout.offset(index))
                        .map_err(io_err("read", &self.path))?;
                    self.prefix.update(&buf);
                }
            }
            self.prefix_next += 1;
        }
        Ok(())
    }

    /// Asks the sync thread for a sync once `SYNC_STEP` more bytes were
    /// written since the last request, so the disk writes while the
    /// transfer goes on.
    fn sync_behind(&mut self, written: usize) -> Result<(), PartialError> {
        self.unsynced += written as u64;
        if self.unsynced < SYNC_STEP {
            return Ok(());
        }
        if self.syncer.is_none() {
            let file = self.file.try_clone().map_err(io_err("dup", &self.path))?;
            self.syncer = Some(Syncer::start(file).map_err(io_err("start syncing", &self.path))?);
        }
        if let Some(syncer) = &self.syncer {
            syncer.ask();
        }
        self.unsynced = 0;
        Ok(())
    }

    /// Installs the complete file into the store once the whole blob's hash,
    /// taken in chunk order as the chunks came in, equals the manifest's. On
    /// error the store is unchanged.
    pub fn finish(mut self) -> Result<BlobId, PartialError> {
        let missing = self.held.iter().filter(|h| !**h).count();
        if missing > 0 {
            return Err(PartialError::Incomplete {
                blob: self.layout.blob,
                missing,
            });
        }
        // Chunks held since `open` and not yet followed by a written one.
        self.advance_prefix(None)?;
        let sha256 = BlobId(std::mem::take(&mut self.prefix).finalize().into());
        if let Some(syncer) = self.syncer.take() {
            syncer.stop().map_err(io_err("fsync", &self.path))?;
        }
        // `install_hashed_file` fsyncs the file before it renames it into
        // place (a second fsync here cost a device flush for nothing).
        // Every chunk was checked against these hashes before it was written.
        match self.store.install_hashed_file(
            &self.path,
            sha256,
            &self.layout.blob,
            self.layout.chunk_size,
            &self.layout.chunk_sha256,
        ) {
            Ok(id) => Ok(id),
            Err(e) => {
                // A file that hashes wrong would only be found wrong again
                // on resume: start over next time.
                if matches!(e, PutError::ChecksumMismatch { .. }) {
                    let _ = std::fs::remove_file(&self.path);
                }
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_store::BlobStoreLimits;

    const CHUNK: u32 = 64 * 1024;

    fn blob() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 13 % 253) as u8).collect()
    }

    fn chunk(bytes: &[u8], i: u32) -> &[u8] {
        let s = (i * CHUNK) as usize;
        &bytes[s..(s + CHUNK as usize).min(bytes.len())]
    }

    #[test]
    fn resumes_with_the_chunks_already_written_and_installs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), BlobStoreLimits::default()).unwrap();
        let bytes = blob();
        let layout = ChunkLayout::of_bytes(&bytes, CHUNK);
        let mut partial = PartialBlob::open(&store, layout.clone()).unwrap();
        assert!(matches!(
            PartialBlob::open(&store, layout.clone()),
            Err(PartialError::Busy { .. })
        ));
        partial.write_chunk(0, chunk(&bytes, 0)).unwrap();
        partial.write_chunk(3, chunk(&bytes, 3)).unwrap();
        assert!(matches!(
            partial.write_chunk(1, b"short"),
            Err(PartialError::ChunkLength { .. })
        ));
        drop(partial);
        let partial = PartialBlob::open(&store, layout.clone()).unwrap();
        assert_eq!(partial.held(), &[true, false, false, true, false]);
        assert!(matches!(
            partial.finish(),
            Err(PartialError::Incomplete { missing: 3, .. })
        ));
        let mut partial = PartialBlob::open(&store, layout.clone()).unwrap();
        for i in [1, 2, 4] {
            partial.write_chunk(i, chunk(&bytes, i)).unwrap();
        }
        let id = partial.finish().unwrap();
        assert_eq!(store.get(&id).unwrap(), bytes);
        assert!(!PartialBlob::path_for(&store, &id).exists());
    }

    #[test]
    fn corrupt_file_never_lands_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), BlobStoreLimits::default()).unwrap();
        let bytes = blob();
        let layout = ChunkLayout::of_bytes(&bytes, CHUNK);
        let mut partial = PartialBlob::open(&store, layout.clone()).unwrap();
        let mut wrong = chunk(&bytes, 2).to_vec();
        wrong[7] ^= 1;
        for i in 0..5 {
            let c = if i == 2 { &wrong[..] } else { chunk(&bytes, i) };
            partial.write_chunk(i, c).unwrap();
        }
        assert!(matches!(
            partial.finish(),
            Err(PartialError::Install(PutError::ChecksumMismatch { .. }))
        ));
        assert!(store.list().unwrap().is_empty());
        assert!(!store.contains(&layout.blob));
    }
}
