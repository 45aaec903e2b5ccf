//! The journal: every call acknowledged since the package's last checkpoint,
//! in order, so a restarted worker (or a rolled-back one) can be brought to
//! the exact state callers were told about.
//!
//! The rule is deliberately simple: every invoke the worker answered `Ok` is
//! journaled, whatever its op (the node cannot know which ops change
//! state). Calls that failed are not: their effect was not acknowledged.

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
    bytes: usize,
    /// Set when an entry had to be dropped: replay can no longer be exact.
    overflowed: bool,
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
    /// and the journal marked overflowed.
    pub fn record(&self, op: &str, input: &Bytes) {
        let mut inner = self.lock();
        let size = op.len() + input.len();
        if inner.entries.len() >= MAX_JOURNAL_ENTRIES || inner.bytes + size > MAX_JOURNAL_BYTES {
            inner.overflowed = true;
            return;
        }
        inner.bytes += size;
        inner.entries.push(JournalEntry {
            op: op.to_string(),
            input: input.clone(),
        });
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
        std::mem::take(&mut inner.entries)
    }

    /// Replaces what the journal holds with `entries` (the calls a worker
    /// ran since the checkpoint that becomes the package's, in the order it
    /// ran them), within the same bounds as [`Journal::record`]; returns
    /// what it held.
    pub fn replace(&self, entries: Vec<JournalEntry>) -> Vec<JournalEntry> {
        let mut fresh = Entries::default();
        for entry in entries {
            let size = entry.op.len() + entry.input.len();
            if fresh.entries.len() >= MAX_JOURNAL_ENTRIES || fresh.bytes + size > MAX_JOURNAL_BYTES
            {
                fresh.overflowed = true;
                break;
            }
            fresh.bytes += size;
            fresh.entries.push(entry);
        }
        std::mem::replace(&mut *self.lock(), fresh).entries
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
        journal.record("add", &Bytes::from_static(b"1"));
        journal.record("add", &Bytes::from_static(b"2"));
        assert_eq!(journal.len(), 2);
        let taken = journal.take();
        assert_eq!(taken[1].input, Bytes::from_static(b"2"));
        assert!(journal.is_empty());
    }

    #[test]
    fn replace_swaps_in_a_worker_journal() {
        let journal = Journal::new();
        journal.record("old", &Bytes::new());
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
    fn past_the_entry_bound_entries_are_dropped_and_flagged() {
        let journal = Journal::new();
        for _ in 0..=MAX_JOURNAL_ENTRIES {
            journal.record("a", &Bytes::new());
        }
        assert_eq!(journal.len(), MAX_JOURNAL_ENTRIES);
        assert!(journal.overflowed() && journal.wants_checkpoint());
        journal.take();
        assert!(!journal.overflowed());
    }
}
