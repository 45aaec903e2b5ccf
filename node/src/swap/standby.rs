//! The warm standby of the last swap follows the calls the new version
//! acknowledges.
//!
//! After a swap the old worker stays warm with the state it had at the
//! pause. A rollback must bring that state forward by every call the new
//! version acknowledged since. Rather than replaying them all inside the
//! rollback's pause (and rather than keeping them all: a checkpoint of the
//! new version empties the journal), the standby is brought forward in
//! batches outside any pause: before each checkpoint (whose pause replays
//! the short tail into the standby while the active snapshots) and before a
//! rollback (whose pause replays only the calls since). The journal's
//! sequence numbers say how far the standby has come, across checkpoints.
//!
//! A standby that cannot follow (it was restarted and lost its state, a
//! call fails in it, the calls it needs were dropped) closes the window: a
//! rollback is then a swap to the previous version.

use std::sync::Arc;
use std::time::Instant;

use super::journal::{JournalEntry, MAX_JOURNAL_ENTRIES};
use super::orchestrator::SwapConfig;
use super::package_state::{PackageState, WarmWindow};
use super::steps::{replay, restore_from, takeover_failure, wait_ready};
use crate::runtime::{Route, SupervisedWorker};

/// Calls replayed into the standby per round of a catch-up.
pub const FOLLOW_BATCH: usize = 4096;

/// Rounds of a catch-up; calls acknowledged faster than the standby applies
/// them are left for the next one (or the pause).
pub const FOLLOW_ROUNDS: usize = 16;

/// A round that brought fewer calls than this is the last.
pub const FOLLOW_ENOUGH: usize = 64;

/// Opens the warm window of a swap that just flipped: `old` is the standby
/// and holds every call acknowledged so far; the journal follows the state
/// the old worker handed over. Called before the control lock is let go, so
/// no checkpoint runs between the flip and this.
pub(super) fn open_window(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    old: &SupervisedWorker,
    config: &SwapConfig,
) {
    let journal = route.journal();
    state.open_window(WarmWindow {
        until: Instant::now() + config.warm_window,
        from: old.spec().clone(),
        standby_pid: old.pid(),
        applied: journal.end(),
        base_generation: state.journal_base(),
        base_seq: journal.first(),
    });
}

/// The standby of the open window and the window, if the standby can
/// follow; closes the window otherwise. A standby restarted since the swap
/// lost the calls it applied: it is brought back from the window's base
/// while the segment and the journal still hold it (no checkpoint since),
/// else from the package's last checkpoint if its version can read the
/// newer schema (a down-migration). Call under the control lock.
pub(super) async fn following(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    config: &SwapConfig,
) -> Option<(Arc<SupervisedWorker>, WarmWindow)> {
    let mut window = state.window()?;
    let package = state.package();
    let Some(standby) = route.standby() else {
        state.close_window("the standby is gone");
        return None;
    };
    if !wait_ready(&standby, config.prewarm_timeout).await {
        state.close_window(&format!(
            "the standby did not answer health within {:?}",
            config.prewarm_timeout
        ));
        return None;
    }
    if standby.pid() == window.standby_pid {
        return Some((standby, window));
    }
    let held = route.journal().entries_from(window.base_seq, 0).is_some();
    let restored = if held {
        restore_from(
            state,
            &standby,
            window.base_generation,
            config.restore_timeout,
        )
        .await
        .map(|()| (window.base_seq, "the swap's state"))
        .map_err(|e| e.to_string())
    } else {
        // A checkpoint since the swap took the calls it needs. The newer
        // version's last checkpoint serves if the standby's version can
        // read it (a down-migration); its `restore` refuses it otherwise.
        let (generation, first) = (state.journal_base(), route.journal().first());
        restore_from(state, &standby, generation, config.restore_timeout)
            .await
            .map(|()| (first, "the last checkpoint, migrated down"))
            .map_err(|e| format!("a checkpoint since the swap took the calls it needs, and the standby cannot read the last one: {e}"))
    };
    match restored {
        Ok((applied, from)) => {
            tracing::info!(package, from, "restarted standby brought back");
            window.standby_pid = standby.pid();
            window.applied = applied;
            state.set_standby_process(window.standby_pid, window.applied);
            Some((standby, window))
        }
        Err(why) => {
            state.close_window(&format!(
                "the standby was restarted and cannot be brought back: {why}"
            ));
            None
        }
    }
}

/// The calls the standby has not applied, up to `most`; `Err` (and the
/// window closed) when they are no longer all held.
pub(super) fn pending(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    window: &WarmWindow,
    most: usize,
) -> Result<Vec<JournalEntry>, String> {
    route
        .journal()
        .entries_from(window.applied, most)
        .ok_or_else(|| {
            let why = format!(
                "calls from #{} on are no longer in the journal (it overflowed or was emptied)",
                window.applied
            );
            state.close_window(&why);
            why
        })
}

/// Replays `calls` (the next ones after `window.applied`) into `standby`
/// and records how far it came; on failure the window is closed.
pub(super) async fn apply(
    state: &PackageState,
    standby: &SupervisedWorker,
    window: &mut WarmWindow,
    calls: &[JournalEntry],
) -> Result<(), String> {
    if calls.is_empty() {
        return Ok(());
    }
    if let Err((step, error)) = replay(standby, calls).await {
        let why = format!(
            "the standby {} could not follow the calls: {}",
            standby.spec().version,
            takeover_failure(step, &error, 0)
        );
        state.close_window(&why);
        return Err(why);
    }
    window.applied += calls.len() as u64;
    state.set_standby_applied(window.applied);
    Ok(())
}

/// Brings the standby forward outside any pause, in up to
/// [`FOLLOW_ROUNDS`] rounds of [`FOLLOW_BATCH`] calls; returns how many it
/// applied. Call under the control lock.
pub(super) async fn catch_up(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    standby: &SupervisedWorker,
    window: &mut WarmWindow,
) -> Result<u64, String> {
    let mut applied = 0;
    for _ in 0..FOLLOW_ROUNDS {
        let calls = pending(state, route, window, FOLLOW_BATCH)?;
        apply(state, standby, window, &calls).await?;
        applied += calls.len() as u64;
        if calls.len() < FOLLOW_ENOUGH {
            break;
        }
    }
    Ok(applied)
}

/// Everything the standby has not applied, for a pause (the route drained,
/// so the journal holds still); bounded by the journal's own bound.
pub(super) fn tail(
    state: &PackageState,
    route: &Route<SupervisedWorker>,
    window: &WarmWindow,
) -> Result<Vec<JournalEntry>, String> {
    pending(state, route, window, MAX_JOURNAL_ENTRIES)
}
