//! Content-addressed blob store: every WASM blob lives under its sha256.
//!
//! Layout under the store root (`<data_dir>/blobs`):
//! - `sha256/<first two hex>/<hex>`: the blob, written once and never edited;
//! - `sha256/<first two hex>/<hex>.chunks`: its chunk size and per-chunk
//!   sha256 list (JSON), so peers can be served and verified chunk by chunk;
//! - `tmp/`: blobs being written; a crash leaves only garbage here;
//! - `lock`: writers take it shared, garbage collection takes it exclusive,
//!   so a collection in one process never races a write in another.
//!
//! A write goes to a temp file, is hashed while written, fsynced and renamed
//! into place, then the directory is fsynced: a blob either is complete and
//! verified or is not there. Concurrent writers of the same blob each rename a
//! complete, identical file, which is harmless. Reads verify again, because
//! disks rot and people edit files.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use clawmesh_crdt::manifest::ChunkHashes;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest blob the store accepts by default (the manifest's own bound).
pub const DEFAULT_MAX_BLOB_BYTES: u64 = clawmesh_crdt::manifest::MAX_BLOB_SIZE;
/// Default bound on the whole store.
pub const DEFAULT_MAX_STORE_BYTES: u64 = 8 << 30;
/// Temp files older than this are leftovers of a crashed writer.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// The sha256 of a blob: its address in the store and on the mesh.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// Hashes `bytes` to find their address.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

/// A sha256 given as text was not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a sha256: {text:?} ({reason})")]
pub struct ParseBlobIdError {
    text: String,
    reason: &'static str,
}

impl FromStr for BlobId {
    type Err = ParseBlobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseBlobIdError {
            text: s.chars().take(80).collect(),
            reason,
        };
        if s.len() != 64 {
            return Err(err("expected 64 hex digits"));
        }
        let bytes = hex::decode(s).map_err(|_| err("not hexadecimal"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| err("expected 32 bytes"))?;
        Ok(Self(arr))
    }
}

/// Bounds of one store.
#[derive(Debug, Clone, Copy)]
pub struct BlobStoreLimits {
    /// Largest single blob.
    pub max_blob_bytes: u64,
    /// Largest total of all blobs.
    pub max_store_bytes: u64,
}

impl Default for BlobStoreLimits {
    fn default() -> Self {
        Self {
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            max_store_bytes: DEFAULT_MAX_STORE_BYTES,
        }
    }
}

/// What the store knows of a blob besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
    /// Chunk size the chunk hashes were computed with.
    pub chunk_size: u32,
    /// sha256 of each chunk, hex.
    pub chunks: Vec<String>,
}

