//! Signed manifests this node holds, one file per package version:
//! `<data_dir>/packages/<package>/<version>.manifest` (the encoded
//! `SignedEnvelope`, exactly as signed). Versions are immutable: the same
//! package and version with a different blob is refused, never overwritten.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clawmesh_crdt::manifest::{PackageName, SignedManifest};
use clawmesh_crdt::proto::v1::SignedEnvelope;
use clawmesh_crdt::trust::TrustRoot;
use prost::Message;

use crate::package_file::write_file_atomically;

/// Why a manifest was not stored or read.
#[derive(Debug, thiserror::Error)]
pub enum PackageStoreError {
    /// Same name and version already published with other content.
    #[error(
        "{package}@{version} is already published with blob {existing}; versions are immutable (publish a new version)"
    )]
    VersionTaken {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// sha256 of the blob already published.
        existing: String,
    },
    /// A stored manifest no longer verifies (edited on disk, or trust changed).
    #[error("stored manifest {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The disk said no.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What storing a manifest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored.
    Stored,
    /// The identical manifest was already there.
    AlreadyPresent,
}

/// The manifests of one node.
#[derive(Debug, Clone)]
pub struct PackageStore {
    root: PathBuf,
}

impl PackageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, PackageStoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| PackageStoreError::Io {
            op: "create directory",
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    fn path_of(&self, package: &PackageName, version: &semver::Version) -> PathBuf {
        self.root
            .join(package.as_str())
            .join(format!("{version}.manifest"))
    }

    /// Stores a verified manifest.
    pub fn put(
        &self,
        signed: &SignedManifest,
        trust: &TrustRoot,
    ) -> Result<StoreOutcome, PackageStoreError> {
        let m = &signed.manifest;
        let path = self.path_of(&m.name, &m.version);
        if path.exists() {
            let existing = self.read(&path, trust)?;
            if existing.manifest.sha256 == m.sha256 {
                return Ok(StoreOutcome::AlreadyPresent);
            }
            return Err(PackageStoreError::VersionTaken {
                package: m.name.to_string(),
                version: m.version.to_string(),
                existing: hex::encode(existing.manifest.sha256),
            });
        }
        let io = |op| {
            let path = path.clone();
            move |source| PackageStoreError::Io { op, path, source }
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("create directory"))?;
        }
        write_file_atomically(&path, &signed.envelope.encode_to_vec(), 0o644)
            .map_err(io("write"))?;
        Ok(StoreOutcome::Stored)
    }

    fn read(&self, path: &Path, trust: &TrustRoot) -> Result<SignedManifest, PackageStoreError> {
        let invalid = |reason: String| PackageStoreError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = fs::read(path).map_err(|source| PackageStoreError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let envelope =
            SignedEnvelope::decode(bytes.as_slice()).map_err(|e| invalid(e.to_string()))?;
        SignedManifest::verify(envelope, trust).map_err(|e| invalid(e.to_string()))
    }

    /// Reads and re-verifies one manifest, if present.
    pub fn get(
        &self,
        package: &PackageName,
        version: &semver::Version,
        trust: &TrustRoot,
    ) -> Result<Option<SignedManifest>, PackageStoreError> {
        let path = self.path_of(package, version);
        if !path.exists() {
            return Ok(None);
        }
        self.read(&path, trust).map(Some)
    }

    /// Every stored manifest that still verifies, in (package, version)
    /// order, and the ones that do not with why.
    pub fn list(
        &self,
        trust: &TrustRoot,
    ) -> Result<(Vec<SignedManifest>, Vec<PackageStoreError>), PackageStoreError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PackageStoreError::Io {
                op: "list",
                path,
                source,
            }
        };
        for pkg in fs::read_dir(&self.root).map_err(io(&self.root))? {
            let pkg = pkg.map_err(io(&self.root))?.path();
            if !pkg.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&pkg).map_err(io(&pkg))? {
                let path = entry.map_err(io(&pkg))?.path();
                if path.extension().is_some_and(|e| e == "manifest") {
                    match self.read(&path, trust) {
                        Ok(m) => good.push(m),
                        Err(e) => bad.push(e),
                    }
                }
            }
        }
        good.sort_by(|a, b| {
            (&a.manifest.name, &a.manifest.version).cmp(&(&b.manifest.name, &b.manifest.version))
        });
        Ok((good, bad))
    }
}
