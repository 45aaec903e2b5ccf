//! Publishing a package into a node's stores: verify everything first, then
//! write the blob, then the manifest. A refusal at any check leaves both
//! stores exactly as they were.

use std::path::Path;

use clawmesh_crdt::manifest::{ChunkHashes, SignedManifest};
use clawmesh_crdt::trust::TrustRoot;

use crate::blob_store::{BlobId, BlobStore, PutError};
use crate::package_file::{PackageFileError, read_package_file};
use crate::package_store::{PackageStore, PackageStoreError, StoreOutcome};

/// Why a package was not published. Nothing was stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The file could not be read or decoded.
    #[error(transparent)]
    File(#[from] PackageFileError),
    /// The caller's checksum (the seed's X-Checksum-SHA256) does not match.
    #[error("sha256 mismatch: expected {expected}, actual {actual}; nothing stored")]
    ChecksumMismatch {
        /// What the caller said.
        expected: BlobId,
        /// What the blob hashes to.
        actual: BlobId,
    },
    /// The signed manifest does not verify against the trust root.
    #[error("manifest refused: {0}; nothing stored")]
    Manifest(String),
    /// The blob does not match what the manifest says.
    #[error("blob does not match its manifest: {0}; nothing stored")]
    BlobMismatch(String),
    /// The blob store refused it.
    #[error("blob not stored: {0}")]
    Blob(#[from] PutError),
    /// The manifest store refused it.
    #[error(transparent)]
    Store(#[from] PackageStoreError),
}

/// What was published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// Package name.
    pub package: String,
    /// Version.
    pub version: String,
    /// Blob sha256, hex.
    pub sha256: String,
    /// Blob size.
    pub size: u64,
    /// Chunk count.
    pub chunks: usize,
    /// Key ids whose signatures verified.
    pub signers: Vec<String>,
    /// False when the identical package was already there.
    pub newly_stored: bool,
}

/// Checks a blob against every claim its manifest makes about it.
pub fn check_blob_against_manifest(signed: &SignedManifest, blob: &[u8]) -> Result<(), String> {
    let m = &signed.manifest;
    let actual = BlobId::of(blob);
    if actual.0 != m.sha256 {
        return Err(format!(
            "sha256: manifest says {}, blob hashes to {actual}",
            hex::encode(m.sha256)
        ));
    }
    if blob.len() as u64 != m.size {
        return Err(format!(
            "size: manifest says {} bytes, blob has {}",
            m.size,
            blob.len()
        ));
    }
    let chunks = ChunkHashes::compute(blob, m.chunk_size);
    if let Some(i) = chunks.iter().zip(&m.chunk_sha256).position(|(a, b)| a != b) {
        return Err(format!("chunk {i} hash differs from the manifest's"));
    }
    if chunks.len() != m.chunk_sha256.len() {
        return Err(format!(
            "manifest lists {} chunks, blob has {}",
            m.chunk_sha256.len(),
            chunks.len()
        ));
    }
    Ok(())
}

/// Verifies the package file at `path` and stores it.
#[tracing::instrument(skip(blobs, packages, trust))]
pub fn publish_file(
    path: &Path,
    expected_sha256: Option<BlobId>,
    trust: &TrustRoot,
    blobs: &BlobStore,
    packages: &PackageStore,
) -> Result<Published, PublishError> {
    let pkg = read_package_file(path)?;
    let actual = BlobId::of(&pkg.blob);
    if let Some(expected) = expected_sha256
        && expected != actual
    {
        return Err(PublishError::ChecksumMismatch { expected, actual });
    }
    let signed = SignedManifest::verify(pkg.manifest, trust)
        .map_err(|e| PublishError::Manifest(e.to_string()))?;
    check_blob_against_manifest(&signed, &pkg.blob).map_err(PublishError::BlobMismatch)?;
    let m = &signed.manifest;
    if let Some(existing) = packages.get(&m.name, &m.version, trust)?
        && existing.manifest.sha256 != m.sha256
    {
        return Err(PackageStoreError::VersionTaken {
            package: m.name.to_string(),
            version: m.version.to_string(),
            existing: hex::encode(existing.manifest.sha256),
        }
        .into());
    }
    blobs.put(&pkg.blob, Some(&actual), m.chunk_size)?;
    let outcome = packages.put(&signed, trust)?;
    Ok(Published {
        package: m.name.to_string(),
        version: m.version.to_string(),
        sha256: actual.to_hex(),
        size: m.size,
        chunks: m.chunk_sha256.len(),
        signers: signed.signers.iter().map(ToString::to_string).collect(),
        newly_stored: outcome == StoreOutcome::Stored,
    })
}
