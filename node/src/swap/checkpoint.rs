//! Checkpoints (on demand and periodic) and the recovery of a restarted
//! worker from the last checkpoint and the journal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::SwapEvent;
use super::orchestrator::{SwapConfig, SwapError};
use super::package_state::PackageState;
use super::standby;
use super::steps::{
    REPLAY_BATCH, journal_since, kill, narrow_before_pause, restore_request, running,
    snapshot_into_segment, snapshot_to_segment_for, state_is_large, step_fault, us, write_durable,
};
use crate::runtime::connection::{OrderedCall, WorkerConnection};
use crate::runtime::frame::{Request, SegmentWrite};
use crate::runtime::{Route, SupervisedWorker, Supervisor};

/// Takes a checkpoint of `package` now (pause, drain, snapshot, resume),
/// then writes it to disk.
pub async fn checkpoint(
    supervisor: &Supervisor,
    package: &str,
    config: &SwapConfig,
) -> Result<SwapEvent, SwapError> {
    checkpoint_now(supervisor, package, config).await
}

/// A checkpoint. While a warm window is open the standby is brought
/// forward first (outside the pause), and the calls left are replayed into
/// it while the active worker snapshots (inside the pause), so the journal
/// can be emptied and the window stays open.
pub(super) async fn checkpoint_now(
    supervisor: &Supervisor,
    package: &str,
    config: &SwapConfig,
) -> Result<SwapEvent, SwapError> {
    let (route, state) = running(supervisor, package)?;
    let control = supervisor.lock_control().await;
    let active = route.active();
    let mut event = SwapEvent::new(package, "checkpoint");
    event.to_version = Some(active.spec().version.clone());
    let mut follow = standby::following(&state, &route, config).await;
    if let Some((standby, window)) = follow.as_mut() {
        let started = Instant::now();
        match standby::catch_up(&state, &route, standby, window).await {
            Ok(applied) => event.replayed = applied,
            Err(why) => {
                tracing::warn!(package, %why, "warm window closed");
                follow = None;
            }
        }
        event.timings.prewarm_us = us(started);
    }
    let early = early_snapshot(&state, &route, &active, config).await?;
    narrow_before_pause(&route, package, config, &mut event).await;
    let paused_at = Instant::now();
    route.pause();
    let result = async {
        step_fault(package, "checkpoint", active.pid(), None)?;
        if !route.drain(config.drain_timeout).await {
            return Err(SwapError::Step {
                package: package.to_string(),
                step: "pause",
                why: format!("{} after {:?}", route.unfinished(), config.drain_timeout),
            });
        }
        // The journal holds still now: the standby's tail is read before
        // the snapshot empties it.
        let tail = follow
            .as_ref()
            .map(|(_, window)| standby::tail(&state, &route, window));
        let follow_tail = async {
            match (follow.as_mut(), tail) {
                (Some((standby, window)), Some(Ok(calls))) => {
                    standby::apply(&state, standby, window, &calls)
                        .await
                        .map(|()| calls.len() as u64)
                }
                (_, Some(Err(why))) => Err(why),
                _ => Ok(0),
            }
        };
        let (snapshot, followed) = tokio::join!(
            paused_snapshot(&state, &route, &active, early, config),
            follow_tail
        );
        match followed {
            Ok(applied) => event.replayed += applied,
            Err(why) => tracing::warn!(package, %why, "warm window closed"),
        }
        snapshot
    }
    .await;
    route.resume();
    event.timings.pause_us = us(paused_at);
    drop(control);
    let (bytes, path) = result?;
    event.state_bytes = bytes;
    event.state_path = Some(path);
    write_durable(&state, &active.spec().version);
    state.record(&event);
    Ok(event)
}

/// For a state of at least `early_snapshot_min_bytes`, the active worker
/// publishes its state while it serves (its own journal starts over
/// there); the pause then only swaps the route's journal for the calls the
/// worker ran since, instead of holding the whole snapshot. `None`: the
/// state is small, or an early snapshot is already pending (the journal
/// follows the generation before the current one).
async fn early_snapshot(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    active: &SupervisedWorker,
    config: &SwapConfig,
) -> Result<Option<SegmentWrite>, SwapError> {
    if state.generation() == 0
        || state.journal_base() != state.generation()
        || !state_is_large(state, route, active, config).await
    {
        return Ok(None);
    }
    let bound = config.prewarm_timeout;
    match tokio::time::timeout(bound, snapshot_to_segment_for(state, active, None)).await {
        Ok(Ok(write)) => Ok(Some(write)),
        Ok(Err(why)) => {
            tracing::info!(package = state.package(), %why, "early snapshot failed; the whole state moves inside the pause");
            Ok(None)
        }
        Err(_) => {
            // A late publication would overwrite the buffer the journal
            // follows: stop it (the worker comes back from that buffer).
            kill(active);
            Err(SwapError::Step {
                package: state.package().to_string(),
                step: "snapshot",
                why: format!("early snapshot timed out after {bound:?}"),
            })
        }
    }
}

/// Under the pause: the route's journal becomes the calls since the early
/// snapshot (fetched from the worker), or, without one, the worker
/// snapshots the whole state. Returns the state's size and which way it went.
async fn paused_snapshot(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    active: &SupervisedWorker,
    early: Option<SegmentWrite>,
    config: &SwapConfig,
) -> Result<(u64, &'static str), SwapError> {
    if let Some(write) = early {
        let fetched = tokio::time::timeout(
            config.snapshot_timeout,
            journal_since(active, write.generation, 0),
        )
        .await;
        match fetched {
            Ok(Ok(delta)) => {
                drop(route.journal().replace(delta));
                state.set_journal_base(write.generation);
                return Ok((write.len, "early_snapshot+journal"));
            }
            Ok(Err(why)) => {
                tracing::info!(package = state.package(), %why, "no journal since the early snapshot; snapshotting the whole state");
            }
            Err(_) => {
                tracing::info!(
                    package = state.package(),
                    "the journal since the early snapshot timed out; snapshotting the whole state"
                );
            }
        }
    }
    let (_, bytes, _) =
        snapshot_into_segment(state, route, active, config.snapshot_timeout).await?;
    Ok((bytes, "snapshot"))
}

pub(super) fn start_checkpoint_task(
    supervisor: &Supervisor,
    state: &Arc<PackageState>,
    config: &SwapConfig,
) {
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
            if let Err(error) = checkpoint_now(&supervisor, state.package(), &config).await {
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
            let calls: Vec<OrderedCall<'_>> = batch
                .iter()
                .map(|entry| OrderedCall::Invoke {
                    op: &entry.op,
                    input: entry.input.clone(),
                })
                .collect();
            for result in connection.call_in_order(&calls).await {
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
