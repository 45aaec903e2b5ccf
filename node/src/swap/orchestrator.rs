//! The swap itself (issue 5's six steps) and the first deploy of a
//! package. Every step is timed and bounded; any failure before the flip
//! aborts: the old worker resumes with its state and the route's queue
//! drains into it. The steps under the pause are in `takeover`, rollback in
//! `rollback`, checkpoints and recovery in `checkpoint`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::start_checkpoint_task;
use super::durable;
use super::events::SwapEvent;
use super::package_state::PackageState;
use super::standby;
use super::steps::{
    ensure_attached, restore_from, snapshot_into_segment, state_is_large, step_fault, us,
    write_durable,
};
use super::takeover::{EARLY_SNAPSHOT_MIN_BYTES, paused_delta, paused_steps, pre_copy};
use crate::runtime::{DeployError, Route, SkillSpec, SupervisedWorker, Supervisor};

/// Timeouts of the steps and the windows of the swap machinery.
#[derive(Debug, Clone)]
pub struct SwapConfig {
    /// Start, load and warm the new worker (outside the pause).
    pub prewarm_timeout: Duration,
    /// Wait for admitted calls to finish once paused.
    pub drain_timeout: Duration,
    /// The old worker's snapshot.
    pub snapshot_timeout: Duration,
    /// The new worker's restore (its migration included).
    pub restore_timeout: Duration,
    /// The new worker's `health`.
    pub health_timeout: Duration,
    /// How long after a swap a rollback is a flip.
    pub warm_window: Duration,
    /// How often a package with journaled calls is checkpointed.
    pub checkpoint_interval: Duration,
    /// Where durable checkpoints go (none: memory only).
    pub checkpoints_dir: Option<PathBuf>,
    /// States of at least this many bytes (the last published length) are
    /// snapshotted before a swap's pause; smaller ones move inside it.
    pub early_snapshot_min_bytes: u64,
}

/// Overrides [`SwapConfig::early_snapshot_min_bytes`] from the node's
/// environment (tests use 0 to send small states down the early path).
pub const EARLY_SNAPSHOT_MIN_ENV: &str = "CLAWMESH_EARLY_SNAPSHOT_MIN_BYTES";

impl Default for SwapConfig {
    /// Paused steps add up to 4 s, below the route's default 5 s bound on a
    /// held call, so no queued call times out when a swap aborts late.
    fn default() -> Self {
        Self {
            prewarm_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(1),
            snapshot_timeout: Duration::from_secs(1),
            restore_timeout: Duration::from_secs(1),
            health_timeout: Duration::from_secs(1),
            warm_window: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(1),
            checkpoints_dir: None,
            early_snapshot_min_bytes: std::env::var(EARLY_SNAPSHOT_MIN_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(EARLY_SNAPSHOT_MIN_BYTES),
        }
    }
}

/// Why a swap, rollback or checkpoint did not happen. The old version keeps
/// serving with its state in every case.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The new version could not start.
    #[error("{0}")]
    Deploy(#[from] DeployError),
    /// A step failed or passed its timeout; the swap was aborted.
    #[error("{step} failed: {why} (aborted; {package} keeps serving its previous version)")]
    Step {
        /// Package.
        package: String,
        /// The step (`prewarm`, `pause`, `snapshot`, `restore`, `health`, `flip`).
        step: &'static str,
        /// What went wrong.
        why: String,
    },
    /// The package does not run here.
    #[error("{package} is not running on this node")]
    NotRunning {
        /// Package.
        package: String,
    },
    /// Nothing to roll back to.
    #[error("{package} has no previous version to roll back to")]
    NothingToRollBack {
        /// Package.
        package: String,
    },
}

impl SwapError {
    /// Stable code for the admin protocol.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Deploy(e) => e.code(),
            Self::Step { .. } => "swap_aborted",
            Self::NotRunning { .. } => "not_running",
            Self::NothingToRollBack { .. } => "nothing_to_roll_back",
        }
    }
}

/// Runs `spec`: the first deploy of a package starts it (from its durable
/// checkpoint if one exists); a deploy of a running package is a swap.
pub async fn deploy_or_swap(
    supervisor: &Supervisor,
    spec: SkillSpec,
    config: &SwapConfig,
) -> Result<SwapEvent, SwapError> {
    if supervisor.route(&spec.package).is_some() {
        return swap(supervisor, spec, config).await;
    }
    let package = spec.package.clone();
    let control = supervisor.lock_control().await;
    if supervisor.route(&package).is_some() {
        // Another deploy started it meanwhile: this one is a swap.
        drop(control);
        return swap(supervisor, spec, config).await;
    }
    let state = supervisor.package_state(&package);
    state.set_checkpoints_dir(config.checkpoints_dir.clone());
    let started = Instant::now();
    let worker = supervisor.start_worker(spec.clone()).await?;
    let mut event = SwapEvent::new(&package, "deployed");
    event.to_version = Some(spec.version.clone());
    event.timings.prewarm_us = us(started);
    // A checkpoint on disk: the node restarted, or the package was stopped
    // by a crash. Bring its state back before routing any call.
    let on_disk = config
        .checkpoints_dir
        .as_deref()
        .and_then(|dir| match durable::read_checkpoint(dir, &package) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "checkpoint on disk is unusable; starting empty");
                None
            }
        });
    if let Some(checkpoint) = on_disk {
        // No worker writes yet: the node publishes the checkpoint itself.
        let restored = match state.publish(checkpoint.meta.schema, &checkpoint.state) {
            Ok(generation) => {
                restore_from(&state, &worker, generation, config.restore_timeout).await
            }
            Err(error) => Err(SwapError::Step {
                package: package.clone(),
                step: "restore",
                why: error.to_string(),
            }),
        };
        if let Err(error) = restored {
            supervisor.stop_worker(&worker).await;
            return Err(error);
        }
        state.set_loaded_checkpoint_age(checkpoint.meta.taken_unix_ms);
        event.state_path = Some("durable_checkpoint");
        event.state_bytes = checkpoint.state.len() as u64;
    }
    supervisor.install(&control, worker.clone());
    if let Some(route) = supervisor.route(&package) {
        // Start the journal from this state: a first checkpoint.
        route.pause();
        let _ = route.drain(config.drain_timeout).await;
        let first = snapshot_into_segment(&state, &route, &worker, config.snapshot_timeout).await;
        route.resume();
        if first.is_ok() {
            write_durable(&state, &spec.version);
        }
    }
    drop(control);
    start_checkpoint_task(supervisor, &state, config);
    state.record(&event);
    supervisor.emit(event.clone());
    Ok(event)
}