/// An I/O failure, with what was being done and where.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct StoreIoError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreIoError + 'a {
    move |source| StoreIoError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Why a blob was not stored. In every case nothing was added or changed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Larger than the per-blob bound.
    #[error("blob is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// Size offered.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The bytes do not hash to what the caller said they would.
    #[error("sha256 mismatch: expected {expected}, actual {actual}")]
    ChecksumMismatch {
        /// What the caller (or manifest) promised.
        expected: BlobId,
        /// What the bytes hash to.
        actual: BlobId,
    },
    /// The chunk size cannot describe this blob.
    #[error("invalid chunk size {chunk_size}: {reason}")]
    ChunkSize {
        /// Offered chunk size.
        chunk_size: u32,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Storing it would pass the store's total bound.
    #[error("store full: {used} bytes used, {size} more would pass the {limit}-byte limit")]
    StoreFull {
        /// Bytes already stored.
        used: u64,
        /// Size of the new blob.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The disk said no.
    #[error(transparent)]
    Io(#[from] StoreIoError),
}

/// Why a blob could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Not in the store.
    #[error("blob {0} is not in the store")]
    NotFound(BlobId),
    /// The bytes on disk no longer hash to the address; the file was moved
    /// aside to `corrupt/` so it is never served again.
    #[error("blob {id} is corrupt on disk (hashes to {actual}); moved aside")]
    Corrupt {
        /// The address asked for.
        id: BlobId,
        /// What the bytes hash to now.
        actual: BlobId,
    },
    /// A chunk on disk does not match its recorded hash.
    #[error("blob {id} chunk {index} is corrupt on disk")]
    CorruptChunk {
        /// The blob.
        id: BlobId,
        /// Chunk index.
        index: u32,
    },
    /// A chunk index past the end.
    #[error("blob {id} has {count} chunks; chunk {index} asked for")]
    NoSuchChunk {
        /// The blob.
        id: BlobId,
        /// Index asked for.
        index: u32,
        /// Chunks the blob has.
        count: u32,
    },
    /// The chunk list beside the blob is unreadable.
    #[error("chunk list of blob {id} is unreadable: {reason}")]
    BadChunkList {
        /// The blob.
        id: BlobId,
        /// What was wrong.
        reason: String,
    },
    /// The disk said no.
    #[error(transparent)]
    Io(#[from] StoreIoError),
}

/// What a garbage collection did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    /// Blobs deleted.
    pub removed: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Unreferenced blobs kept because something had them pinned.
    pub kept_pinned: Vec<String>,
    /// Stale temp files deleted.
    pub stale_tmp_removed: usize,
}

/// Why garbage collection did not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another process is writing to the store right now.
    #[error("the store is busy (another process is writing to it); try again")]
    Busy,
    /// The disk said no.
    #[error(transparent)]
    Io(#[from] StoreIoError),
}

/// Keeps a blob from being collected while it is alive (a running worker
/// holds one for the blob it runs).
#[derive(Debug)]
pub struct PinGuard {
    id: BlobId,
    pins: Arc<Mutex<HashMap<BlobId, usize>>>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

/// The store. Cheap to clone; clones share pins.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    limits: BlobStoreLimits,
    pins: Arc<Mutex<HashMap<BlobId, usize>>>,
}

impl BlobStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>, limits: BlobStoreLimits) -> Result<Self, StoreIoError> {
        let root = root.into();
        for dir in [root.join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        Ok(Self {
            root,
            limits,
            pins: Arc::default(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this id lives (whether or not it is there).
    pub fn path_of(&self, id: &BlobId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    fn chunks_path_of(&self, id: &BlobId) -> PathBuf {
        let mut p = self.path_of(id).into_os_string();
        p.push(".chunks");
        PathBuf::from(p)
    }

    fn lock(&self, arg: FlockArg) -> Result<Option<Flock<File>>, StoreIoError> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        match Flock::lock(file, arg) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io_err("lock", &path)(io::Error::from(errno))),
        }
    }

    /// Whether the blob is present (not verified: use [`BlobStore::get`]).
    pub fn contains(&self, id: &BlobId) -> bool {
        self.path_of(id).is_file()
    }

    /// Stores `bytes` if they hash to `expected` (when given), computing
    /// chunk hashes with `chunk_size`. Idempotent: storing a blob that is
    /// already present and intact changes nothing.
    #[tracing::instrument(skip(self, bytes), fields(size = bytes.len()))]
    pub fn put(
        &self,
        bytes: &[u8],
        expected: Option<&BlobId>,
        chunk_size: u32,
    ) -> Result<BlobId, PutError> {
        let size = bytes.len() as u64;
        self.check_admissible(size, chunk_size)?;
        let actual = BlobId::of(bytes);
        if let Some(expected) = expected {
            check_expected(expected, actual)?;
        }
        let Some(_shared) = self.begin_store(&actual, size)? else {
            return Ok(actual);
        };
        let info = BlobInfo {
            size,
            chunk_size,
            chunks: ChunkHashes::compute(bytes, chunk_size)
                .into_iter()
                .map(hex::encode)
                .collect(),
        };
        self.finish_store(&actual, &info, |dest| self.write_atomically(dest, bytes))?;
        tracing::debug!(blob = %actual, "stored");
        Ok(actual)
    }

    /// Moves a complete blob file written under this store's `tmp/` (a
    /// fetch's temp file) into place, after re-hashing it whole against
    /// `expected`. Its chunk list is `verified_chunks` when the caller already
    /// checked every chunk against those hashes (a fetch did), or is computed
    /// here with `chunk_size`. On any error the store is unchanged and `file`
    /// is left where it was.
    #[tracing::instrument(skip(self, verified_chunks))]
    pub fn install_file(
        &self,
        file: &Path,
        expected: &BlobId,
        chunk_size: u32,
        verified_chunks: Option<&[[u8; 32]]>,
    ) -> Result<BlobId, PutError> {
        let mut src = File::open(file).map_err(io_err("open", file))?;
        let size = src.metadata().map_err(io_err("stat", file))?.len();
        self.check_admissible(size, chunk_size)?;
        // One pass: the whole-blob hash and each chunk's hash.
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut buf = vec![0u8; chunk_size as usize];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = src.read(&mut buf[filled..]).map_err(io_err("read", file))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            whole.update(&buf[..filled]);
            if verified_chunks.is_none() {
                chunks.push(hex::encode(Sha256::digest(&buf[..filled])));
            }
            if filled < buf.len() {
                break;
            }
        }
        let actual = BlobId(whole.finalize().into());
        if let Some(verified) = verified_chunks {
            chunks = verified.iter().map(hex::encode).collect();
        }
        self.install_checked_file(src, file, size, actual, expected, chunk_size, chunks)
    }

    /// `install_file` for a caller that hashed the file's bytes itself as it
    /// wrote them (a fetch hashes the blob in chunk order while the transfer
    /// runs): `sha256` is that hash and must equal `expected`, and every chunk
    /// of `file` was checked against `verified_chunks`. The file must not
    /// have changed since it was hashed (a fetch holds it locked).
    #[tracing::instrument(skip(self, sha256, verified_chunks))]
    pub fn install_hashed_file(
        &self,
        file: &Path,
        sha256: BlobId,
        expected: &BlobId,
        chunk_size: u32,
        verified_chunks: &[[u8; 32]],
    ) -> Result<BlobId, PutError> {
        let src = File::open(file).map_err(io_err("open", file))?;
        let size = src.metadata().map_err(io_err("stat", file))?.len();
        self.check_admissible(size, chunk_size)?;
        let chunks = verified_chunks.iter().map(hex::encode).collect();
        self.install_checked_file(src, file, size, sha256, expected, chunk_size, chunks)
    }

    #[allow(clippy::too_many_arguments)]
    fn install_checked_file(
        &self,
        src: File,
        file: &Path,
        size: u64,
        actual: BlobId,
        expected: &BlobId,
        chunk_size: u32,
        chunks: Vec<String>,
    ) -> Result<BlobId, PutError> {
        check_expected(expected, actual)?;
        let Some(_shared) = self.begin_store(&actual, size)? else {
            return Ok(actual);
        };
        if chunks.len() as u64 != size.div_ceil(u64::from(chunk_size)) {
            return Err(PutError::ChunkSize {
                chunk_size,
                reason: "the chunk list does not cover the blob",
            });
        }
        let info = BlobInfo {
            size,
            chunk_size,
            chunks,
        };
        self.finish_store(&actual, &info, |dest| {
            src.sync_all().map_err(io_err("fsync", file))?;
            fs::rename(file, dest).map_err(io_err("rename into", dest))
        })?;
        tracing::debug!(blob = %actual, "installed fetched blob");
        Ok(actual)
    }

    /// The bounds every new blob must fit, checked before any work.
    fn check_admissible(&self, size: u64, chunk_size: u32) -> Result<(), PutError> {
        if size > self.limits.max_blob_bytes {
            return Err(PutError::TooLarge {
                size,
                limit: self.limits.max_blob_bytes,
            });
        }
        if chunk_size == 0 || !chunk_size.is_power_of_two() {
            return Err(PutError::ChunkSize {
                chunk_size,
                reason: "must be a power of two",
            });
        }
        Ok(())
    }

    /// Takes the writers' lock for storing `actual`; `None` when it is
    /// already present and intact (nothing to do).
    fn begin_store(&self, actual: &BlobId, size: u64) -> Result<Option<Flock<File>>, PutError> {
        // A blocking lock never reports "would block"; treat it as busy if it does.
        let Some(shared) = self.lock(FlockArg::LockShared)? else {
            let lock = self.root.join("lock");
            return Err(io_err("lock", &lock)(io::Error::from(io::ErrorKind::WouldBlock)).into());
        };
        if self.path_of(actual).is_file() && self.get(actual).is_ok() {
            return Ok(None);
        }
        let used = self.used_bytes()?;
        if used.saturating_add(size) > self.limits.max_store_bytes {
            return Err(PutError::StoreFull {
                used,
                size,
                limit: self.limits.max_store_bytes,
            });
        }
        Ok(Some(shared))
    }

    /// Writes the chunk list, then lets `place` put the blob at its final
    /// path, then fsyncs the directory. The list lands first: a blob file
    /// without its list would be present but unservable, a list without its
    /// blob is just garbage.
    fn finish_store(
        &self,
        actual: &BlobId,
        info: &BlobInfo,
        place: impl FnOnce(&Path) -> Result<(), StoreIoError>,
    ) -> Result<(), StoreIoError> {
        let final_path = self.path_of(actual);
        let dir = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let json = serde_json::to_vec(info)
            .map_err(|e| io_err("encode chunk list", &dir)(io::Error::other(e)))?;
        self.write_atomically(&self.chunks_path_of(actual), &json)?;
        place(&final_path)?;
        sync_dir(&dir)
    }

    fn write_atomically(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreIoError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::Builder::new()
            .prefix("put-")
            .tempfile_in(&tmp_dir)
            .map_err(io_err("create temp file in", &tmp_dir))?;
        tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync", tmp.path()))?;
        tmp.persist(dest)
            .map_err(|e| io_err("rename into", dest)(e.error))?;
        Ok(())
    }

    /// Reads a whole blob and checks it still hashes to its address.
    pub fn get(&self, id: &BlobId) -> Result<Vec<u8>, GetError> {
        let path = self.path_of(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(GetError::NotFound(*id)),
            Err(e) => return Err(io_err("read", &path)(e).into()),
        };
        let actual = BlobId::of(&bytes);
        if actual != *id {
            self.move_aside(id);
            return Err(GetError::Corrupt { id: *id, actual });
        }
        Ok(bytes)
    }

    /// The chunk list kept beside a blob.
    pub fn info(&self, id: &BlobId) -> Result<BlobInfo, GetError> {
        let path = self.chunks_path_of(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(GetError::NotFound(*id)),
            Err(e) => return Err(io_err("read", &path)(e).into()),
        };
        let info: BlobInfo =
            serde_json::from_slice(&bytes).map_err(|e| GetError::BadChunkList {
                id: *id,
                reason: e.to_string(),
            })?;
        let expected_chunks = info.size.div_ceil(u64::from(info.chunk_size.max(1)));
        if info.chunk_size == 0 || info.chunks.len() as u64 != expected_chunks {
            return Err(GetError::BadChunkList {
                id: *id,
                reason: format!(
                    "{} chunks of {} bytes cannot cover {} bytes",
                    info.chunks.len(),
                    info.chunk_size,
                    info.size
                ),
            });
        }
        Ok(info)
    }

    /// Reads chunk `index` of a blob, verified against its recorded hash.
    pub fn read_chunk(&self, id: &BlobId, index: u32) -> Result<Vec<u8>, GetError> {
        let info = self.info(id)?;
        let count = u32::try_from(info.chunks.len()).unwrap_or(u32::MAX);
        let Some(expected_hex) = info.chunks.get(index as usize) else {
            return Err(GetError::NoSuchChunk {
                id: *id,
                index,
                count,
            });
        };
        let offset = u64::from(index) * u64::from(info.chunk_size);
        let len = (info.size - offset).min(u64::from(info.chunk_size));
        let path = self.path_of(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(GetError::NotFound(*id)),
            Err(e) => return Err(io_err("open", &path)(e).into()),
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err("seek", &path))?;
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact(&mut buf).map_err(io_err("read", &path))?;
        if hex::encode(Sha256::digest(&buf)) != *expected_hex {
            return Err(GetError::CorruptChunk { id: *id, index });
        }
        Ok(buf)
    }

    fn move_aside(&self, id: &BlobId) {
        let dir = self.root.join("corrupt");
        if fs::create_dir_all(&dir).is_ok() {
            let _ = fs::rename(self.path_of(id), dir.join(id.to_hex()));
        }
        tracing::warn!(blob = %id, "corrupt blob moved aside");
    }

    /// Every blob present, in address order.
    pub fn list(&self) -> Result<Vec<BlobId>, StoreIoError> {
        let mut out = Vec::new();
        let top = self.root.join("sha256");
        for prefix in fs::read_dir(&top).map_err(io_err("list", &top))? {
            let prefix = prefix.map_err(io_err("list", &top))?.path();
            if !prefix.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&prefix).map_err(io_err("list", &prefix))? {
                let entry = entry.map_err(io_err("list", &prefix))?;
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<BlobId>().ok())
                {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Total bytes of all blobs present.
    pub fn used_bytes(&self) -> Result<u64, StoreIoError> {
        let mut total = 0u64;
        for id in self.list()? {
            let path = self.path_of(&id);
            if let Ok(meta) = fs::metadata(&path) {
                total = total.saturating_add(meta.len());
            }
        }
        Ok(total)
    }

    /// Pins a blob so collection keeps it while the guard lives.
    pub fn pin(&self, id: BlobId) -> PinGuard {
        *self
            .pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(0) += 1;
        PinGuard {
            id,
            pins: Arc::clone(&self.pins),
        }
    }

    /// Deletes every blob not in `keep` and not pinned, and stale temp
    /// files. Refuses to run while another process writes to the store.
    pub fn gc(&self, keep: &BTreeSet<BlobId>) -> Result<GcReport, GcError> {
        let Some(_exclusive) = self.lock(FlockArg::LockExclusiveNonblock)? else {
            return Err(GcError::Busy);
        };
        let mut report = GcReport::default();
        let pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        for id in self.list()? {
            if keep.contains(&id) {
                continue;
            }
            if pins.contains_key(&id) {
                report.kept_pinned.push(id.to_hex());
                continue;
            }
            let path = self.path_of(&id);
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            let chunks = self.chunks_path_of(&id);
            match fs::remove_file(&chunks) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &chunks)(e).into()),
            }
            report.freed_bytes += size;
            report.removed.push(id.to_hex());
        }
        drop(pins);
        let tmp = self.root.join("tmp");
        let now = SystemTime::now();
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))?.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if stale && fs::remove_file(entry.path()).is_ok() {
                report.stale_tmp_removed += 1;
            }
        }
        Ok(report)
    }
}

