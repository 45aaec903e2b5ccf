//! The swap itself (issue 5's six steps), rollback, checkpoints and the
//! recovery of a restarted worker. Every step is timed and bounded; any
//! failure before the flip aborts: the old worker resumes with its state
//! and the route's queue drains into it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::durable::{self, CheckpointMeta};
use super::events::{SwapEvent, unix_ms};
use super::fault;
use super::journal::JournalEntry;
use super::package_state::{PackageState, WarmWindow};
use crate::runtime::InvokeError;
use crate::runtime::connection::WorkerConnection;
use crate::runtime::frame::{JournalChunk, Request, SegmentWrite};
use crate::runtime::{DeployError, Route, SkillSpec, SupervisedWorker, Supervisor, WorkerState};

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

fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// The `health` step on `worker`, bounded by the configured timeout;
/// returns how long it took, in µs.
async fn health_step(
    package: &str,
    worker: &SupervisedWorker,
    config: &SwapConfig,
) -> Result<u64, SwapError> {
    let start = Instant::now();
    bounded(package, "health", config.health_timeout, async {
        worker
            .request(&Request::Health)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok(us(start))
}

async fn bounded<T>(
    package: &str,
    step: &'static str,
    timeout: Duration,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, SwapError> {
    let error = |why: String| SwapError::Step {
        package: package.to_string(),
        step,
        why,
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(why)) => Err(error(why)),
        Err(_) => Err(error(format!("timed out after {timeout:?}"))),
    }
}

fn step_fault(
    package: &str,
    step: &'static str,
    old: Option<u32>,
    new: Option<u32>,
) -> Result<(), SwapError> {
    fault::inject(step, old, new).map_err(|why| SwapError::Step {
        package: package.to_string(),
        step,
        why,
    })
}

/// How often one snapshot may find the segment too small and grow it.
const MAX_GROWTHS: usize = 4;

/// Hands `worker` the package's current segment unless it has it already
/// (creating the segment on first use).
async fn ensure_attached(state: &PackageState, worker: &SupervisedWorker) -> Result<(), String> {
    state.reserve(0).map_err(|e| e.to_string())?;
    if worker.segment_epoch() == state.segment_epoch() {
        return Ok(());
    }
    let (fd, epoch) = state.segment_fd().map_err(|e| e.to_string())?;
    worker
        .attach_segment(fd, epoch)
        .await
        .map_err(|e| format!("attaching the state segment: {e}"))
}

/// Asks `worker` to snapshot straight into the segment, growing the segment
/// (and handing the new one over) while the state does not fit; on growth
/// the new segment also goes to `reader` (a worker waiting for this
/// snapshot, told by the marker in the old segment to ask again).
async fn snapshot_to_segment_for(
    state: &PackageState,
    worker: &SupervisedWorker,
    reader: Option<&SupervisedWorker>,
) -> Result<SegmentWrite, String> {
    for _ in 0..MAX_GROWTHS {
        let epoch = state.segment_epoch();
        ensure_attached(state, worker).await?;
        if let Some(reader) = reader
            && state.segment_epoch() != epoch
        {
            ensure_attached(state, reader).await?;
        }
        let payload = worker
            .request(&Request::SnapshotToSegment)
            .await
            .map_err(|e| e.to_string())?;
        let write = settle_write(state, &payload)?;
        tracing::debug!(
            ?write,
            epoch = state.segment_epoch(),
            "snapshot into the segment"
        );
        if write.published {
            return Ok(write);
        }
        if let Some(reader) = reader {
            ensure_attached(state, reader).await?;
        }
    }
    Err("the state kept outgrowing the segment".into())
}

/// Reads a `SnapshotToSegment` answer: records a publish, or grows the
/// segment for a state that did not fit (the caller asks again).
fn settle_write(state: &PackageState, payload: &[u8]) -> Result<SegmentWrite, String> {
    let write = SegmentWrite::decode(payload).map_err(|e| e.to_string())?;
    if write.published {
        state.note_published(write.len);
    } else {
        state.reserve(write.len).map_err(|e| e.to_string())?;
    }
    Ok(write)
}

/// How long a snapshot that passed its timeout may still take before its
/// worker is killed (the paused steps stay below a held call's 5 s bound).
pub const SNAPSHOT_GRACE: Duration = Duration::from_millis(500);

/// A snapshot into the segment (the route paused and drained), bounded by
/// `timeout`. The worker publishes by itself, so one that passed the
/// timeout may still publish: it gets [`SNAPSHOT_GRACE`] more while the
/// route stays paused, then is killed (SIGKILL: restarted from checkpoint
/// and journal) so it cannot publish once calls run again. If it published
/// meanwhile, that state is what the paused route served: the journal is
/// emptied to match it (and the warm window closed: the pre-swap state
/// left the other buffer). Either way the step fails.
async fn settled_snapshot(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    worker: &SupervisedWorker,
    reader: Option<&SupervisedWorker>,
    timeout: Duration,
) -> Result<SegmentWrite, SwapError> {
    let package = state.package();
    let failed = |why: String| SwapError::Step {
        package: package.to_string(),
        step: "snapshot",
        why,
    };
    let before = state.generation();
    let work = snapshot_to_segment_for(state, worker, reader);
    tokio::pin!(work);
    if let Ok(result) = tokio::time::timeout(timeout, &mut work).await {
        return result.map_err(failed);
    }
    let late = tokio::time::timeout(SNAPSHOT_GRACE, &mut work).await;
    if !matches!(late, Ok(Ok(_))) {
        tracing::warn!(package, pid = ?worker.pid(), "snapshot hung past its grace; killing the worker");
        if let Some(pid) = worker.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if state.generation() > before {
        route.journal().take();
        state.set_journal_base(state.generation());
        state.close_window();
    }
    Err(failed(format!("timed out after {timeout:?}")))
}

/// Snapshots `worker` into the segment and empties the journal (the route
/// must be paused and drained); returns the state's schema and size.
async fn snapshot_into_segment(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    worker: &SupervisedWorker,
    timeout: Duration,
) -> Result<(u32, u64, Vec<JournalEntry>), SwapError> {
    let write = settled_snapshot(state, route, worker, None, timeout).await?;
    state.set_journal_base(write.generation);
    Ok((write.schema, write.len, route.journal().take()))
}

fn restore_request(generation: u64, wait: Duration) -> Request<'static> {
    Request::RestoreFromSegment {
        generation,
        wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
    }
}

/// Restores `worker` from `generation` of the segment (no wait: it is
/// published already).
async fn restore_from(
    state: &PackageState,
    worker: &SupervisedWorker,
    generation: u64,
    timeout: Duration,
) -> Result<(), SwapError> {
    bounded(state.package(), "restore", timeout, async {
        ensure_attached(state, worker).await?;
        worker
            .request(&restore_request(generation, Duration::ZERO))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
}

/// One control step sent to a worker as part of an ordered batch.
enum Step<'a> {
    Restore(u64),
    Invoke(&'a JournalEntry),
    Snapshot,
    /// A snapshot whose state is discarded (can the version serialise it?).
    Probe,
    Health,
}

type StepFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Bytes, InvokeError>> + Send + 'a>>;

/// Sends `steps` to `worker` in order, [`REPLAY_BATCH`] at a time without
/// waiting for answers in between (the worker runs frames in arrival
/// order); returns the answers, or the first failure named by its step.
async fn pipelined(
    worker: &SupervisedWorker,
    steps: &[Step<'_>],
) -> Result<Vec<Bytes>, (&'static str, InvokeError)> {
    let mut answers = Vec::with_capacity(steps.len());
    for batch in steps.chunks(REPLAY_BATCH) {
        // join_all polls the calls in order, and each reaches the socket
        // queue on its first poll (a batch is far below the in-flight
        // bound), so they leave in order.
        let calls = batch.iter().map(|step| -> StepFuture<'_> {
            match step {
                Step::Restore(generation) => {
                    let request = restore_request(*generation, Duration::ZERO);
                    Box::pin(async move { worker.request(&request).await })
                }
                Step::Invoke(entry) => {
                    Box::pin(worker.invoke(entry.op.clone(), entry.input.clone()))
                }
                Step::Snapshot => Box::pin(worker.request(&Request::SnapshotToSegment)),
                Step::Probe => Box::pin(worker.request(&Request::ProbeSnapshot)),
                Step::Health => Box::pin(worker.request(&Request::Health)),
            }
        });
        let results = futures::future::join_all(calls).await;
        for (step, result) in batch.iter().zip(results) {
            let name = match step {
                Step::Restore(_) => "restore",
                Step::Invoke(_) => "replay",
                Step::Snapshot => "snapshot",
                Step::Probe => "snapshot probe",
                Step::Health => "health",
            };
            answers.push(result.map_err(|e| (name, e))?);
        }
    }
    Ok(answers)
}

/// Calls replayed at once: sent in order in one batch (the worker runs
/// frames in arrival order), answers awaited together.
pub const REPLAY_BATCH: usize = 256;

/// Writes the segment's current state to disk (outside any pause).
fn write_durable(state: &PackageState, version: &str) {
    let Some(dir) = state.checkpoints_dir() else {
        return;
    };
    // Two writers at once would share the temp file: the second rename
    // found it gone ("No such file or directory") and its checkpoint was lost.
    let _writing = state.durable_write_lock();
    if state.journal_base() != state.generation() {
        // An early snapshot no journal follows yet: not a checkpoint.
        return;
    }
    let Ok(current) = state.current() else {
        return;
    };
    let meta = CheckpointMeta {
        package: state.package().to_string(),
        version: version.to_string(),
        schema: current.schema,
        len: current.payload.len() as u64,
        crc32: clawmesh_shm::checksum(&current.payload),
        taken_unix_ms: unix_ms(),
    };
    match durable::write_checkpoint(&dir, &meta, &current.payload) {
        Ok(()) => state.set_durable(meta.taken_unix_ms),
        Err(error) => tracing::warn!(%error, "durable checkpoint not written"),
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
    let early = if state.last_len() >= config.early_snapshot_min_bytes
        && state.generation() > 0
        && state.journal_base() == state.generation()
    {
        match pre_copy(state, old, &new, config, event).await {
            Ok(early) => Some(early),
            Err(error) => {
                // The pre-swap state of an open window may have left the
                // other buffer: a rollback must be a swap now.
                if state.journal_base() != state.generation() {
                    state.close_window();
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
        state.close_window();
    }
    match outcome {
        Ok(()) => {
            event.timings.pause_us = us(paused_at);
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
            state.open_window(WarmWindow {
                until: Instant::now() + config.warm_window,
                from: old.spec().clone(),
            });
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

/// Steps 2–4 under the pause; the caller flips or aborts.
async fn paused_steps(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
    garbage: &mut Vec<JournalEntry>,
) -> Result<(), SwapError> {
    pause_and_drain(route, state, old, new, config, event).await?;
    snapshot_and_restore(route, state, old, new, config, event, garbage).await
}

/// Step 2: pause the route and let the calls in its window finish.
async fn pause_and_drain(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
) -> Result<(), SwapError> {
    let package = state.package();
    step_fault(package, "pause", old.pid(), new.pid())?;
    let start = Instant::now();
    route.pause();
    if !route.drain(config.drain_timeout).await {
        return Err(SwapError::Step {
            package: package.to_string(),
            step: "pause",
            why: format!(
                "{} calls still running after {:?}",
                route.calls_in_progress(),
                config.drain_timeout
            ),
        });
    }
    event.timings.drain_us = us(start);
    Ok(())
}

/// Steps 3–4 with the whole state inside the pause (no early snapshot, or
/// its delta could not be had).
async fn snapshot_and_restore(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
    garbage: &mut Vec<JournalEntry>,
) -> Result<(), SwapError> {
    let package = state.package();
    // 3. Old worker snapshots into the segment (a checkpoint: the journal
    // empties); 4. the new worker restores it (migrating) and passes health.
    // All three go out at once: the new worker waits in its own process for
    // the snapshot's generation, so the pause costs one round trip, not three.
    step_fault(package, "snapshot", old.pid(), new.pid())?;
    step_fault(package, "restore", old.pid(), new.pid())?;
    step_fault(package, "health", old.pid(), new.pid())?;
    let target = state.generation() + 1;
    let start = Instant::now();
    let snapshot = async {
        let result = settled_snapshot(state, route, old, Some(new), config.snapshot_timeout).await;
        (result, us(start))
    };
    let wait = config.snapshot_timeout;
    let restore = async {
        let restore = async {
            let result = new.request(&restore_request(target, wait)).await;
            (result, us(start))
        };
        let health = async {
            let result = new.request(&Request::Health).await;
            (result, us(start))
        };
        let both = tokio::time::timeout(
            config.snapshot_timeout + config.restore_timeout + config.health_timeout,
            async { tokio::join!(restore, health) },
        )
        .await;
        both.map_err(|_| "timed out".to_string())
    };
    let ((snapshot, snapshot_us), pipelined) = tokio::join!(snapshot, restore);
    let write = snapshot?;
    state.set_journal_base(write.generation);
    *garbage = route.journal().take();
    event.state_bytes = write.len;
    event.timings.snapshot_us = snapshot_us;
    let step = |step: &'static str, why: String| SwapError::Step {
        package: package.to_string(),
        step,
        why,
    };
    let ((restored, restore_at), (healthy, health_at)) =
        pipelined.map_err(|why| step("restore", why))?;
    if write.generation == target && restored.is_ok() {
        event.timings.restore_us = restore_at.saturating_sub(snapshot_us);
        healthy.map_err(|e| step("health", e.to_string()))?;
        event.timings.health_us = health_at.saturating_sub(restore_at);
    } else {
        // The segment grew during the snapshot (the new worker waited on the
        // old one), or the restore failed: once more, in order, to know.
        tracing::info!(
            package,
            target,
            published = write.generation,
            restored = ?restored.as_ref().err(),
            "pipelined restore missed; restoring again in order"
        );
        let start = Instant::now();
        let restored = tokio::time::timeout(config.restore_timeout, async {
            ensure_attached(state, new)
                .await
                .map_err(|message| InvokeError::Internal { message })?;
            new.request(&restore_request(write.generation, Duration::ZERO))
                .await
        })
        .await;
        match restored {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return Err(step(
                    "restore",
                    takeover_failure("restore", &error, write.len),
                ));
            }
            Err(_) => {
                return Err(step(
                    "restore",
                    format!("timed out after {:?}", config.restore_timeout),
                ));
            }
        }
        event.timings.restore_us = us(start);
        event.timings.health_us = health_step(package, new, config).await?;
    }
    event.state_path = Some("migration");
    // 5. Flip (done by the caller right after this returns).
    step_fault(package, "flip", old.pid(), new.pid())?;
    Ok(())
}

/// By default, states smaller than this move inside the pause (one control round trip
/// with the snapshot and restore pipelined); larger ones are snapshotted
/// before it and only the calls since are replayed inside it (two round
/// trips, whatever the state's size).
pub const EARLY_SNAPSHOT_MIN_BYTES: u64 = 64 * 1024;

/// Rounds of catch-up replay before the pause (each fetches the calls the
/// old worker ran since the previous round and replays them into the new
/// one).
pub const CATCH_UP_ROUNDS: usize = 4;

/// A catch-up round that brought fewer calls than this is the last: the
/// pause replays the rest.
pub const CATCH_UP_ENOUGH: usize = 64;

/// What the early snapshot left for the pause: the generation both workers
/// hold and the calls already replayed into the new worker since it.
struct Early {
    generation: u64,
    copied: Vec<JournalEntry>,
    /// The new worker's process that holds that state (a restarted one
    /// would not).
    new_pid: Option<u32>,
}

/// Describes a failed call to the worker taking over, naming an
/// out-of-memory as such (the usual cause: its wasm memory limit is too
/// small for the state).
fn takeover_failure(what: &str, error: &InvokeError, state_len: u64) -> String {
    match error {
        InvokeError::MemoryLimit { message } => format!(
            "{what} trapped: out of memory with a state of {state_len} bytes \
             (the new version's wasm memory limit is too small: {message})"
        ),
        InvokeError::Trap { message } => format!("{what} trapped: {message}"),
        other => format!("{what}: {other}"),
    }
}

/// Outside the pause: the old worker publishes its state into the segment
/// (its journal starts over there, while it keeps serving); the new worker
/// restores that generation, proves it can snapshot what it restored, and
/// passes health; then the calls the old worker ran meanwhile are replayed
/// into it in up to [`CATCH_UP_ROUNDS`] rounds. The route's journal still
/// follows the previous generation until the pause replaces it.
async fn pre_copy(
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
) -> Result<Early, SwapError> {
    let package = state.package();
    let failed = |step: &'static str, why: String| SwapError::Step {
        package: package.to_string(),
        step,
        why,
    };
    let bound = config.prewarm_timeout;
    let new_pid = new.pid();
    let work = snapshot_to_segment_for(state, old, None);
    let write = match tokio::time::timeout(bound, work).await {
        Ok(Ok(write)) => write,
        Ok(Err(why)) => return Err(failed("snapshot", format!("early snapshot: {why}"))),
        Err(_) => {
            // It could still publish later: stop that (the supervisor
            // restarts it from the checkpoint its journal follows).
            kill(old);
            return Err(failed(
                "snapshot",
                format!("early snapshot timed out after {bound:?}"),
            ));
        }
    };
    event.state_bytes = write.len;
    let steps = [Step::Restore(write.generation), Step::Probe, Step::Health];
    let restored = tokio::time::timeout(bound, async {
        ensure_attached(state, new)
            .await
            .map_err(|why| ("restore", InvokeError::Internal { message: why }))?;
        pipelined(new, &steps).await
    })
    .await;
    match restored {
        Ok(Ok(_)) => {}
        Ok(Err((step, error))) => {
            let what = match step {
                "snapshot probe" => {
                    "the new version cannot snapshot the state it restored: snapshot"
                }
                "health" => "health after the restore",
                _ => "restore",
            };
            return Err(failed("restore", takeover_failure(what, &error, write.len)));
        }
        Err(_) => return Err(failed("restore", format!("timed out after {bound:?}"))),
    }
    let mut copied = Vec::new();
    for _ in 0..CATCH_UP_ROUNDS {
        let Ok(calls) = journal_since(old, write.generation, copied.len()).await else {
            // The pause finds out again and falls back to a full snapshot.
            break;
        };
        let fetched = calls.len();
        replay(new, &calls).await.map_err(|(step, error)| {
            failed("restore", takeover_failure(step, &error, write.len))
        })?;
        copied.extend(calls);
        if fetched < CATCH_UP_ENOUGH {
            break;
        }
    }
    Ok(Early {
        generation: write.generation,
        copied,
        new_pid,
    })
}

/// SIGKILL to `worker`'s process (the supervisor restarts it).
fn kill(worker: &SupervisedWorker) {
    if let Some(pid) = worker.pid().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The calls `worker` ran since its state was `generation`, from the
/// `from`-th on, fetched one frame at a time.
async fn journal_since(
    worker: &SupervisedWorker,
    generation: u64,
    from: usize,
) -> Result<Vec<JournalEntry>, String> {
    let mut calls = Vec::new();
    // Each chunk brings at least one call, so the journal's bound bounds this.
    for _ in 0..=super::journal::MAX_JOURNAL_ENTRIES {
        let at = u32::try_from(from + calls.len()).map_err(|_| "journal index past u32")?;
        let payload = worker
            .request(&Request::JournalSince {
                generation,
                from: at,
            })
            .await
            .map_err(|e| e.to_string())?;
        let chunk = JournalChunk::decode(&payload).map_err(|e| e.to_string())?;
        if chunk.calls.is_empty() {
            break;
        }
        calls.extend(chunk.calls.iter().map(|(op, input)| JournalEntry {
            op: (*op).to_string(),
            input: payload.slice_ref(input),
        }));
        if from + calls.len() >= chunk.total as usize {
            break;
        }
    }
    Ok(calls)
}

/// Replays `calls` into `worker`, in order.
async fn replay(
    worker: &SupervisedWorker,
    calls: &[JournalEntry],
) -> Result<(), (&'static str, InvokeError)> {
    let steps: Vec<Step<'_>> = calls.iter().map(Step::Invoke).collect();
    pipelined(worker, &steps).await.map(|_| ())
}

/// Steps 2–4 after an early snapshot: pause, drain, fetch the calls the old
/// worker ran since the last catch-up round, replay them into the new
/// worker with `health`; the route's journal becomes every call since the
/// early snapshot, which becomes the package's checkpoint. If the old
/// worker cannot say (it was restarted, its journal overflowed), the whole
/// state moves inside the pause as without an early snapshot.
#[allow(clippy::too_many_arguments)]
async fn paused_delta(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    early: Early,
    config: &SwapConfig,
    event: &mut SwapEvent,
    garbage: &mut Vec<JournalEntry>,
) -> Result<(), SwapError> {
    let package = state.package();
    pause_and_drain(route, state, old, new, config, event).await?;
    step_fault(package, "snapshot", old.pid(), new.pid())?;
    step_fault(package, "restore", old.pid(), new.pid())?;
    step_fault(package, "health", old.pid(), new.pid())?;
    let Early {
        generation,
        mut copied,
        new_pid,
    } = early;
    let start = Instant::now();
    let fetched = bounded(package, "snapshot", config.snapshot_timeout, async {
        journal_since(old, generation, copied.len()).await
    })
    .await;
    let delta = match fetched {
        Ok(delta) => delta,
        Err(error) => {
            tracing::info!(package, %error, "no journal since the early snapshot; moving the whole state");
            return snapshot_and_restore(route, state, old, new, config, event, garbage).await;
        }
    };
    event.timings.snapshot_us = us(start);
    let start = Instant::now();
    let mut steps: Vec<Step<'_>> = delta.iter().map(Step::Invoke).collect();
    steps.push(Step::Health);
    let state_len = event.state_bytes;
    let replayed = tokio::time::timeout(
        config.restore_timeout + config.health_timeout,
        pipelined(new, &steps),
    )
    .await;
    match replayed {
        Ok(Ok(_)) => {}
        Ok(Err((step, error))) => {
            let name = if step == "health" {
                "health"
            } else {
                "restore"
            };
            return Err(SwapError::Step {
                package: package.to_string(),
                step: name,
                why: takeover_failure(step, &error, state_len),
            });
        }
        Err(_) => {
            return Err(SwapError::Step {
                package: package.to_string(),
                step: "restore",
                why: format!(
                    "replaying {} calls timed out after {:?}",
                    delta.len(),
                    config.restore_timeout + config.health_timeout
                ),
            });
        }
    }
    if new.pid() != new_pid {
        // The new worker was restarted since it restored the early
        // snapshot: it holds the checkpoint it recovered, not that state.
        tracing::info!(
            package,
            "new worker restarted since the early snapshot; moving the whole state"
        );
        return snapshot_and_restore(route, state, old, new, config, event, garbage).await;
    }
    event.timings.restore_us = us(start);
    event.replayed = (copied.len() + delta.len()) as u64;
    copied.extend(delta);
    *garbage = route.journal().replace(copied);
    state.set_journal_base(generation);
    event.state_path = Some("migration+replay");
    step_fault(package, "flip", old.pid(), new.pid())?;
    Ok(())
}

/// Rolls `package` back: a flip with the state brought forward while the
/// warm window is open, a swap to the previous version after it.
pub async fn rollback(
    supervisor: &Supervisor,
    package: &str,
    config: &SwapConfig,
) -> Result<SwapEvent, SwapError> {
    let route = supervisor
        .route(package)
        .ok_or_else(|| SwapError::NotRunning {
            package: package.to_string(),
        })?;
    let state = supervisor.package_state(package);
    let standby = route.standby();
    let window = state.window();
    let (Some(old), Some(_)) = (standby, window) else {
        // After the window: a swap to the previous version.
        let previous = state
            .previous_spec()
            .ok_or_else(|| SwapError::NothingToRollBack {
                package: package.to_string(),
            })?;
        let mut event = swap(supervisor, previous, config).await?;
        event.kind = "rollback";
        return Ok(event);
    };
    let new = route.active();
    // A worker being restarted after a crash comes back with its state;
    // wait for it (outside the pause) rather than fail the rollback.
    for worker in [&new, &old] {
        if !wait_ready(worker, config.prewarm_timeout).await {
            return Err(SwapError::Step {
                package: package.to_string(),
                step: "rollback",
                why: format!(
                    "{} is {:?}, not ready",
                    worker.spec().version,
                    worker.state()
                ),
            });
        }
    }
    let mut event = SwapEvent::new(package, "rollback");
    event.from_version = Some(new.spec().version.clone());
    event.to_version = Some(old.spec().version.clone());
    let control = supervisor.lock_control().await;
    let attached = async {
        state.reserve_headroom().map_err(|e| e.to_string())?;
        ensure_attached(&state, &new).await?;
        ensure_attached(&state, &old).await
    }
    .await;
    if let Err(why) = attached {
        return Err(SwapError::Step {
            package: package.to_string(),
            step: "rollback",
            why,
        });
    }
    let paused_at = Instant::now();
    let mut garbage = Vec::new();
    let outcome =
        rollback_paused(&route, &state, &new, &old, config, &mut event, &mut garbage).await;
    match outcome {
        Ok(()) => {
            let flip_start = Instant::now();
            route.flip();
            route.resume();
            event.timings.flip_us = us(flip_start);
            event.timings.pause_us = us(paused_at);
            drop(garbage);
            let left = route.set_standby(None);
            drop(control);
            state.close_window();
            state.set_previous_spec(Some(new.spec().clone()));
            write_durable(&state, &old.spec().version);
            if let Some(left) = left {
                supervisor.stop_worker(&left).await;
            }
            state.record(&event);
            supervisor.emit(event.clone());
            Ok(event)
        }
        Err(error) => {
            route.resume();
            drop(control);
            event.kind = "rollback_failed";
            event.error = Some(error.to_string());
            state.record(&event);
            supervisor.emit(event);
            Err(error)
        }
    }
}

/// Waits (bounded) until `worker` serves and answers `health`; `false` if
/// it does not in time. A process that just died may still read as ready
/// until the supervisor reaps it, hence the health probe.
async fn wait_ready(worker: &SupervisedWorker, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut lifecycle = worker.lifecycle();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = matches!(
            tokio::time::timeout(left, lifecycle.wait_for(|l| l.state == WorkerState::Ready)).await,
            Ok(Ok(_))
        );
        if !ready {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(_)) = tokio::time::timeout(left, worker.request(&Request::Health)).await {
            return true;
        }
        // Unhealthy: wait for the supervisor to notice and restart it.
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(
            tokio::time::timeout(left, lifecycle.changed()).await,
            Ok(Ok(()))
        ) {
            return false;
        }
    }
}

async fn rollback_paused(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    new: &SupervisedWorker,
    old: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
    garbage: &mut Vec<JournalEntry>,
) -> Result<(), SwapError> {
    let package = state.package();
    step_fault(package, "rollback", new.pid(), old.pid())?;
    let start = Instant::now();
    route.pause();
    if !route.drain(config.drain_timeout).await {
        return Err(SwapError::Step {
            package: package.to_string(),
            step: "pause",
            why: format!("calls still running after {:?}", config.drain_timeout),
        });
    }
    event.timings.drain_us = us(start);
    // The newer state becomes the checkpoint; the pre-swap one moves to the
    // other buffer, and the journal since the swap comes with it. The old
    // worker tries the down-migration at once, waiting in its process for
    // the snapshot's generation.
    let target = state.generation() + 1;
    let start = Instant::now();
    let snapshot = async {
        let result = settled_snapshot(state, route, new, Some(old), config.snapshot_timeout).await;
        (result, us(start))
    };
    let down = bounded(
        package,
        "restore",
        config.snapshot_timeout + config.restore_timeout,
        async {
            old.request(&restore_request(target, config.snapshot_timeout))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    let ((snapshot, snapshot_us), down) = tokio::join!(snapshot, down);
    let write = snapshot?;
    state.set_journal_base(write.generation);
    let since_swap = route.journal().take();
    event.timings.snapshot_us = snapshot_us;
    event.state_bytes = write.len;
    let start = Instant::now();
    let down = if down
        .as_ref()
        .is_err_and(|e| e.to_string().contains(super::worker_segment::MOVED_MESSAGE))
    {
        // The segment grew under the old worker: try again on the new one.
        restore_from(state, old, write.generation, config.restore_timeout).await
    } else {
        down
    };
    if down.is_ok() && write.generation == target {
        event.state_path = Some("down_migration");
        event.timings.restore_us = us(start);
        event.timings.health_us = health_step(package, old, config).await?;
        *garbage = since_swap;
        return Ok(());
    }
    // No down-migration: the pre-swap state, the calls since, a checkpoint
    // of the result and health, all sent in order without waiting.
    ensure_attached(state, old)
        .await
        .map_err(|why| SwapError::Step {
            package: package.to_string(),
            step: "restore",
            why,
        })?;
    let mut steps = Vec::with_capacity(since_swap.len() + 3);
    steps.push(Step::Restore(write.generation - 1));
    steps.extend(since_swap.iter().map(Step::Invoke));
    steps.push(Step::Snapshot);
    steps.push(Step::Health);
    let answers = bounded(
        package,
        "restore",
        config.restore_timeout + config.snapshot_timeout + config.health_timeout,
        async {
            pipelined(old, &steps)
                .await
                .map_err(|(step, why)| format!("{step}: {why}"))
        },
    )
    .await?;
    event.replayed = since_swap.len() as u64;
    event.state_path = Some("replay");
    // The old version's state is now the checkpoint.
    let snapshot = answers
        .get(answers.len().saturating_sub(2))
        .ok_or_else(|| SwapError::Step {
            package: package.to_string(),
            step: "snapshot",
            why: "no answer".into(),
        })?;
    let settled = settle_write(state, snapshot).map_err(|why| SwapError::Step {
        package: package.to_string(),
        step: "snapshot",
        why,
    })?;
    if settled.published {
        state.set_journal_base(settled.generation);
    } else {
        snapshot_into_segment(state, route, old, config.snapshot_timeout).await?;
    }
    event.timings.restore_us = us(start);
    drop(steps);
    *garbage = since_swap;
    Ok(())
}

/// Takes a checkpoint of `package` now (pause, drain, snapshot, resume),
/// then writes it to disk.
pub async fn checkpoint(
    supervisor: &Supervisor,
    package: &str,
    config: &SwapConfig,
) -> Result<SwapEvent, SwapError> {
    checkpoint_now(supervisor, package, config, false)
        .await
        .map(|event| event.unwrap_or_else(|| SwapEvent::new(package, "checkpoint_skipped")))
}

/// A checkpoint; when `keep_window`, skipped (`None`) while a warm window
/// is open and the journal has room, decided under the control lock so a
/// swap that just opened a window is seen.
async fn checkpoint_now(
    supervisor: &Supervisor,
    package: &str,
    config: &SwapConfig,
    keep_window: bool,
) -> Result<Option<SwapEvent>, SwapError> {
    let route = supervisor
        .route(package)
        .ok_or_else(|| SwapError::NotRunning {
            package: package.to_string(),
        })?;
    let state = supervisor.package_state(package);
    let control = supervisor.lock_control().await;
    if keep_window && state.window().is_some() && !route.journal().wants_checkpoint() {
        return Ok(None);
    }
    let active = route.active();
    let mut event = SwapEvent::new(package, "checkpoint");
    event.to_version = Some(active.spec().version.clone());
    let paused_at = Instant::now();
    route.pause();
    let result = async {
        step_fault(package, "checkpoint", active.pid(), None)?;
        if !route.drain(config.drain_timeout).await {
            return Err(SwapError::Step {
                package: package.to_string(),
                step: "pause",
                why: "calls still running".into(),
            });
        }
        snapshot_into_segment(&state, &route, &active, config.snapshot_timeout).await
    }
    .await;
    route.resume();
    event.timings.pause_us = us(paused_at);
    drop(control);
    let (_, bytes, _) = result?;
    event.state_bytes = bytes;
    // A checkpoint replaces the pre-swap state: rollback becomes a swap.
    state.close_window();
    write_durable(&state, &active.spec().version);
    state.record(&event);
    Ok(Some(event))
}

fn start_checkpoint_task(supervisor: &Supervisor, state: &Arc<PackageState>, config: &SwapConfig) {
    if !state.claim_checkpoint_task() {
        return;
    }
    let supervisor = supervisor.clone();
    let weak = Arc::downgrade(state);
    let config = config.clone();
    tokio::spawn(async move {
        // The first checkpoint one interval after the deploy's own, not at once.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + config.checkpoint_interval,
            config.checkpoint_interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            let current = supervisor.existing_package_state(state.package());
            if !current.is_some_and(|c| Arc::ptr_eq(&c, &state)) {
                return;
            }
            let Some(route) = supervisor.route(state.package()) else {
                return;
            };
            let journal = route.journal();
            if journal.is_empty() {
                continue;
            }
            // While a warm window is open the pre-swap state must stay in
            // the other buffer; only a journal near its bound closes it.
            if state.window().is_some() && !journal.wants_checkpoint() {
                continue;
            }
            if let Err(error) = checkpoint_now(&supervisor, state.package(), &config, true).await {
                tracing::warn!(%error, "periodic checkpoint failed");
            }
        }
    });
}

/// Called by the supervisor after it restarted a crashed worker, before the
/// worker serves: hands it the package's state segment and, when it is the
/// package's active worker, restores the last checkpoint and replays the
/// journal, so no acknowledged call is lost. Returns the segment epoch the
/// worker attached (0: none).
pub async fn recover_restarted(
    supervisor: &Supervisor,
    worker: &SupervisedWorker,
    connection: &WorkerConnection,
) -> u64 {
    let package = &worker.spec().package;
    let Some(state) = supervisor.existing_package_state(package) else {
        return 0;
    };
    let epoch = match state.segment_fd() {
        Ok((fd, epoch)) => match connection
            .request_with_fd(&Request::AttachSegment, fd)
            .await
        {
            Ok(_) => epoch,
            Err(error) => {
                tracing::warn!(%error, "restarted worker did not attach the state segment");
                0
            }
        },
        Err(_) => 0,
    };
    let Some(route) = supervisor.route(package) else {
        return epoch;
    };
    if !std::ptr::eq(Arc::as_ptr(&route.active()), worker) {
        return epoch;
    }
    let mut event = SwapEvent::new(package, "recovered");
    event.to_version = Some(worker.spec().version.clone());
    let started = Instant::now();
    let result: Result<u64, String> = async {
        // The checkpoint the journal follows (the current one, or the one
        // before it between a swap's early snapshot and its pause).
        let generation = state.journal_base();
        if generation > 0 {
            if epoch == 0 {
                return Err("the state segment could not be attached".into());
            }
            connection
                .request(&restore_request(generation, Duration::ZERO))
                .await
                .map_err(|e| format!("restore: {e}"))?;
            event.state_bytes = state.current().map_or(0, |c| c.payload.len() as u64);
        }
        let entries = route.journal().entries();
        for batch in entries.chunks(REPLAY_BATCH) {
            let calls = batch
                .iter()
                .map(|entry| connection.invoke(entry.op.clone(), Bytes::clone(&entry.input)));
            for result in futures::future::join_all(calls).await {
                result.map_err(|e| format!("replay: {e}"))?;
            }
        }
        Ok(entries.len() as u64)
    }
    .await;
    event.timings.restore_us = us(started);
    event.state_path = Some("checkpoint+replay");
    match result {
        Ok(replayed) => event.replayed = replayed,
        Err(why) => {
            event.kind = "recovery_failed";
            event.error = Some(why);
        }
    }
    state.record(&event);
    supervisor.emit(event);
    epoch
}