/// Swaps `spec.package` to `spec` with its state (issue 5's six steps).
pub async fn swap(
    supervisor: &Supervisor,
    spec: SkillSpec,
    config: &SwapConfig,
) -> Result<SwapEvent, SwapError> {
    let package = spec.package.clone();
    let route = supervisor
        .route(&package)
        .ok_or_else(|| SwapError::NotRunning {
            package: package.clone(),
        })?;
    let state = supervisor.package_state(&package);
    let old = route.active();
    let mut event = SwapEvent::new(&package, "swap");
    event.from_version = Some(old.spec().version.clone());
    event.to_version = Some(spec.version.clone());
    let result = run_swap(supervisor, &route, &state, &old, spec, config, &mut event).await;
    match result {
        Ok(()) => {
            state.record(&event);
            supervisor.emit(event.clone());
            Ok(event)
        }
        Err(error) => {
            event.kind = "swap_failed";
            event.error = Some(error.to_string());
            state.record(&event);
            supervisor.emit(event);
            Err(error)
        }
    }
}

async fn run_swap(
    supervisor: &Supervisor,
    route: &Arc<Route<SupervisedWorker>>,
    state: &PackageState,
    old: &Arc<SupervisedWorker>,
    spec: SkillSpec,
    config: &SwapConfig,
    event: &mut SwapEvent,
) -> Result<(), SwapError> {
    let package = spec.package.clone();
    let control = supervisor.lock_control().await;
    // 1. Prewarm, while the old worker serves.
    step_fault(&package, "prewarm", old.pid(), None)?;
    let started = Instant::now();
    let new =
        match tokio::time::timeout(config.prewarm_timeout, supervisor.start_worker(spec)).await {
            Ok(Ok(worker)) => worker,
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                return Err(SwapError::Step {
                    package,
                    step: "prewarm",
                    why: format!("timed out after {:?}", config.prewarm_timeout),
                });
            }
        };
    // Both workers hold the segment, with room for the state, before the pause.
    let attached = async {
        state.reserve_headroom().map_err(|e| e.to_string())?;
        ensure_attached(state, &new).await?;
        ensure_attached(state, old).await
    }
    .await;
    if let Err(why) = attached {
        drop(control);
        supervisor.stop_worker(&new).await;
        return Err(SwapError::Step {
            package,
            step: "prewarm",
            why,
        });
    }
    // Early snapshot: the old worker's state goes into the segment and into
    // the new worker while the old one keeps serving; the pause then only
    // replays the calls it ran since. Only when the journal follows the
    // current generation (no earlier early snapshot is pending).
    // Journal entries dropped only once the route runs again.
    let mut garbage = Vec::new();
    let early = if state.generation() > 0
        && state.journal_base() == state.generation()
        && state_is_large(state, route, old, config).await
    {
        match pre_copy(state, old, &new, config, event).await {
            Ok(early) => Some(early),
            Err(error) => {
                // The pre-swap state of an open window may have left the
                // other buffer: a rollback must be a swap now.
                if state.journal_base() != state.generation() {
                    state.close_window(
                        "a swap's early copy failed after the pre-swap state left the segment",
                    );
                }
                drop(control);
                supervisor.stop_worker(&new).await;
                return Err(error);
            }
        }
    } else {
        None
    };
    event.timings.prewarm_us = us(started);
    let paused_at = Instant::now();
    let outcome = match early {
        Some(early) => {
            paused_delta(route, state, old, &new, early, config, event, &mut garbage).await
        }
        None => paused_steps(route, state, old, &new, config, event, &mut garbage).await,
    };
    if outcome.is_err() && state.journal_base() != state.generation() {
        state.close_window("an aborted swap left the segment past the pre-swap state");
    }
    // The route paused once its window had narrowed (calls flowed until then).
    let paused_at = paused_at + Duration::from_micros(event.timings.narrow_us);
    match outcome {
        Ok(()) => {
            event.timings.pause_us = us(paused_at);
            // Before the flip: the standby holds every call acknowledged
            // so far, and none after it.
            standby::open_window(state, route, old, config);
            let replaced = route.set_standby(Some(new.clone()));
            let flip_start = Instant::now();
            // Active becomes the new worker, standby the old one.
            route.flip();
            // The queue drains into the new worker from here.
            route.resume();
            event.timings.flip_us = us(flip_start);
            event.timings.pause_us = us(paused_at);
            drop(garbage);
            drop(control);
            if let Some(replaced) = replaced.filter(|r| !Arc::ptr_eq(r, old)) {
                supervisor.stop_worker(&replaced).await;
            }
            write_durable(state, &new.spec().version);
            Ok(())
        }
        Err(error) => {
            // Abort: the old worker was never touched beyond a snapshot;
            // held calls go to it.
            route.resume();
            event.timings.pause_us = us(paused_at);
            drop(control);
            supervisor.stop_worker(&new).await;
            Err(error)
        }
    }
}
