//! The building blocks the swap, rollback and checkpoint share: bounded
//! control requests to a worker, snapshots into the segment, pipelined
//! batches of steps, journal fetches and replays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::durable::{self, CheckpointMeta};
use super::events::SwapEvent;
use super::events::unix_ms;
use super::fault;
use super::journal::JournalEntry;
use super::orchestrator::{SwapConfig, SwapError};
use super::package_state::PackageState;
use super::takeover::pause_window;
use crate::runtime::InvokeError;
use crate::runtime::connection::OrderedCall;
use crate::runtime::frame::{JournalChunk, Request, SegmentWrite};
use crate::runtime::{Route, SupervisedWorker, Supervisor, WorkerState};

pub(super) fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// The `health` step on `worker`, bounded by the configured timeout;
/// returns how long it took, in µs.
pub(super) async fn health_step(
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

pub(super) async fn bounded<T>(
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

pub(super) fn step_fault(
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
pub(super) const MAX_GROWTHS: usize = 4;

/// Hands `worker` the package's current segment unless it has it already
/// (creating the segment on first use).
pub(super) async fn ensure_attached(
    state: &PackageState,
    worker: &SupervisedWorker,
) -> Result<(), String> {
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
pub(super) async fn snapshot_to_segment_for(
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
pub(super) fn settle_write(state: &PackageState, payload: &[u8]) -> Result<SegmentWrite, String> {
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
pub(super) async fn settled_snapshot(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    worker: &SupervisedWorker,
    reader: Option<&SupervisedWorker>,
    timeout: Duration,
) -> Result<SegmentWrite, SwapError> {
    let before = state.generation();
    graced_snapshot(state, worker, reader, timeout, || {
        if state.generation() > before {
            route.journal().take();
            state.set_journal_base(state.generation());
            state.close_window("a snapshot published after its timeout");
        }
    })
    .await
}

/// A snapshot into the segment bounded by `timeout`; one that passed it
/// gets [`SNAPSHOT_GRACE`] more, then its worker is killed (it could
/// otherwise publish once calls run again), `timed_out` settles what a late
/// publish means for the journal, and the step fails.
pub(super) async fn graced_snapshot(
    state: &PackageState,
    worker: &SupervisedWorker,
    reader: Option<&SupervisedWorker>,
    timeout: Duration,
    timed_out: impl FnOnce(),
) -> Result<SegmentWrite, SwapError> {
    let package = state.package();
    let failed = |why: String| SwapError::Step {
        package: package.to_string(),
        step: "snapshot",
        why,
    };
    let work = snapshot_to_segment_for(state, worker, reader);
    tokio::pin!(work);
    if let Ok(result) = tokio::time::timeout(timeout, &mut work).await {
        return result.map_err(failed);
    }
    let late = tokio::time::timeout(SNAPSHOT_GRACE, &mut work).await;
    if !matches!(late, Ok(Ok(_))) {
        tracing::warn!(package, pid = ?worker.pid(), "snapshot hung past its grace; killing the worker");
        kill(worker);
    }
    timed_out();
    Err(failed(format!("timed out after {timeout:?}")))
}

/// Snapshots `worker` into the segment and empties the journal (the route
/// must be paused and drained); returns the state's schema and size.
pub(super) async fn snapshot_into_segment(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    worker: &SupervisedWorker,
    timeout: Duration,
) -> Result<(u32, u64, Vec<JournalEntry>), SwapError> {
    let write = settled_snapshot(state, route, worker, None, timeout).await?;
    state.set_journal_base(write.generation);
    Ok((write.schema, write.len, route.journal().take()))
}

pub(super) fn restore_request(generation: u64, wait: Duration) -> Request<'static> {
    Request::RestoreFromSegment {
        generation,
        wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
    }
}

/// Restores `worker` from `generation` of the segment (no wait: it is
/// published already).
pub(super) async fn restore_from(
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
pub(super) enum Step<'a> {
    Restore(u64),
    Invoke(&'a JournalEntry),
    /// A snapshot whose state is discarded (can the version serialise it?).
    Probe,
    Health,
}

/// Sends `steps` to `worker` in order, [`REPLAY_BATCH`] at a time without
/// waiting for answers in between (the worker runs frames in arrival
/// order; [`SupervisedWorker::call_in_order`] queues each after the one
/// before); returns the answers, or the first failure named by its step.
pub(super) async fn pipelined(
    worker: &SupervisedWorker,
    steps: &[Step<'_>],
) -> Result<Vec<Bytes>, (&'static str, InvokeError)> {
    let mut answers = Vec::with_capacity(steps.len());
    for batch in steps.chunks(REPLAY_BATCH) {
        let calls: Vec<OrderedCall<'_>> = batch
            .iter()
            .map(|step| match step {
                Step::Restore(generation) => {
                    OrderedCall::Request(restore_request(*generation, Duration::ZERO))
                }
                Step::Invoke(entry) => OrderedCall::Invoke {
                    op: &entry.op,
                    input: entry.input.clone(),
                },
                Step::Probe => OrderedCall::Request(Request::ProbeSnapshot),
                Step::Health => OrderedCall::Request(Request::Health),
            })
            .collect();
        let results = worker.call_in_order(&calls).await;
        for (step, result) in batch.iter().zip(results) {
            let name = match step {
                Step::Restore(_) => "restore",
                Step::Invoke(_) => "replay",
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

/// Writes the segment's current state to disk (outside any pause). The
/// write and its fsyncs (up to a 64 MiB state) block: on the node's
/// multi-threaded runtime the thread hands its other tasks over first.
pub(super) fn write_durable(state: &PackageState, version: &str) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let flavor = Handle::try_current().map(|handle| handle.runtime_flavor());
    if matches!(flavor, Ok(RuntimeFlavor::MultiThread)) {
        tokio::task::block_in_place(|| write_durable_now(state, version));
    } else {
        write_durable_now(state, version);
    }
}

fn write_durable_now(state: &PackageState, version: &str) {
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

/// Describes a failed call to the worker taking over, naming an
/// out-of-memory as such (the usual cause: its wasm memory limit is too
/// small for the state).
pub(super) fn takeover_failure(what: &str, error: &InvokeError, state_len: u64) -> String {
    match error {
        InvokeError::MemoryLimit { message } => format!(
            "{what} trapped: out of memory with a state of {state_len} bytes \
             (the new version's wasm memory limit is too small: {message})"
        ),
        InvokeError::Trap { message } => format!("{what} trapped: {message}"),
        other => format!("{what}: {other}"),
    }
}

/// SIGKILL to `worker`'s process (the supervisor restarts it).
pub(super) fn kill(worker: &SupervisedWorker) {
    if let Some(pid) = worker.pid().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The calls `worker` ran since its state was `generation`, from the
/// `from`-th on, fetched one frame at a time.
pub(super) async fn journal_since(
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
pub(super) async fn replay(
    worker: &SupervisedWorker,
    calls: &[JournalEntry],
) -> Result<(), (&'static str, InvokeError)> {
    let steps: Vec<Step<'_>> = calls.iter().map(Step::Invoke).collect();
    pipelined(worker, &steps).await.map(|_| ())
}

/// Waits (bounded) until `worker` serves and answers `health`; `false` if
/// it does not in time. A process that just died may still read as ready
/// until the supervisor reaps it, hence the health probe.
pub(super) async fn wait_ready(worker: &SupervisedWorker, timeout: Duration) -> bool {
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

/// Whether the state `worker` holds is at least `config.early_snapshot_min_bytes`
/// (then it is snapshotted before a pause, not inside it). The last
/// checkpoint's length says so, unless the calls since (by their size) may
/// have grown it past the bound: then the worker is asked (a snapshot it
/// discards, outside any pause). A failed probe says no: the pause then
/// moves the whole state, as it always may.
pub(super) async fn state_is_large(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    worker: &SupervisedWorker,
    config: &SwapConfig,
) -> bool {
    let bound = config.early_snapshot_min_bytes;
    let last = state.last_len();
    if last >= bound {
        return true;
    }
    if last.saturating_add(route.journal().bytes() as u64) < bound {
        return false;
    }
    let probe = tokio::time::timeout(
        config.prewarm_timeout,
        worker.request(&Request::ProbeSnapshot),
    );
    match probe.await {
        Ok(Ok(answer)) => <[u8; 8]>::try_from(&answer[..])
            .map(u64::from_le_bytes)
            .is_ok_and(|len| len >= bound),
        _ => false,
    }
}

/// The route and swap state of a running `package`.
pub(super) fn running(
    supervisor: &Supervisor,
    package: &str,
) -> Result<(Arc<Route<SupervisedWorker>>, Arc<PackageState>), SwapError> {
    let route = supervisor
        .route(package)
        .ok_or_else(|| SwapError::NotRunning {
            package: package.to_string(),
        })?;
    Ok((route, supervisor.package_state(package)))
}

/// Narrows `route`'s window to [`pause_window`] calls (calls keep flowing)
/// and waits, bounded by `drain_timeout` (past it the pause just drains
/// more), until the calls at the worker fit it, so the pause that follows
/// waits for at most that many. The caller's `resume` widens it again.
pub(super) async fn narrow_before_pause(
    route: &Route<SupervisedWorker>,
    package: &str,
    config: &SwapConfig,
    event: &mut SwapEvent,
) {
    let narrowed_at = Instant::now();
    route.narrow(pause_window());
    if !route
        .wait_narrowed(narrowed_at + config.drain_timeout)
        .await
    {
        tracing::info!(
            package,
            calls = route.calls_in_progress(),
            "calls still above the narrowed window; pausing anyway"
        );
    }
    event.timings.narrow_us = us(narrowed_at);
}
