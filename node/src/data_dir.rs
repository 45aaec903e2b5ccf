//! Where a node keeps things under its data directory. One place, so the
//! CLI, the daemon and the tests never disagree about a path.

use std::path::{Path, PathBuf};

use crate::blob_store::{BlobStore, BlobStoreLimits, StoreIoError};
use crate::package_store::{PackageStore, PackageStoreError};

/// A node's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps `root` (created on first write, not here).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Content-addressed blobs.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Signed manifests.
    pub fn packages_dir(&self) -> PathBuf {
        self.root.join("packages")
    }

    /// The node's default trust root.
    pub fn trust_file(&self) -> PathBuf {
        self.root.join("trust.toml")
    }

    /// Addresses a running node writes for scripts (`node.json`).
    pub fn node_json(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// The admin Unix socket of a running node.
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }

    /// The node's persistent libp2p identity.
    pub fn identity_file(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// Persisted CRDT documents.
    pub fn docs_dir(&self) -> PathBuf {
        self.root.join("docs")
    }

    /// Compiled-component cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Skill state checkpoints.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Opens the blob store.
    pub fn blob_store(&self) -> Result<BlobStore, StoreIoError> {
        BlobStore::open(self.blobs_dir(), BlobStoreLimits::default())
    }

    /// Opens the manifest store.
    pub fn package_store(&self) -> Result<PackageStore, PackageStoreError> {
        PackageStore::open(self.packages_dir())
    }
}

/// Loads a trust root file, saying how to make one when it is missing.
pub fn read_trust(path: &Path) -> anyhow::Result<clawmesh_crdt::trust::TrustRoot> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading trust root {} (make one with `clawmesh trust init`)",
            path.display()
        )
    })?;
    clawmesh_crdt::trust::TrustRoot::from_toml(&text)
        .with_context(|| format!("trust root {}", path.display()))
}
