//! Steps 2–4 of a swap: the pause, and the state moving from the old
//! worker to the new one, either whole inside the pause or snapshotted
//! early with only the calls since replayed inside it.
//!
//! The drain overlaps the state's move: once the route is paused and every
//! admitted call's request is queued at the old worker
//! ([`Route::wait_sent`]), the snapshot (or the journal fetch) is queued
//! right behind them. The worker runs frames in arrival order, so what it
//! answers already reflects every call of the window; the journal is only
//! touched once those calls are answered and journaled too (the drain).

use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::events::SwapEvent;
use super::journal::JournalEntry;
use super::orchestrator::{SwapConfig, SwapError};
use super::package_state::PackageState;
use super::steps::{
    Step, bounded, ensure_attached, graced_snapshot, health_step, journal_since, kill,
    narrow_before_pause, pipelined, replay, restore_request, snapshot_to_segment_for, step_fault,
    takeover_failure, us,
};
use crate::runtime::InvokeError;
use crate::runtime::frame::{Request, SegmentWrite};
use crate::runtime::{Route, SupervisedWorker};

/// Steps 2–4 under the pause; the caller flips or aborts.
pub(super) async fn paused_steps(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
    garbage: &mut Vec<JournalEntry>,
) -> Result<(), SwapError> {
    let paused = pause(route, state, old, new, config, event).await?;
    let drain = drained(route, state.package(), paused, config);
    let moved = snapshot_and_restore(
        route,
        state,
        old,
        new,
        config,
        event,
        garbage,
        paused.at + config.drain_timeout + config.snapshot_timeout,
        drain,
    )
    .await;
    tracing::debug!(
        package = state.package(),
        narrow_us = event.timings.narrow_us,
        sent_us = paused.sent_us,
        drain_us = event.timings.drain_us,
        snapshot_us = event.timings.snapshot_us,
        restore_us = event.timings.restore_us,
        health_us = event.timings.health_us,
        ok = moved.is_ok(),
        "paused steps (µs; snapshot from the sent point, drain from the pause)"
    );
    moved
}

/// When the route was paused; by then every admitted call's request was
/// queued at the old worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Paused {
    at: Instant,
    /// From the pause until every admitted call was queued, µs.
    sent_us: u64,
}

/// Calls a route lets be at the old worker once a swap is about to pause
/// (its window narrows to this many first, while calls keep flowing), so
/// the pause waits for at most this many calls instead of the whole
/// window (32 by default). Calls beyond it wait in the route's queue as
/// for a full window; the worker runs calls one at a time, so a few in
/// flight keep it as busy.
pub const PAUSE_WINDOW: usize = 4;

/// Overrides [`PAUSE_WINDOW`] from the node's environment (1 to the
/// route's window; the window's size turns the narrowing off).
pub const PAUSE_WINDOW_ENV: &str = "CLAWMESH_PAUSE_WINDOW";

