//! What the node keeps per running package for swaps and crash safety: the
//! state segment (current checkpoint and the one before it), the warm
//! window of the last swap, where durable checkpoints go, and what
//! happened last (for `status`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use clawmesh_shm::{PublishError, ReadError, StateSegment, StateSnapshot};
use serde::Serialize;

use super::events::SwapEvent;
use crate::runtime::SkillSpec;

/// Capacity of a new segment's buffers; it grows when a state outgrows it.
pub const INITIAL_SEGMENT_CAPACITY: u64 = 64 * 1024;

/// Why a state could not be put into or read from the segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The segment could not be created or grown.
    #[error("state segment of {capacity} bytes: {why}")]
    Create {
        /// Capacity asked for.
        capacity: u64,
        /// What failed.
        why: String,
    },
    /// Publishing failed.
    #[error("publishing the state: {0}")]
    Publish(#[from] PublishError),
    /// Reading failed (nothing published, torn or corrupt).
    #[error("reading the state: {0}")]
    Read(#[from] ReadError),
}

/// The rollback window of the last swap.
/// While it is open the standby (the version swapped away from) follows
/// the calls the new version acknowledges: they are replayed into it in
/// batches, outside any pause (`swap::standby`), so a rollback replays only
/// the last few.
#[derive(Debug, Clone)]
pub struct WarmWindow {
    /// Until when a rollback is a flip.
    pub until: Instant,
    /// The version swapped away from (now standby).
    pub from: SkillSpec,
    /// The standby's process: one restarted since lost the calls it had
    /// applied, and the window with them.
    pub standby_pid: Option<u32>,
    /// Sequence number (the route journal's) of the first call the standby
    /// has not applied.
    pub applied: u64,
    /// The generation holding the standby's state at the swap, and the
    /// sequence number of the first call after it: a restarted standby is
    /// brought back from them while both are still held.
    pub base_generation: u64,
    /// See `base_generation`.
    pub base_seq: u64,
}

#[derive(Debug, Default)]
struct Tracked {
    checkpoints_dir: Option<PathBuf>,
    window: Option<WarmWindow>,
    /// The spec swapped away from last (rollback target after the window).
    previous: Option<SkillSpec>,
    checkpoint_unix_ms: Option<u64>,
    durable_unix_ms: Option<u64>,
    last_event: Option<SwapEvent>,
    last_failure: Option<SwapEvent>,
    /// Why the last warm window closed (none while one is open).
    window_closed: Option<String>,
    checkpoint_task: bool,
}

/// A package's swap and checkpoint state; shared by the supervisor's tasks.
#[derive(Debug)]
pub struct PackageState {
    package: String,
    segment: Mutex<Segment>,
    tracked: Mutex<Tracked>,
    /// Held while a durable checkpoint is written: a swap and a periodic
    /// checkpoint finishing together share the file and its temp file.
    durable_write: Mutex<()>,
}

/// The package's segment and which one it is: the epoch grows with every
/// new segment (creation, growth), so a worker holding an older one is
/// handed the new fd before it reads or writes.
#[derive(Debug, Default)]
struct Segment {
    segment: Option<StateSegment>,
    epoch: u64,
    /// Length of the last state published (sizes growth ahead of time).
    last_len: u64,
    /// The generation the route's journal follows: the package's
    /// checkpoint. Equal to the segment's current generation, except
    /// between a swap's early snapshot and its pause, when it is the
    /// previous one (docs/SWAP.md, "Early snapshot").
    journal_base: u64,
}

impl std::ops::Deref for Segment {
    type Target = Option<StateSegment>;
    fn deref(&self) -> &Self::Target {
        &self.segment
    }
}

/// `status` view of a package's swap state.
#[derive(Debug, Clone, Serialize)]
pub struct PackageSwapStatus {
    /// Package.
    pub package: String,
    /// Segment generation of the last checkpoint (0: none).
    pub checkpoint_generation: u64,
    /// Age of the last checkpoint in the segment, ms.
    pub checkpoint_age_ms: Option<u64>,
    /// Age of the last checkpoint written to disk, ms.
    pub durable_checkpoint_age_ms: Option<u64>,
    /// Calls journaled since the last checkpoint.
    pub journal_entries: usize,
    /// Version a rollback flips back to, while the warm window is open.
    pub rollback_to: Option<String>,
    /// Milliseconds the warm window stays open.
    pub warm_window_left_ms: Option<u64>,
    /// Version a rollback swaps back to after the window.
    pub previous_version: Option<String>,
    /// The last swap, rollback, checkpoint or recovery.
    pub last_event: Option<SwapEvent>,
    /// The last failed swap or rollback.
    pub last_failure: Option<SwapEvent>,
    /// Why the last warm window closed: a rollback used it, its time ran
    /// out, the standby could not follow, ... (none while one is open).
    pub window_closed: Option<String>,
}

impl PackageState {
    /// Nothing published, no window.
    pub fn new(package: String) -> Self {
        Self {
            package,
            segment: Mutex::new(Segment::default()),
            tracked: Mutex::default(),
            durable_write: Mutex::new(()),
        }
    }

    /// The package.
    pub fn package(&self) -> &str {
        &self.package
    }

    fn tracked(&self) -> MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn segment(&self) -> MutexGuard<'_, Segment> {
        self.segment.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes sure the segment exists with buffers of at least `needed`
    /// bytes: creates it, or grows it into a new one (doubling, so a growing
    /// state is not copied at every checkpoint) that keeps both states and
    /// their generations. Workers holding the old one must be handed the
    /// new fd ([`PackageState::segment_fd`]); the old one is freed when the
    /// last of them lets go.
    pub fn reserve(&self, needed: u64) -> Result<(), SegmentError> {
        let mut segment = self.segment();
        let replace = match segment.segment.as_ref() {
            None => Some(
                StateSegment::create(needed.max(INITIAL_SEGMENT_CAPACITY)).map_err(|e| {
                    SegmentError::Create {
                        capacity: needed,
                        why: e.to_string(),
                    }
                })?,
            ),
            Some(old) if old.capacity() < needed => {
                let capacity = needed.max(old.capacity().saturating_mul(2));
                Some(old.grown(capacity).map_err(|e| SegmentError::Create {
                    capacity,
                    why: e.to_string(),
                })?)
            }
            Some(_) => None,
        };
        if let Some(new) = replace {
            let old = segment.segment.replace(new);
            segment.epoch += 1;
            // A worker may be waiting in the old segment for the snapshot
            // that did not fit (a pipelined restore): publish a marker there
            // so it stops waiting and asks for the new one. Nobody else
            // writes the old segment now (the writer just said it did not
            // fit, or no snapshot is under way), and its states are copied.
            if let Some(mut old) = old
                && old.generation() > 0
                && let Err(error) = old.publish(super::worker_segment::MOVED_SCHEMA, &[])
            {
                tracing::warn!(%error, "could not mark the outgrown state segment");
            }
        }
        Ok(())
    }

    /// Grows the segment ahead of a swap when the last state uses more than
    /// two thirds of a buffer, so the snapshot inside the pause fits.
    pub fn reserve_headroom(&self) -> Result<(), SegmentError> {
        let last = self.segment().last_len;
        self.reserve(last.saturating_add(last / 2))
    }

    /// A duplicate of the segment's fd to hand to a worker, and its epoch.
    pub fn segment_fd(&self) -> Result<(OwnedFd, u64), SegmentError> {
        let segment = self.segment();
        let Some(inner) = segment.segment.as_ref() else {
            return Err(SegmentError::Read(ReadError::Empty));
        };
        let fd = inner
            .fd()
            .try_clone_to_owned()
            .map_err(|e| SegmentError::Create {
                capacity: inner.capacity(),
                why: format!("duplicating the segment fd: {e}"),
            })?;
        Ok((fd, segment.epoch))
    }

    /// The epoch of the current segment (0: none yet).
    pub fn segment_epoch(&self) -> u64 {
        self.segment().epoch
    }

    /// Records a checkpoint a worker published into the segment.
    pub fn note_published(&self, len: u64) {
        self.segment().last_len = len;
        self.tracked().checkpoint_unix_ms = Some(super::events::unix_ms());
    }

    /// Publishes a state into the segment from the node (made or grown as
    /// needed; only while no worker writes); returns its generation.
    pub fn publish(&self, schema: u32, data: &[u8]) -> Result<u64, SegmentError> {
        self.reserve(data.len() as u64)?;
        let mut segment = self.segment();
        let Some(inner) = segment.segment.as_mut() else {
            return Err(SegmentError::Read(ReadError::Empty));
        };
        let generation = inner.publish(schema, data)?;
        segment.last_len = data.len() as u64;
        // The node publishes only states no journal follows yet (a durable
        // checkpoint loaded before any call).
        segment.journal_base = generation;
        drop(segment);
        self.tracked().checkpoint_unix_ms = Some(super::events::unix_ms());
        Ok(generation)
    }

    /// Length of the last state published, bytes.
    pub fn last_len(&self) -> u64 {
        self.segment().last_len
    }

    /// The generation the route's journal follows (0: none): restoring it
    /// and replaying the journal gives the state callers were told about.
    pub fn journal_base(&self) -> u64 {
        self.segment().journal_base
    }

    /// Records that the route's journal now follows `generation`.
    pub fn set_journal_base(&self, generation: u64) {
        self.segment().journal_base = generation;
    }

    /// The last published generation (0: none).
    pub fn generation(&self) -> u64 {
        self.segment().as_ref().map_or(0, StateSegment::generation)
    }

    /// The current checkpoint.
    pub fn current(&self) -> Result<StateSnapshot, SegmentError> {
        match self.segment().as_ref() {
            Some(segment) => Ok(segment.read()?),
            None => Err(SegmentError::Read(ReadError::Empty)),
        }
    }

    /// The checkpoint before the current one (the other buffer).
    pub fn previous(&self) -> Result<StateSnapshot, SegmentError> {
        match self.segment().as_ref() {
            Some(segment) => Ok(segment.read_previous()?),
            None => Err(SegmentError::Read(ReadError::Empty)),
        }
    }

    /// Whether anything was published.
    pub fn has_checkpoint(&self) -> bool {
        self.segment().as_ref().is_some_and(|s| s.generation() > 0)
    }

    /// Where durable checkpoints of this package go.
    pub fn checkpoints_dir(&self) -> Option<PathBuf> {
        self.tracked().checkpoints_dir.clone()
    }

    /// Sets where durable checkpoints go.
    pub fn set_checkpoints_dir(&self, dir: Option<PathBuf>) {
        self.tracked().checkpoints_dir = dir;
    }

    /// Serialises durable checkpoint writes of this package; whoever holds
    /// it reads the current state after taking it, so a later writer never
    /// replaces a newer file with an older state.
    pub fn durable_write_lock(&self) -> MutexGuard<'_, ()> {
        self.durable_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a durable checkpoint written at `unix_ms`.
    pub fn set_durable(&self, unix_ms: u64) {
        self.tracked().durable_unix_ms = Some(unix_ms);
    }

    /// Marks a checkpoint loaded from disk: its age is the file's.
    pub fn set_loaded_checkpoint_age(&self, taken_unix_ms: u64) {
        let mut tracked = self.tracked();
        tracked.checkpoint_unix_ms = Some(taken_unix_ms);
        tracked.durable_unix_ms = Some(taken_unix_ms);
    }

    /// The open warm window, if any (an expired one is closed here).
    pub fn window(&self) -> Option<WarmWindow> {
        let mut tracked = self.tracked();
        if tracked
            .window
            .as_ref()
            .is_some_and(|w| w.until <= Instant::now())
        {
            tracked.window = None;
            tracked.window_closed = Some("the warm window's time ran out".into());
        }
        tracked.window.clone()
    }

    /// Opens a warm window after a swap away from `from`.
    pub fn open_window(&self, window: WarmWindow) {
        let mut tracked = self.tracked();
        tracked.previous = Some(window.from.clone());
        tracked.window = Some(window);
        tracked.window_closed = None;
    }

    /// Closes the warm window (rollback becomes a swap).
    pub fn close_window(&self, why: &str) {
        let mut tracked = self.tracked();
        if tracked.window.take().is_some() {
            tracing::info!(package = %self.package, why, "warm window closed");
            tracked.window_closed = Some(why.to_string());
        }
    }

    /// Records that the standby of the open window has applied every call
    /// before sequence number `applied`.
    pub fn set_standby_applied(&self, applied: u64) {
        if let Some(window) = self.tracked().window.as_mut() {
            window.applied = applied;
        }
    }

    /// Records the standby's new process (restarted and brought back to the
    /// window's base) and how far it has applied the calls.
    pub fn set_standby_process(&self, pid: Option<u32>, applied: u64) {
        if let Some(window) = self.tracked().window.as_mut() {
            window.standby_pid = pid;
            window.applied = applied;
        }
    }

    /// The version swapped away from last.
    pub fn previous_spec(&self) -> Option<SkillSpec> {
        self.tracked().previous.clone()
    }

    /// Sets the rollback target after a rollback (the version left).
    pub fn set_previous_spec(&self, spec: Option<SkillSpec>) {
        self.tracked().previous = spec;
    }

    /// Records an event for `status`.
    pub fn record(&self, event: &SwapEvent) {
        let mut tracked = self.tracked();
        if event.error.is_some() {
            tracked.last_failure = Some(event.clone());
        } else {
            tracked.last_event = Some(event.clone());
        }
    }

    /// Claims the right to run the periodic checkpoint task (once).
    pub fn claim_checkpoint_task(&self) -> bool {
        !std::mem::replace(&mut self.tracked().checkpoint_task, true)
    }

    /// `status` view; `journal_entries` comes from the route.
    pub fn status(&self, journal_entries: usize) -> PackageSwapStatus {
        let generation = self.journal_base();
        let window = self.window();
        let tracked = self.tracked();
        let now = super::events::unix_ms();
        PackageSwapStatus {
            package: self.package.clone(),
            checkpoint_generation: generation,
            checkpoint_age_ms: tracked.checkpoint_unix_ms.map(|t| now.saturating_sub(t)),
            durable_checkpoint_age_ms: tracked.durable_unix_ms.map(|t| now.saturating_sub(t)),
            journal_entries,
            rollback_to: window.as_ref().map(|w| w.from.version.clone()),
            warm_window_left_ms: window.as_ref().map(|w| {
                w.until
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64
            }),
            previous_version: tracked.previous.as_ref().map(|s| s.version.clone()),
            last_event: tracked.last_event.clone(),
            last_failure: tracked.last_failure.clone(),
            window_closed: tracked.window_closed.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishing_keeps_the_previous_state_and_grows_for_big_ones() {
        let state = PackageState::new("p".into());
        assert!(!state.has_checkpoint());
        state.publish(1, b"small").unwrap();
        let big = vec![7u8; INITIAL_SEGMENT_CAPACITY as usize * 3];
        state.publish(2, &big).unwrap();
        assert_eq!(state.current().unwrap().payload, big);
        let previous = state.previous().unwrap();
        assert_eq!(
            (previous.schema, previous.payload.as_slice()),
            (1, b"small".as_slice())
        );
    }
}
