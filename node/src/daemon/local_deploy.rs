//! Deploying a package this node holds: the path shared by the admin socket
//! (`clawmesh deploy`, the sidecar) and the mesh's release controller. The
//! first deploy of a package starts it (from its durable checkpoint if the
//! node ran it before); a deploy of a running package is a hot swap that
//! keeps its state (`crate::swap`).

use std::path::Path;
use std::time::{Duration, Instant};

use clawmesh_crdt::manifest::{PackageName, SignedManifest};
use serde::Serialize;

use super::NodeContext;
use crate::blob_store::{BlobId, GetError, PutError};
use crate::runtime::{DeployError, SkillLimits, SkillSpec};
use crate::swap::{DeployedEntry, SwapConfig, SwapError, SwapEvent, durable};

/// Overrides the warm window (seconds) of swaps made through the node.
pub const WARM_WINDOW_ENV: &str = "CLAWMESH_WARM_WINDOW_SECS";
/// Overrides the periodic checkpoint interval (milliseconds).
pub const CHECKPOINT_INTERVAL_ENV: &str = "CLAWMESH_CHECKPOINT_INTERVAL_MS";

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
    /// The swap (or rollback) aborted; the previous version keeps serving.
    #[error("{0}")]
    Swap(#[from] SwapError),
    /// A raw component could not be read or stored.
    #[error("component {path}: {why}")]
    Wasm {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
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
            Self::Swap(e) => e.code(),
            Self::Wasm { .. } => "bad_wasm",
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
    /// The swap (or first start) with its step timings.
    pub swap: SwapEvent,
}

/// The swap settings of this node: checkpoints in the data dir, the
/// defaults otherwise (the two environment overrides aside).
pub fn swap_config(ctx: &NodeContext) -> SwapConfig {
    let mut config = SwapConfig {
        checkpoints_dir: Some(ctx.data.checkpoints_dir()),
        ..SwapConfig::default()
    };
    if let Some(secs) = std::env::var(WARM_WINDOW_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.warm_window = Duration::from_secs(secs);
    }
    if let Some(ms) = std::env::var(CHECKPOINT_INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.checkpoint_interval = Duration::from_millis(ms.max(1));
    }
    // Slow machines and debug builds with large states; the paused steps
    // then add up past the hold bound of a queued call (docs/SWAP.md).
    if let Some(ms) = std::env::var(STEP_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let step = Duration::from_millis(ms.max(1));
        config.drain_timeout = step;
        config.snapshot_timeout = step;
        config.restore_timeout = step;
        config.health_timeout = step;
    }
    config
}

/// Overrides the timeout of each paused swap step, ms.
pub const STEP_TIMEOUT_ENV: &str = "CLAWMESH_SWAP_STEP_TIMEOUT_MS";

/// Records what the node runs, so a restarted node brings it back.
pub fn remember_deployed(ctx: &NodeContext, package: &str, entry: Option<DeployedEntry>) {
    let dir = ctx.data.checkpoints_dir();
    let result = durable::read_deployed(&dir).and_then(|mut set| {
        match entry {
            Some(entry) => set.insert(package.to_string(), entry),
            None => set.remove(package),
        };
        durable::write_deployed(&dir, &set)
    });
    if let Err(error) = result {
        tracing::warn!(%error, "deployed set not written");
    }
}

/// Runs a raw component file as `package` (the sidecar's path): stores it
/// as a blob and deploys or swaps to it with default limits (but
/// `max_memory_mib` of linear memory when given). The version is
/// `version` or `0.0.0-dev+<first 12 hex of its sha256>`.
pub async fn deploy_wasm(
    ctx: &NodeContext,
    package: &str,
    path: &Path,
    version: Option<&str>,
    max_memory_mib: Option<u64>,
) -> Result<Deployed, LocalDeployError> {
    let start = Instant::now();
    let _: PackageName = package
        .parse()
        .map_err(|e| LocalDeployError::BadRequest(format!("package {package:?}: {e}")))?;
    let wasm_error = |why: String| LocalDeployError::Wasm {
        path: path.display().to_string(),
        why,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| wasm_error(e.to_string()))?
        .len();
    if size > clawmesh_wasm_abi::MAX_COMPONENT_BYTES as u64 {
        return Err(wasm_error(format!(
            "{size} bytes, over the {}-byte component limit",
            clawmesh_wasm_abi::MAX_COMPONENT_BYTES
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| wasm_error(e.to_string()))?;
    let id = ctx
        .blobs
        .put(&bytes, None, clawmesh_crdt::manifest::DEFAULT_CHUNK_SIZE)
        .map_err(|e: PutError| wasm_error(e.to_string()))?;
    let version = match version {
        Some(v) => semver::Version::parse(v)
            .map_err(|e| LocalDeployError::BadRequest(format!("version {v:?}: {e}")))?
            .to_string(),
        None => format!("0.0.0-dev+{}", &id.to_hex()[..12]),
    };
    let mut limits = SkillLimits::default();
    if let Some(mib) = max_memory_mib {
        limits.wasm_memory_bytes = mib.saturating_mul(1 << 20);
    }
    run_blob(ctx, package, &version, id, limits, "wasm", start).await
}

async fn run_blob(
    ctx: &NodeContext,
    package: &str,
    version: &str,
    id: BlobId,
    limits: SkillLimits,
    source: &str,
    start: Instant,
) -> Result<Deployed, LocalDeployError> {
    ctx.blobs.get(&id)?;
    let pin = ctx.blobs.pin(id);
    let spec = SkillSpec {
        package: package.to_string(),
        version: version.to_string(),
        wasm_path: ctx.blobs.path_of(&id),
        sha256: id.0,
        limits,
    };
    let swap = crate::swap::deploy_or_swap(&ctx.supervisor, spec, &swap_config(ctx)).await?;
    ctx.pin(package, pin);
    remember_deployed(
        ctx,
        package,
        Some(DeployedEntry {
            version: version.to_string(),
            source: source.to_string(),
            sha256: id.to_hex(),
        }),
    );
    Ok(Deployed {
        package: package.to_string(),
        version: version.to_string(),
        sha256: id.to_hex(),
        millis: start.elapsed().as_secs_f64() * 1e3,
        swap,
    })
}

/// Rolls `package` back (a flip within the warm window, a swap after it)
/// and records the version now running.
pub async fn rollback_local(
    ctx: &NodeContext,
    package: &str,
) -> Result<SwapEvent, LocalDeployError> {
    let event = crate::swap::rollback(&ctx.supervisor, package, &swap_config(ctx)).await?;
    if let Some(route) = ctx.supervisor.route(package) {
        let spec = route.active().spec().clone();
        let source = durable::read_deployed(&ctx.data.checkpoints_dir())
            .ok()
            .and_then(|set| set.get(package).map(|e| e.source.clone()))
            .unwrap_or_else(|| "published".into());
        remember_deployed(
            ctx,
            package,
            Some(DeployedEntry {
                version: spec.version,
                source,
                sha256: hex::encode(spec.sha256),
            }),
        );
    }
    Ok(event)
}

/// Starts again every package the node ran before it stopped, each from
/// its last durable checkpoint. Failures are logged; the rest go on.
pub async fn restore_deployed(ctx: &NodeContext) {
    let set = match durable::read_deployed(&ctx.data.checkpoints_dir()) {
        Ok(set) => set,
        Err(error) => {
            tracing::warn!(%error, "cannot read what this node ran before");
            return;
        }
    };
    for (package, entry) in set {
        let result = if entry.source == "wasm" {
            match hex::decode(&entry.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                Some(sha) => {
                    run_blob(
                        ctx,
                        &package,
                        &entry.version,
                        BlobId(sha),
                        SkillLimits::default(),
                        "wasm",
                        Instant::now(),
                    )
                    .await
                }
                None => Err(LocalDeployError::BadRequest(format!(
                    "sha256 {:?} in the deployed set",
                    entry.sha256
                ))),
            }
        } else {
            deploy_local(ctx, &package, &entry.version).await
        };
        match result {
            Ok(done) => {
                tracing::info!(%package, version = %done.version, "restarted from its checkpoint")
            }
            Err(error) => tracing::warn!(%package, %error, "not restarted"),
        }
    }
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
pub async fn deploy_local(
    ctx: &NodeContext,
    package: &str,
    version: &str,
) -> Result<Deployed, LocalDeployError> {
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
    // Verify before the worker sees it (in `run_blob`); the worker checks the hash again.
    run_blob(
        ctx,
        package,
        &v.to_string(),
        id,
        limits_of(&signed),
        "published",
        start,
    )
    .await
}
