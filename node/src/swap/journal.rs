//! The journal: every call the worker ran `Ok` since the package's last
//! checkpoint, in the order it ran them, so a restarted worker (or a
//! rolled-back one) can be brought to the exact state callers were told
//! about.
//!
//! The rule is deliberately simple: every invoke the worker answered `Ok` is
//! journaled, whatever its op (the node cannot know which ops change
//! state), by the worker connection's reader in answer order (the route's
//! [`crate::runtime::connection::CallLog`]). Calls that failed are not:
//! their effect was not acknowledged.

use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;

/// Most entries kept; a checkpoint is due long before (see [`Journal::wants_checkpoint`]).
pub const MAX_JOURNAL_ENTRIES: usize = 65_536;

/// Most bytes of ops and inputs kept.
pub const MAX_JOURNAL_BYTES: usize = 64 * 1024 * 1024;

/// One acknowledged call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The operation.
    pub op: String,
    /// Its input.
    pub input: Bytes,
}

#[derive(Debug, Default)]
struct Entries {
    entries: Vec<JournalEntry>,
    /// Sequence number of `entries[0]`: every acknowledged call of the
    /// route has one, counted from the route's start, so a follower (the
    /// warm standby of a swap) can say how far it has applied the calls
    /// across checkpoints that empty the journal.
    start: u64,
    bytes: usize,
    /// Set when an entry had to be dropped: replay can no longer be exact.
    overflowed: bool,
    /// Entries dropped past the bounds since the last checkpoint; they keep
    /// their sequence numbers, so nobody counts them as applied.
    dropped: u64,
}

/// A bounded, ordered log of acknowledged calls since the last checkpoint.
#[derive(Debug, Default)]
pub struct Journal {
    inner: Mutex<Entries>,
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an acknowledged call. Past the bounds the entry is dropped
    /// and the journal marked overflowed (its sequence number is then
    /// lost with it: [`Journal::entries_from`] refuses to skip it).
    pub fn record(&self, op: impl Into<String>, input: Bytes) {
        let op = op.into();
        let mut inner = self.lock();
        let size = op.len() + input.len();
        if inner.entries.len() >= MAX_JOURNAL_ENTRIES || inner.bytes + size > MAX_JOURNAL_BYTES {
            inner.overflowed = true;
            inner.dropped += 1;
            return;
        }
        inner.bytes += size;
        inner.entries.push(JournalEntry { op, input });
    }

    /// Bytes of ops and inputs held: with the last checkpoint's length, a
    /// guess at how large the state may have grown since.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no call was journaled since the last checkpoint.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Whether the journal is half full (time for a checkpoint) or overflowed.
    pub fn wants_checkpoint(&self) -> bool {
        let inner = self.lock();
        inner.overflowed
            || inner.entries.len() >= MAX_JOURNAL_ENTRIES / 2
            || inner.bytes >= MAX_JOURNAL_BYTES / 2
    }

