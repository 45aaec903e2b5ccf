//! Deploying a package this node holds: the path shared by the admin socket
//! (`clawmesh deploy`, the sidecar) and the mesh's release controller.

use std::time::{Duration, Instant};

use clawmesh_crdt::manifest::{PackageName, SignedManifest};
use serde::Serialize;

use super::NodeContext;
use crate::blob_store::{BlobId, GetError};
use crate::runtime::{DeployError, SkillLimits, SkillSpec};

/// Why a local deploy did not happen. The running version, if any, keeps
/// serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum LocalDeployError {
    /// The request named something that cannot be a package or version.
    #[error("{0}")]
    BadRequest(String),
    /// Not in this node's store.
    #[error("{package}@{version} is not published on this node (clawmesh publish it first)")]
    NotPublished {
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// The stored manifest no longer verifies.
    #[error("stored manifest is invalid: {0}")]
    Manifest(String),
    /// The blob is missing or corrupt.
    #[error("blob: {0}")]
    Blob(#[from] GetError),
    /// The runtime refused it.
    #[error("{0}")]
    Runtime(#[from] DeployError),
}

impl LocalDeployError {
    /// Code of "stop" on a package that is not running.
    pub const NOT_RUNNING: &'static str = "not_running";

    /// A stable code scripts can match.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::NotPublished { .. } => "not_published",
            Self::Manifest(_) => "invalid_manifest",
            Self::Blob(_) => "blob_unavailable",
            Self::Runtime(e) => e.code(),
        }
    }
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    /// Package.
    pub package: String,
    /// Version.
    pub version: String,
    /// Blob sha256.
    pub sha256: String,
    /// Time from request to serving, ms.
    pub millis: f64,
}

/// Limits of a skill from its manifest, node defaults where it says 0.
pub fn limits_of(signed: &SignedManifest) -> SkillLimits {
    let caps = &signed.manifest.capabilities;
    let mut limits = SkillLimits::default();
    if caps.max_memory_bytes > 0 {
        limits.wasm_memory_bytes = caps.max_memory_bytes;
    }
    if caps.call_deadline_ms > 0 {
        limits.deadline = Duration::from_millis(u64::from(caps.call_deadline_ms));
    }
    if caps.cpu_weight > 0 {
        limits.cgroup.cpu_weight = caps.cpu_weight;
    }
    limits
}

/// Verifies `package@version` from the stores and runs it.
#[tracing::instrument(skip(ctx))]
pub async fn deploy_local(ctx: &NodeContext, package: &str, version: &str) -> Result<Deployed, LocalDeployError> {
    let start = Instant::now();
    let name: PackageName = package
        .parse()
        .map_err(|e| LocalDeployError::BadRequest(format!("package {package:?}: {e}")))?;
    let v = semver::Version::parse(version)
        .map_err(|e| LocalDeployError::BadRequest(format!("version {version:?}: {e}")))?;
    let signed = ctx
        .packages
        .get(&name, &v, &ctx.trust)
        .map_err(|e| LocalDeployError::Manifest(e.to_string()))?
        .ok_or_else(|| LocalDeployError::NotPublished {
            package: package.to_string(),
            version: version.to_string(),
        })?;
    let id = BlobId(signed.manifest.sha256);
    // Verify before the worker sees it; the worker checks the hash again.
    ctx.blobs.get(&id)?;
    let pin = ctx.blobs.pin(id);
    let spec = SkillSpec {
        package: package.to_string(),
        version: v.to_string(),
        wasm_path: ctx.blobs.path_of(&id),
        sha256: id.0,
        limits: limits_of(&signed),
    };
    ctx.supervisor.deploy(spec).await?;
    ctx.pin(package, pin);
    Ok(Deployed {
        package: package.to_string(),
        version: v.to_string(),
        sha256: id.to_hex(),
        millis: start.elapsed().as_secs_f64() * 1e3,
    })
}