pub(super) fn pause_window() -> usize {
    std::env::var(PAUSE_WINDOW_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(PAUSE_WINDOW)
}

/// Step 2, first half: narrow the route's window and wait (bounded by
/// `drain_timeout`; past it the pause just drains more) until the calls at
/// the old worker fit it; pause the route and wait until every call
/// admitted before it is queued on the old worker's connection
/// (microseconds: a call is between its admission and its send only that
/// long), so a request queued now runs at the worker after all of them.
/// The caller's resume widens the window again, on abort too.
async fn pause(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
) -> Result<Paused, SwapError> {
    let package = state.package();
    step_fault(package, "pause", old.pid(), new.pid())?;
    narrow_before_pause(route, package, config, event).await;
    let at = Instant::now();
    route.pause();
    if !route.wait_sent(at + config.drain_timeout).await {
        return Err(SwapError::Step {
            package: package.to_string(),
            step: "pause",
            why: format!(
                "{} admitted calls still not sent to the worker after {:?}",
                route.calls_unsent(),
                config.drain_timeout
            ),
        });
    }
    Ok(Paused {
        at,
        sent_us: us(at),
    })
}

/// Step 2, second half, run beside the snapshot: every admitted call
/// answered and journaled, within `drain_timeout` of the pause. Returns
/// when that was, in µs since the pause.
async fn drained(
    route: &Route<SupervisedWorker>,
    package: &str,
    paused: Paused,
    config: &SwapConfig,
) -> Result<u64, SwapError> {
    let left = (paused.at + config.drain_timeout).saturating_duration_since(Instant::now());
    if route.drain(left).await {
        return Ok(us(paused.at));
    }
    Err(SwapError::Step {
        package: package.to_string(),
        step: "pause",
        why: format!("{} after {:?}", route.unfinished(), config.drain_timeout),
    })
}

/// The old worker's snapshot into the segment, queued behind the calls of
/// the window, bounded by `deadline` (with `steps::graced_snapshot`'s
/// grace). Unlike `steps::settled_snapshot`, a late publish leaves the
/// journal alone: the calls of the window may not all be journaled yet,
/// and the journal stays exact for the generation it follows, which is
/// still in the segment (the previous one); the caller closes the warm
/// window.
async fn overlapped_snapshot(
    state: &PackageState,
    old: &SupervisedWorker,
    reader: &SupervisedWorker,
    deadline: Instant,
) -> Result<SegmentWrite, SwapError> {
    let bound = deadline.saturating_duration_since(Instant::now());
    graced_snapshot(state, old, Some(reader), bound, || {}).await
}

/// The fallback of an early-snapshot swap whose delta could not be used:
/// the whole state moves inside the pause, the drain already done.
async fn whole_state_after_drain(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
    garbage: &mut Vec<JournalEntry>,
) -> Result<(), SwapError> {
    let deadline = Instant::now() + config.snapshot_timeout;
    let done = event.timings.drain_us;
    snapshot_and_restore(
        route,
        state,
        old,
        new,
        config,
        event,
        garbage,
        deadline,
        async move { Ok(done) },
    )
    .await
}

/// Steps 3–4 with the whole state inside the pause (no early snapshot, or
/// its delta could not be had), beside the drain (`drain`, which says when
/// it ended; already done on the fallback from an early snapshot). The
/// snapshot must answer by `snapshot_deadline`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn snapshot_and_restore(
    route: &Route<SupervisedWorker>,
    state: &PackageState,
    old: &SupervisedWorker,
    new: &SupervisedWorker,
    config: &SwapConfig,
    event: &mut SwapEvent,
    garbage: &mut Vec<JournalEntry>,
    snapshot_deadline: Instant,
    drain: impl Future<Output = Result<u64, SwapError>>,
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
    // A failed snapshot stops the wait for the restore (the new worker is
    // stopped on abort anyway).
    let snapshot_failed = Notify::new();
    let snapshot = async {
        let result = overlapped_snapshot(state, old, new, snapshot_deadline).await;
        if result.is_err() {
            snapshot_failed.notify_one();
        }
        (result, us(start))
    };
    let wait = snapshot_deadline.saturating_duration_since(start);
    let restore = async {
        let restore = async {
            let result = new.request(&restore_request(target, wait)).await;
            (result, us(start))
        };
        let health = async {
            let result = new.request(&Request::Health).await;
            (result, us(start))
        };
        let both = tokio::time::timeout_at(
            (snapshot_deadline + config.restore_timeout + config.health_timeout).into(),
            async { tokio::join!(restore, health) },
        );
        tokio::select! {
            both = both => both.map_err(|_| "timed out".to_string()),
            () = snapshot_failed.notified() => Err("the snapshot failed".to_string()),
        }
    };
    let (drained, (snapshot, snapshot_us), pipelined) = tokio::join!(drain, snapshot, restore);
    let write = snapshot?;
    // Published; the journal follows it only once every call of the window
    // is journaled (else it keeps following the generation before).
    event.timings.drain_us = drained?;
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
pub(super) struct Early {
    generation: u64,
    copied: Vec<JournalEntry>,
    /// The new worker's process that holds that state (a restarted one
    /// would not).
    new_pid: Option<u32>,
}

/// Outside the pause: the old worker publishes its state into the segment
/// (its journal starts over there, while it keeps serving); the new worker
/// restores that generation, proves it can snapshot what it restored, and
/// passes health; then the calls the old worker ran meanwhile are replayed
/// into it in up to [`CATCH_UP_ROUNDS`] rounds. The route's journal still
/// follows the previous generation until the pause replaces it.
pub(super) async fn pre_copy(
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

/// Steps 2–4 after an early snapshot: pause, drain, fetch the calls the old
/// worker ran since the last catch-up round, replay them into the new
/// worker with `health`; the route's journal becomes every call since the
/// early snapshot, which becomes the package's checkpoint. If the old
/// worker cannot say (it was restarted, its journal overflowed), the whole
/// state moves inside the pause as without an early snapshot.
#[allow(clippy::too_many_arguments)]
pub(super) async fn paused_delta(
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
    let paused = pause(route, state, old, new, config, event).await?;
    step_fault(package, "snapshot", old.pid(), new.pid())?;
    step_fault(package, "restore", old.pid(), new.pid())?;
    step_fault(package, "health", old.pid(), new.pid())?;
    let Early {
        generation,
        mut copied,
        new_pid,
    } = early;
    // The fetch is queued behind the calls of the window, so the old
    // worker's answer includes them; it overlaps the drain.
    let start = paused.at;
    let bound = (paused.at + config.drain_timeout + config.snapshot_timeout)
        .saturating_duration_since(Instant::now());
    let fetch = bounded(package, "snapshot", bound, async {
        journal_since(old, generation, copied.len()).await
    });
    let (drained, fetched) = tokio::join!(drained(route, package, paused, config), fetch);
    event.timings.drain_us = drained?;
    let delta = match fetched {
        Ok(delta) => delta,
        Err(error) => {
            tracing::info!(package, %error, "no journal since the early snapshot; moving the whole state");
            return whole_state_after_drain(route, state, old, new, config, event, garbage).await;
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
        return whole_state_after_drain(route, state, old, new, config, event, garbage).await;
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