    /// Whether an entry was dropped since the last checkpoint.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// A copy of the entries, in order.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.lock().entries.clone()
    }

    /// Empties the journal (a checkpoint now holds everything) and returns
    /// what it held.
    pub fn take(&self) -> Vec<JournalEntry> {
        let mut inner = self.lock();
        inner.bytes = 0;
        inner.overflowed = false;
        inner.start += inner.entries.len() as u64 + std::mem::take(&mut inner.dropped);
        std::mem::take(&mut inner.entries)
    }

    /// Sequence number of the first call held (the first after the last
    /// checkpoint).
    pub fn first(&self) -> u64 {
        self.lock().start
    }

    /// Sequence number the next acknowledged call gets.
    pub fn end(&self) -> u64 {
        let inner = self.lock();
        inner.start + inner.entries.len() as u64 + inner.dropped
    }

    /// Up to `most` entries from sequence number `from` on. `None` when
    /// calls from `from` on are no longer all held (a checkpoint took them,
    /// or the journal overflowed).
    pub fn entries_from(&self, from: u64, most: usize) -> Option<Vec<JournalEntry>> {
        let inner = self.lock();
        if from < inner.start || inner.overflowed {
            return None;
        }
        let skip = usize::try_from(from - inner.start).ok()?;
        Some(
            inner
                .entries
                .iter()
                .skip(skip)
                .take(most)
                .cloned()
                .collect(),
        )
    }

    /// Drops the entries before sequence number `until` (a checkpoint
    /// holds them); returns them.
    pub fn drop_before(&self, until: u64) -> Vec<JournalEntry> {
        let mut inner = self.lock();
        let count = usize::try_from(until.saturating_sub(inner.start))
            .unwrap_or(usize::MAX)
            .min(inner.entries.len());
        let dropped: Vec<JournalEntry> = inner.entries.drain(..count).collect();
        inner.bytes -= dropped
            .iter()
            .map(|e| e.op.len() + e.input.len())
            .sum::<usize>();
        inner.start += count as u64;
        dropped
    }

    /// Replaces what the journal holds with `entries` (the calls a worker
    /// ran since the checkpoint that becomes the package's, in the order it
    /// ran them), within the same bounds as [`Journal::record`]; returns
    /// what it held.
    ///
    /// The new entries are the last calls acknowledged, so they take the
    /// last sequence numbers.
    pub fn replace(&self, entries: Vec<JournalEntry>) -> Vec<JournalEntry> {
        let mut fresh = Entries::default();
        let offered = entries.len() as u64;
        for entry in entries {
            let size = entry.op.len() + entry.input.len();
            if fresh.entries.len() >= MAX_JOURNAL_ENTRIES || fresh.bytes + size > MAX_JOURNAL_BYTES
            {
                fresh.overflowed = true;
                fresh.dropped = offered - fresh.entries.len() as u64;
                break;
            }
            fresh.bytes += size;
            fresh.entries.push(entry);
        }
        let mut inner = self.lock();
        let end = inner.start + inner.entries.len() as u64 + inner.dropped;
        fresh.start = end.saturating_sub(offered);
        std::mem::replace(&mut *inner, fresh).entries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_take_empties() {
        let journal = Journal::new();
        journal.record("add", Bytes::from_static(b"1"));
        journal.record("add", Bytes::from_static(b"2"));
        assert_eq!(journal.len(), 2);
        let taken = journal.take();
        assert_eq!(taken[1].input, Bytes::from_static(b"2"));
        assert!(journal.is_empty());
    }

    #[test]
    fn replace_swaps_in_a_worker_journal() {
        let journal = Journal::new();
        journal.record("old", Bytes::new());
        let delta = vec![JournalEntry {
            op: "add".into(),
            input: Bytes::from_static(b"3"),
        }];
        let held = journal.replace(delta.clone());
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].op, "old");
        assert_eq!(journal.entries(), delta);
    }

    #[test]
    fn sequence_numbers_survive_take_replace_and_drop_before() {
        let journal = Journal::new();
        let add = |n: u8| journal.record("add", Bytes::from(vec![n]));
        add(0);
        add(1);
        assert_eq!(journal.end(), 2);
        journal.take();
        assert_eq!(journal.end(), 2);
        assert_eq!(journal.entries_from(1, 10), None, "taken by a checkpoint");
        add(2);
        add(3);
        add(4);
        let from_3 = journal.entries_from(3, 10).unwrap();
        assert_eq!(
            from_3.iter().map(|e| e.input[0]).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(journal.entries_from(2, 1).unwrap().len(), 1);
        assert_eq!(journal.entries_from(5, 10).unwrap(), vec![]);
        let dropped = journal.drop_before(4);
        assert_eq!(dropped.len(), 2);
        assert_eq!(journal.entries_from(4, 10).unwrap()[0].input[0], 4);
        assert_eq!(journal.entries_from(3, 10), None);
        // A worker's journal of the last two calls: they keep their numbers.
        add(5);
        let last_two = journal.entries_from(4, 10).unwrap();
        journal.replace(last_two);
        assert_eq!(journal.end(), 6);
        assert_eq!(journal.entries_from(5, 10).unwrap()[0].input[0], 5);
        assert_eq!(journal.len(), 2);
    }

    #[test]
    fn an_overflowed_journal_cannot_be_followed() {
        let journal = Journal::new();
        for _ in 0..=MAX_JOURNAL_ENTRIES {
            journal.record("a", Bytes::new());
        }
        assert_eq!(journal.entries_from(0, 1), None);
        assert_eq!(journal.end(), MAX_JOURNAL_ENTRIES as u64 + 1);
        journal.take();
        assert_eq!(journal.entries_from(MAX_JOURNAL_ENTRIES as u64, 1), None);
    }

    #[test]
    fn past_the_entry_bound_entries_are_dropped_and_flagged() {
        let journal = Journal::new();
        for _ in 0..=MAX_JOURNAL_ENTRIES {
            journal.record("a", Bytes::new());
        }
        assert_eq!(journal.len(), MAX_JOURNAL_ENTRIES);
        assert!(journal.overflowed() && journal.wants_checkpoint());
        journal.take();
        assert!(!journal.overflowed());
    }
}