/// Refuses bytes that do not hash to what the caller expected.
fn check_expected(expected: &BlobId, actual: BlobId) -> Result<(), PutError> {
    if *expected != actual {
        return Err(PutError::ChecksumMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreIoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 64 * 1024;

    fn store(dir: &Path) -> BlobStore {
        BlobStore::open(dir.join("blobs"), BlobStoreLimits::default()).unwrap()
    }

    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n != "lock") {
                    out.push((p.clone(), fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn put_get_round_trip_with_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let id = s.put(&blob, None, CHUNK).unwrap();
        assert_eq!(id, BlobId::of(&blob));
        assert_eq!(s.get(&id).unwrap(), blob);
        let info = s.info(&id).unwrap();
        assert_eq!(info.chunks.len(), 4);
        let mut joined = Vec::new();
        for i in 0..4 {
            joined.extend(s.read_chunk(&id, i).unwrap());
        }
        assert_eq!(joined, blob);
        assert!(matches!(
            s.read_chunk(&id, 4),
            Err(GetError::NoSuchChunk { count: 4, .. })
        ));
        // Idempotent.
        assert_eq!(s.put(&blob, Some(&id), CHUNK).unwrap(), id);
    }

    #[test]
    fn wrong_checksum_is_refused_and_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.put(b"existing", None, CHUNK).unwrap();
        let before = snapshot(dir.path());
        let wrong = BlobId([7; 32]);
        let err = s.put(b"new bytes", Some(&wrong), CHUNK).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&wrong.to_hex()) && msg.contains(&BlobId::of(b"new bytes").to_hex()),
            "{msg}"
        );
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn too_large_and_store_full_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(
            dir.path(),
            BlobStoreLimits {
                max_blob_bytes: 10,
                max_store_bytes: 15,
            },
        )
        .unwrap();
        assert!(matches!(
            s.put(&[0; 11], None, CHUNK),
            Err(PutError::TooLarge {
                size: 11,
                limit: 10
            })
        ));
        s.put(&[1; 10], None, CHUNK).unwrap();
        assert!(matches!(
            s.put(&[2; 10], None, CHUNK),
            Err(PutError::StoreFull { .. })
        ));
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn corruption_on_disk_is_detected_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let id = s.put(b"precious bytes", None, CHUNK).unwrap();
        fs::write(s.path_of(&id), b"precious bytez").unwrap();
        assert!(matches!(
            s.read_chunk(&id, 0),
            Err(GetError::CorruptChunk { .. })
        ));
        assert!(matches!(s.get(&id), Err(GetError::Corrupt { .. })));
        assert!(!s.contains(&id));
        assert!(matches!(s.get(&id), Err(GetError::NotFound(_))));
    }

    #[test]
    fn concurrent_writers_of_one_blob_are_safe() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| s.put(&blob, None, CHUNK).unwrap());
            }
        });
        let id = BlobId::of(&blob);
        assert_eq!(s.get(&id).unwrap(), blob);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn gc_keeps_referenced_and_pinned_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = s.put(b"a", None, CHUNK).unwrap();
        let b = s.put(b"b", None, CHUNK).unwrap();
        let c = s.put(b"c", None, CHUNK).unwrap();
        let pin = s.pin(b);
        let report = s.gc(&BTreeSet::from([a])).unwrap();
        assert_eq!(report.removed, vec![c.to_hex()]);
        assert_eq!(report.kept_pinned, vec![b.to_hex()]);
        assert!(s.contains(&a) && s.contains(&b) && !s.contains(&c));
        drop(pin);
        let report = s.gc(&BTreeSet::from([a])).unwrap();
        assert_eq!(report.removed, vec![b.to_hex()]);
    }

    #[test]
    fn gc_refuses_while_another_writer_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let _writer = s.lock(FlockArg::LockShared).unwrap();
        assert!(matches!(s.gc(&BTreeSet::new()), Err(GcError::Busy)));
    }

    #[test]
    fn install_file_verifies_before_renaming() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 3) as u8).collect();
        let tmp = s.root().join("tmp").join("fetch-test");
        fs::write(&tmp, &blob).unwrap();
        let before = snapshot(&s.root().join("sha256"));
        let wrong = BlobId([1; 32]);
        assert!(matches!(
            s.install_file(&tmp, &wrong, CHUNK, None),
            Err(PutError::ChecksumMismatch { .. })
        ));
        assert_eq!(snapshot(&s.root().join("sha256")), before);
        assert!(tmp.is_file());
        let short = [[0u8; 32]; 3];
        assert!(matches!(
            s.install_file(&tmp, &BlobId::of(&blob), CHUNK, Some(&short)),
            Err(PutError::ChunkSize { .. })
        ));
        let id = s
            .install_file(&tmp, &BlobId::of(&blob), CHUNK, None)
            .unwrap();
        assert!(!tmp.exists());
        assert_eq!(s.get(&id).unwrap(), blob);
        assert_eq!(s.info(&id).unwrap().chunks.len(), 4);
        assert_eq!(s.read_chunk(&id, 3).unwrap(), blob[3 * CHUNK as usize..]);
    }

    #[test]
    fn blob_id_parsing_names_the_problem() {
        assert!(
            "zz".parse::<BlobId>()
                .unwrap_err()
                .to_string()
                .contains("64 hex")
        );
        let not_hex = "g".repeat(64);
        assert!(
            not_hex
                .parse::<BlobId>()
                .unwrap_err()
                .to_string()
                .contains("hexadecimal")
        );
    }
}
