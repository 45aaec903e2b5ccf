//! Rollback: a flip back to the warm old worker, which has followed the
//! calls since the swap (`standby`), while the warm window is open; a swap
//! to the previous version after it.

use std::time::Instant;

use super::events::SwapEvent;
use super::orchestrator::{SwapConfig, SwapError, swap};
use super::package_state::PackageState;
use super::standby;
use super::steps::{
    Step, bounded, ensure_attached, narrow_before_pause, pipelined, running,
    snapshot_to_segment_for, step_fault, us, wait_ready, write_durable,
};
use crate::runtime::{Route, SupervisedWorker, Supervisor};

/// Rolls `package` back: a flip while the warm window is open, a swap to
/// the previous version after it (or when the standby could not follow).
pub async fn rollback(
    supervisor: &Supervisor,
    package: &str,
    config: &SwapConfig,
) -> Result<SwapEvent, SwapError> {
    let (route, state) = running(supervisor, package)?;
    let new = route.active();
    // An active worker being restarted after a crash comes back with its
    // state; wait for it (outside the pause) rather than fail the rollback.
    if !wait_ready(&new, config.prewarm_timeout).await {
        return Err(SwapError::Step {
            package: package.to_string(),
            step: "rollback",
            why: format!("{} is {:?}, not ready", new.spec().version, new.state()),
        });
    }
    let control = supervisor.lock_control().await;
    // Decided under the control lock: no checkpoint or swap runs meanwhile.
    let following = if std::sync::Arc::ptr_eq(&route.active(), &new) {
        standby::following(&state, &route, config).await
    } else {
        None
    };
    let Some((old, mut window)) = following else {
        drop(control);
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
    let mut event = SwapEvent::new(package, "rollback");
    event.from_version = Some(new.spec().version.clone());
    event.to_version = Some(old.spec().version.clone());
    let failed = |why: String| SwapError::Step {
        package: package.to_string(),
        step: "rollback",
        why,
    };
    let outcome = async {
        let early = Instant::now();
        let caught_up = standby::catch_up(&state, &route, &old, &mut window)
            .await
            .map_err(failed)?;
        // The standby's state becomes the package's checkpoint, taken
        // before the pause; the journal keeps following the one before it
        // until the flip.
        let since = window.applied;
        let write = bounded(package, "snapshot", config.prewarm_timeout, async {
            ensure_attached(&state, &old).await?;
            snapshot_to_segment_for(&state, &old, None).await
        })
        .await?;
        event.state_bytes = write.len;
        // Calls acknowledged during that snapshot: into the standby too,
        // still outside the pause (its state runs ahead of its checkpoint,
        // and the journal keeps them from `since` on).
        let caught_up = caught_up
            + standby::catch_up(&state, &route, &old, &mut window)
                .await
                .map_err(failed)?;
        event.timings.prewarm_us = us(early);
        narrow_before_pause(&route, package, config, &mut event).await;
        let paused_at = Instant::now();
        let paused =
            rollback_paused(&route, &state, &new, &old, &mut window, config, &mut event).await;
        if paused.is_ok() {
            // Calls before `since` are in the standby's checkpoint.
            drop(route.journal().drop_before(since));
            state.set_journal_base(write.generation);
            let flip_start = Instant::now();
            route.flip();
            event.timings.flip_us = us(flip_start);
        }
        route.resume();
        event.timings.pause_us = us(paused_at);
        event.replayed += caught_up;
        paused
    }
    .await;
    match outcome {
        Ok(()) => {
            let left = route.set_standby(None);
            state.close_window("a rollback used it");
            state.set_previous_spec(Some(new.spec().clone()));
            drop(control);
            write_durable(&state, &old.spec().version);
            if let Some(left) = left {
                supervisor.stop_worker(&left).await;
            }
            state.record(&event);
            supervisor.emit(event.clone());
            Ok(event)
        }
        Err(error) => {
            // The standby may hold part of the calls: it cannot follow any
            // more (a rollback is now a swap).
            state.close_window(&format!("a rollback failed: {error}"));
            drop(control);
            event.kind = "rollback_failed";
            event.error = Some(error.to_string());
            state.record(&event);
            supervisor.emit(event);
            Err(error)
        }
    }
}

/// Under the pause: the calls the standby has not applied yet and
/// `health`, sent in order at once; the caller flips on success.
async fn rollback_paused(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    new: &SupervisedWorker,
    old: &SupervisedWorker,
    window: &mut super::package_state::WarmWindow,
    config: &SwapConfig,
    event: &mut SwapEvent,
) -> Result<(), SwapError> {
    let package = state.package();
    step_fault(package, "rollback", new.pid(), old.pid())?;
    let start = Instant::now();
    route.pause();
    if !route.drain(config.drain_timeout).await {
        return Err(SwapError::Step {
            package: package.to_string(),
            step: "pause",
            why: format!("{} after {:?}", route.unfinished(), config.drain_timeout),
        });
    }
    event.timings.drain_us = us(start);
    let start = Instant::now();
    let failed = |why: String| SwapError::Step {
        package: package.to_string(),
        step: "restore",
        why,
    };
    let tail = standby::tail(state, route, window).map_err(failed)?;
    let mut steps: Vec<Step<'_>> = tail.iter().map(Step::Invoke).collect();
    steps.push(Step::Health);
    bounded(
        package,
        "restore",
        config.restore_timeout + config.health_timeout,
        async {
            pipelined(old, &steps)
                .await
                .map_err(|(step, why)| format!("{step}: {why}"))
        },
    )
    .await?;
    window.applied += tail.len() as u64;
    event.replayed = tail.len() as u64;
    event.state_path = Some("replay");
    event.timings.restore_us = us(start);
    Ok(())
}
