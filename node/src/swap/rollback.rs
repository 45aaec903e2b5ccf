//! Rollback: a flip back to the warm old worker with the state brought
//! forward while the warm window is open, a swap to the previous version
//! after it.

use std::time::{Duration, Instant};

use super::events::SwapEvent;
use super::journal::JournalEntry;
use super::orchestrator::{SwapConfig, SwapError, swap};
use super::package_state::PackageState;
use super::steps::{
    Step, bounded, ensure_attached, health_step, pipelined, restore_from, restore_request,
    settle_write, settled_snapshot, snapshot_into_segment, step_fault, us, write_durable,
};
use crate::runtime::frame::Request;
use crate::runtime::{Route, SupervisedWorker, Supervisor, WorkerState};

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

pub(super) async fn rollback_paused(
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
