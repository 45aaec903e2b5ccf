//! Checkpoints on disk: the last state of each package, written atomically
//! (temp file, fsync, rename, fsync of the directory), and the set of
//! packages the node runs, so a restarted node brings them back.
//!
//! File `<checkpoints>/<package>.ckpt`: the magic `CLAWCKP1`, a u32 LE
//! length, that many bytes of JSON metadata ([`CheckpointMeta`]), then the
//! state bytes. The metadata carries their length and crc32.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// First bytes of a checkpoint file.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"CLAWCKP1";

/// Largest checkpoint metadata accepted.
pub const MAX_CHECKPOINT_META: usize = 64 * 1024;

/// Largest checkpoint state accepted (the segment's own bound).
pub const MAX_CHECKPOINT_STATE: u64 = clawmesh_shm::layout::MAX_CAPACITY;

/// Name of the file listing what the node runs.
pub const DEPLOYED_FILE: &str = "deployed.json";

/// What a checkpoint file says about its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Package.
    pub package: String,
    /// Version that was serving when it was taken.
    pub version: String,
    /// State schema.
    pub schema: u32,
    /// Bytes of state.
    pub len: u64,
    /// crc32 of the state.
    pub crc32: u32,
    /// When it was taken, ms since the Unix epoch.
    pub taken_unix_ms: u64,
}

/// A checkpoint read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// The state.
    pub state: Vec<u8>,
}

/// Why a checkpoint or the deployed set could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid checkpoint or deployed set.
    #[error("{path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DurableError + '_ {
    move |source| DurableError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The checkpoint file of `package` under `dir`.
pub fn checkpoint_path(dir: &Path, package: &str) -> PathBuf {
    dir.join(format!("{package}.ckpt"))
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// new one, never a mix, also across a crash.
pub fn write_atomically(path: &Path, bytes: &[&[u8]]) -> Result<(), DurableError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    for part in bytes {
        file.write_all(part).map_err(io(&tmp))?;
    }
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Writes a checkpoint of `package` atomically.
pub fn write_checkpoint(
    dir: &Path,
    meta: &CheckpointMeta,
    state: &[u8],
) -> Result<(), DurableError> {
    let path = checkpoint_path(dir, &meta.package);
    let json = serde_json::to_vec(meta).map_err(|e| DurableError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let len = (json.len() as u32).to_le_bytes();
    write_atomically(&path, &[CHECKPOINT_MAGIC, &len, &json, state])
}

/// Reads `package`'s checkpoint; `None` when there is none.
pub fn read_checkpoint(dir: &Path, package: &str) -> Result<Option<Checkpoint>, DurableError> {
    let path = checkpoint_path(dir, package);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    parse_checkpoint(&bytes)
        .map(Some)
        .map_err(|why| DurableError::Corrupt { path, why })
}

/// Parses checkpoint file bytes (pure; never panics).
pub fn parse_checkpoint(bytes: &[u8]) -> Result<Checkpoint, String> {
    let rest = bytes
        .strip_prefix(CHECKPOINT_MAGIC.as_slice())
        .ok_or("not a checkpoint (bad magic)")?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("truncated metadata length")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_CHECKPOINT_META || len > rest.len() {
        return Err(format!("metadata length {len} is out of bounds"));
    }
    let (json, state) = rest.split_at(len);
    let meta: CheckpointMeta =
        serde_json::from_slice(json).map_err(|e| format!("metadata: {e}"))?;
    if meta.len != state.len() as u64 || meta.len > MAX_CHECKPOINT_STATE {
        return Err(format!(
            "state is {} bytes, metadata says {}",
            state.len(),
            meta.len
        ));
    }
    if clawmesh_shm::checksum(state) != meta.crc32 {
        return Err("state checksum mismatch".into());
    }
    Ok(Checkpoint {
        meta,
        state: state.to_vec(),
    })
}

/// How a deployed package can be started again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedEntry {
    /// Version.
    pub version: String,
    /// `published` (redeploy from the package store) or `wasm` (a dev deploy of a raw blob).
    pub source: String,
    /// The blob's sha256, hex.
    pub sha256: String,
}

/// Reads the deployed set (empty when there is none).
pub fn read_deployed(dir: &Path) -> Result<BTreeMap<String, DeployedEntry>, DurableError> {
    let path = dir.join(DEPLOYED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DurableError::Corrupt {
            path,
            why: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Writes the deployed set atomically.
pub fn write_deployed(
    dir: &Path,
    set: &BTreeMap<String, DeployedEntry>,
) -> Result<(), DurableError> {
    let path = dir.join(DEPLOYED_FILE);
    let json = serde_json::to_vec_pretty(set).map_err(|e| DurableError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    write_atomically(&path, &[&json])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: &[u8]) -> CheckpointMeta {
        CheckpointMeta {
            package: "p".into(),
            version: "1.0.0".into(),
            schema: 1,
            len: state.len() as u64,
            crc32: clawmesh_shm::checksum(state),
            taken_unix_ms: 7,
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &meta(b"one"), b"one").unwrap();
        write_checkpoint(dir.path(), &meta(b"two!"), b"two!").unwrap();
        let back = read_checkpoint(dir.path(), "p").unwrap().unwrap();
        assert_eq!(back.state, b"two!");
        assert_eq!(read_checkpoint(dir.path(), "q").unwrap(), None);
    }

    #[test]
    fn a_corrupt_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &meta(b"state"), b"state").unwrap();
        let path = checkpoint_path(dir.path(), "p");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_checkpoint(dir.path(), "p"),
            Err(DurableError::Corrupt { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_checkpoint(&bytes);
        }
    }

    #[test]
    fn the_deployed_set_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_deployed(dir.path()).unwrap().is_empty());
        let mut set = BTreeMap::new();
        set.insert(
            "p".to_string(),
            DeployedEntry {
                version: "2.0.0".into(),
                source: "published".into(),
                sha256: "ab".into(),
            },
        );
        write_deployed(dir.path(), &set).unwrap();
        assert_eq!(read_deployed(dir.path()).unwrap(), set);
    }
}
