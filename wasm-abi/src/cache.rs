//! The on-disk cache of compiled components, keyed by (blob sha256, engine
//! fingerprint). The fingerprint hashes wasmtime's own compatibility hash
//! (its version, target and compiler settings, tunables, features) together
//! with our engine settings, so a different wasmtime or configuration misses
//! instead of loading code built for something else.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::config::EngineConfig;

/// Whether a load was served from the compile cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled code from the cache.
    Hit,
    /// Compiled the component (and stored it, when a cache dir is set).
    Miss,
}

/// File name extension of cached artifacts.
const ARTIFACT_EXTENSION: &str = "cwasm";

/// Distinguishes temp files written concurrently by one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The compile cache in one directory for one engine.
pub(crate) struct CompileCache {
    dir: PathBuf,
    fingerprint: u64,
}

impl CompileCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine, cfg: &EngineConfig) -> Self {
        // DefaultHasher::new() is SipHash with fixed keys: the same inputs give
        // the same fingerprint in every process built by the same toolchain
        // (a toolchain change only costs a miss).
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        // Our settings that shape compiled code or the pool it must fit.
        cfg.max_memory_bytes.hash(&mut hasher);
        cfg.max_table_elements.hash(&mut hasher);
        cfg.max_instances.hash(&mut hasher);
        Self {
            dir,
            fingerprint: hasher.finish(),
        }
    }

    fn path_for(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir.join(format!(
            "{}-{:016x}.{ARTIFACT_EXTENSION}",
            hex::encode(sha256),
            self.fingerprint
        ))
    }

    /// The cached component for `sha256`, if present and loadable.
    pub(crate) fn get(&self, engine: &Engine, sha256: &[u8; 32]) -> Option<Component> {
        let path = self.path_for(sha256);
        if !path.is_file() {
            return None;
        }
        // SAFETY: `deserialize_file` trusts the file to be wasmtime output for
        // a compatible engine; wasmtime checks the header and compatibility
        // hash but not the machine code. The file is ours: only `put` writes
        // into this directory, it writes a temp file and renames it into
        // place so a reader never sees a partial file, and the name binds the
        // blob's sha256 (verified by the caller) and this engine's
        // fingerprint. The cache directory is private to the node, like its
        // blob store.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"),
                    "cached component unusable; recompiling");
                None
            }
        }
    }

    /// Stores `artifact` (from `Engine::precompile_component`) for `sha256`.
    /// Failure only costs a future miss, so it is logged, not returned.
    pub(crate) fn put(&self, sha256: &[u8; 32], artifact: &[u8]) {
        let path = self.path_for(sha256);
        if let Err(e) = write_atomically(&self.dir, &path, artifact) {
            tracing::warn!(path = %path.display(), error = %e, "could not store compiled component");
        }
    }
}

/// Writes `bytes` to a temp file in `dir`, syncs it, and renames it to `path`.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let temp = dir.join(format!(
        ".tmp-{}-{}.{ARTIFACT_EXTENSION}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cwasm");
        write_atomically(dir.path(), &path, b"one").unwrap();
        write_atomically(dir.path(), &path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn fingerprint_depends_on_limits() {
        let engine = Engine::default();
        let a = CompileCache::new(PathBuf::new(), &engine, &EngineConfig::default());
        let b = CompileCache::new(
            PathBuf::new(),
            &engine,
            &EngineConfig {
                max_memory_bytes: 1 << 20,
                ..EngineConfig::default()
            },
        );
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(
            a.path_for(&[0; 32]),
            CompileCache::new(PathBuf::new(), &engine, &EngineConfig::default()).path_for(&[0; 32])
        );
    }
}
