//! The worker's side of the state segment: the segment it was handed (its
//! fd arrives with SCM_RIGHTS on an `AttachSegment` frame), snapshots
//! published straight into it, restores read straight out of it, and the
//! worker's own journal of calls since the instance's state was last in the
//! segment, so an instance that traps is replaced with its state intact
//! (last checkpoint + the calls acknowledged since, in the order they ran).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clawmesh_shm::StateSegment;
use clawmesh_wasm_abi::{CallError, SkillInstance, SkillState};

use super::journal::{MAX_JOURNAL_BYTES, MAX_JOURNAL_ENTRIES};
use crate::runtime::frame::{JournalChunk, MAX_PAYLOAD, SegmentWrite};

/// Schema of the marker the node publishes into a segment it replaced by a
/// bigger one: a worker that waited there for a state learns it went to
/// the new segment (skills must not use this schema).
pub const MOVED_SCHEMA: u32 = u32::MAX;

/// How a restore that met the marker fails (the node matches on it).
pub const MOVED_MESSAGE: &str = "the state went to a grown segment";

/// Fds received but not yet claimed by an `AttachSegment` frame. A node
/// sends one per attach, so more than this means a misbehaving peer.
pub const MAX_QUEUED_FDS: usize = 8;

/// Fds the socket reader received, in arrival order; shared between the
/// reader thread (which sees the fd with the frame's first byte) and the
/// calling thread (which runs the frame).
#[derive(Debug, Clone, Default)]
pub struct ReceivedFds(Arc<Mutex<VecDeque<OwnedFd>>>);

impl ReceivedFds {
    /// Queues a received fd; the oldest is closed if the queue is full.
    pub fn push(&self, fd: OwnedFd) {
        let mut fds = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if fds.len() >= MAX_QUEUED_FDS {
            fds.pop_front();
        }
        fds.push_back(fd);
    }

    fn pop(&self) -> Option<OwnedFd> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

/// Calls the instance ran `Ok` since its state was last in the segment,
/// packed as `u16 op length, op, u32 input length, input`, so recording a
/// call allocates nothing once the buffer has grown.
#[derive(Debug, Default)]
struct WorkerJournal {
    bytes: Vec<u8>,
    entries: usize,
    overflowed: bool,
}

impl WorkerJournal {
    fn record(&mut self, op: &str, input: &[u8]) {
        let size = 2 + op.len() + 4 + input.len();
        if self.overflowed
            || self.entries >= MAX_JOURNAL_ENTRIES
            || self.bytes.len() + size > MAX_JOURNAL_BYTES
        {
            self.overflowed = true;
            return;
        }
        // Both bounded by the frame decoder: op ≤ u16::MAX, input < MAX_FRAME.
        self.bytes
            .extend_from_slice(&(op.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(op.as_bytes());
        self.bytes
            .extend_from_slice(&(input.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(input);
        self.entries += 1;
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.entries = 0;
        self.overflowed = false;
        // A burst must not pin memory until the worker exits.
        if self.bytes.capacity() > 1 << 20 {
            self.bytes = Vec::new();
        }
    }

    /// The recorded calls, in order.
    fn calls(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            let (op_len, tail) = rest.split_first_chunk::<2>()?;
            let op_len = usize::from(u16::from_le_bytes(*op_len));
            let (op, tail) = tail.split_at_checked(op_len)?;
            let (input_len, tail) = tail.split_first_chunk::<4>()?;
            let input_len = u32::from_le_bytes(*input_len) as usize;
            let (input, tail) = tail.split_at_checked(input_len)?;
            rest = tail;
            Some((std::str::from_utf8(op).unwrap_or(""), input))
        })
    }
}

/// The segment a worker was handed and what its instance's state is made of.
#[derive(Debug)]
pub struct SegmentState {
    fds: ReceivedFds,
    segment: Option<StateSegment>,
    /// The segment generation the instance's state was at before the
    /// journaled calls: `Some(0)` for a fresh instance, `None` when it came
    /// from outside the segment (then a trap loses it).
    baseline: Option<u64>,
    journal: WorkerJournal,
    /// Reused restore buffer, so a large restore does not fault in a fresh
    /// allocation each time.
    scratch: SkillState,
}

impl SegmentState {
    /// No segment yet, a fresh instance.
    pub fn new(fds: ReceivedFds) -> Self {
        Self {
            fds,
            segment: None,
            baseline: Some(0),
            journal: WorkerJournal::default(),
            scratch: SkillState {
                schema: 0,
                data: Vec::new(),
            },
        }
    }

    /// Journals a call the instance answered `Ok`.
    pub fn journal(&mut self, op: &str, input: &[u8]) {
        self.journal.record(op, input);
    }

    /// The instance got a state from outside the segment.
    pub fn forget_baseline(&mut self) {
        self.baseline = None;
        self.journal.clear();
    }

    /// Attaches the segment whose fd came with the `AttachSegment` frame.
    pub fn attach(&mut self) -> Result<(), String> {
        let fd = self
            .fds
            .pop()
            .ok_or("attach-segment frame arrived without an fd")?;
        let segment =
            StateSegment::from_fd(fd).map_err(|e| format!("attaching the state segment: {e}"))?;
        tracing::debug!(
            capacity = segment.capacity(),
            generation = segment.generation(),
            "state segment attached"
        );
        // A grown segment keeps the generations, so the baseline stays valid.
        self.segment = Some(segment);
        Ok(())
    }

    /// Publishes a snapshot into the segment; the instance's state is then
    /// that generation, and the journal starts over.
    pub fn publish(&mut self, state: &SkillState) -> Result<SegmentWrite, String> {
        let segment = self.segment.as_mut().ok_or("no state segment attached")?;
        let len = state.data.len() as u64;
        if len > segment.capacity() {
            return Ok(SegmentWrite {
                published: false,
                generation: segment.generation(),
                schema: state.schema,
                len,
            });
        }
        let generation = segment
            .publish(state.schema, &state.data)
            .map_err(|e| format!("publishing the state: {e}"))?;
        self.baseline = Some(generation);
        self.journal.clear();
        Ok(SegmentWrite {
            published: true,
            generation,
            schema: state.schema,
            len,
        })
    }

    /// Restores `instance` from `generation` (current or previous), waiting
    /// up to `wait` for another process to publish it. `Err` is a refusal
    /// by the worker; `Ok(Err)` the skill's own restore failing.
    pub fn restore(
        &mut self,
        instance: &mut SkillInstance,
        generation: u64,
        wait: Duration,
    ) -> Result<Result<(), CallError>, String> {
        let segment = self.segment.as_ref().ok_or("no state segment attached")?;
        tracing::debug!(
            generation,
            at = segment.generation(),
            "restore from the segment"
        );
        wait_for_generation(segment, generation, wait)?;
        read_generation(segment, generation, &mut self.scratch)?;
        let restored = instance.restore(&self.scratch);
        if restored.is_ok() {
            self.baseline = Some(generation);
            self.journal.clear();
        }
        Ok(restored)
    }

    /// Writes into `out` the `JournalSince` answer: the calls journaled
    /// since the instance's state was `generation`, from the `from`-th on,
    /// as many as fit in one frame (at least one, or an error when even
    /// that one does not fit). Refused unless the instance's state is that
    /// generation plus an exact journal.
    pub fn journal_since(
        &self,
        generation: u64,
        from: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if self.baseline != Some(generation) {
            return Err(format!(
                "the instance's state is not generation {generation} plus a journal (baseline {:?})",
                self.baseline
            ));
        }
        if self.journal.overflowed {
            return Err("the journal since that generation overflowed".into());
        }
        let total = u32::try_from(self.journal.entries).unwrap_or(u32::MAX);
        let start = JournalChunk::begin(total, out);
        let room = MAX_PAYLOAD - 8;
        let (mut count, mut used) = (0u32, 0usize);
        for (op, input) in self.journal.calls().skip(from as usize) {
            let len = JournalChunk::call_len(op, input);
            if used + len > room {
                if count == 0 {
                    return Err(format!(
                        "a journaled call of {len} bytes does not fit in a frame"
                    ));
                }
                break;
            }
            JournalChunk::push(op, input, out);
            used += len;
            count += 1;
        }
        JournalChunk::finish(start, count, out);
        Ok(())
    }

    /// Brings a fresh instance to the state its predecessor had; returns a
    /// line saying what was done.
    pub fn recover(&mut self, instance: &mut SkillInstance) -> String {
        let Some(baseline) = self.baseline else {
            return "its state came from outside the segment and is lost".into();
        };
        if self.journal.overflowed {
            return "the journal overflowed: state recovered only up to the last checkpoint".into();
        }
        if baseline > 0 {
            let Some(segment) = self.segment.as_ref() else {
                return "no state segment attached: state lost".into();
            };
            if let Err(why) = read_generation(segment, baseline, &mut self.scratch) {
                return format!("checkpoint {baseline} unreadable ({why}): state lost");
            }
            if let Err(error) = instance.restore(&self.scratch) {
                return format!("restoring checkpoint {baseline} failed ({error}): state lost");
            }
        }
        let mut replayed = 0usize;
        for (op, input) in self.journal.calls() {
            // A call that failed now may have succeeded before (time, or the
            // same trap): the state is as close as replay can bring it.
            if instance.handle(op, input).is_err() && instance.is_poisoned() {
                return format!("replay trapped after {replayed} calls: state incomplete");
            }
            replayed += 1;
        }
        format!("state recovered from checkpoint {baseline} + {replayed} calls")
    }
}

/// Waits (bounded) until the segment's generation reaches `target`: a
/// restore may be sent before the snapshot in another process finished.
/// The wait sleeps on the segment's process-shared futex, woken by the
/// publishing writer, so it takes no CPU from the snapshot it waits for.
/// If that snapshot did not fit, the node publishes [`MOVED_SCHEMA`] there
/// instead (which wakes the wait too), and the read then refuses it.
fn wait_for_generation(segment: &StateSegment, target: u64, wait: Duration) -> Result<(), String> {
    let _span = tracing::debug_span!("wait_for_generation", target).entered();
    segment
        .wait_for_generation(target, wait)
        .map(|_| ())
        .map_err(|timed_out| timed_out.to_string())
}

/// Copies `generation` (the current state or the one before it) into `out`.
fn read_generation(
    segment: &StateSegment,
    generation: u64,
    out: &mut SkillState,
) -> Result<(), String> {
    let current = segment.generation();
    let copy = |meta: clawmesh_shm::SnapshotMeta, reader: &mut clawmesh_shm::PayloadReader<'_>| {
        let len = usize::try_from(meta.len).unwrap_or(usize::MAX);
        out.data.clear();
        out.data.resize(len, 0);
        let copied = reader.copy_to(&mut out.data);
        out.data.truncate(copied);
        out.schema = meta.schema;
    };
    let (meta, ()) = if generation == current {
        segment.read_with(copy)
    } else if generation + 1 == current {
        segment.read_previous_with(copy)
    } else {
        return Err(format!(
            "generation {generation} is no longer in the segment (at {current})"
        ));
    }
    .map_err(|e| format!("reading generation {generation}: {e}"))?;
    if meta.schema == MOVED_SCHEMA {
        return Err(format!("{MOVED_MESSAGE} (generation {generation})"));
    }
    if meta.generation != generation {
        return Err(format!(
            "read generation {} instead of {generation} (a writer raced)",
            meta.generation
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_replays_calls_in_order_and_bounds_itself() {
        let mut journal = WorkerJournal::default();
        journal.record("add", b"\x01");
        journal.record("", b"");
        journal.record("put", b"k\nvalue");
        let calls: Vec<_> = journal.calls().collect();
        assert_eq!(
            calls,
            vec![
                ("add", &b"\x01"[..]),
                ("", &b""[..]),
                ("put", &b"k\nvalue"[..])
            ]
        );
        let big = vec![0u8; MAX_JOURNAL_BYTES];
        journal.record("x", &big);
        assert!(journal.overflowed);
        journal.clear();
        assert_eq!(journal.calls().count(), 0);
        assert!(!journal.overflowed);
    }

    #[test]
    fn attach_publish_and_read_back_through_a_received_fd() {
        let mut node = StateSegment::create(4096).unwrap();
        node.publish(1, b"before").unwrap();
        let fds = ReceivedFds::default();
        let mut worker = SegmentState::new(fds.clone());
        assert!(worker.attach().is_err(), "no fd queued");
        fds.push(node.fd().try_clone_to_owned().unwrap());
        worker.attach().unwrap();
        let write = worker
            .publish(&SkillState {
                schema: 2,
                data: b"after".to_vec(),
            })
            .unwrap();
        assert_eq!(
            write,
            SegmentWrite {
                published: true,
                generation: 2,
                schema: 2,
                len: 5
            }
        );
        // The node's mapping sees what the worker published.
        let current = node.read().unwrap();
        assert_eq!(
            (current.schema, current.payload.as_slice()),
            (2, &b"after"[..])
        );
        let mut out = SkillState {
            schema: 0,
            data: Vec::new(),
        };
        read_generation(node_segment(&worker), 1, &mut out).unwrap();
        assert_eq!((out.schema, out.data.as_slice()), (1, &b"before"[..]));
        assert!(read_generation(node_segment(&worker), 5, &mut out).is_err());
        // Too big: nothing published, the length needed is reported.
        let too_big = worker
            .publish(&SkillState {
                schema: 2,
                data: vec![0; 8192],
            })
            .unwrap();
        assert!(!too_big.published);
        assert_eq!(too_big.len, 8192);
        assert_eq!(node.generation(), 2);
    }

    #[test]
    fn the_journal_since_a_generation_is_sent_only_for_that_generation() {
        let node = StateSegment::create(4096).unwrap();
        let fds = ReceivedFds::default();
        fds.push(node.fd().try_clone_to_owned().unwrap());
        let mut worker = SegmentState::new(fds);
        worker.attach().unwrap();
        let state = SkillState {
            schema: 1,
            data: b"s".to_vec(),
        };
        let published = worker.publish(&state).unwrap().generation;
        for i in 0..5u8 {
            worker.journal("add", &[i]);
        }
        let mut out = Vec::new();
        worker.journal_since(published, 2, &mut out).unwrap();
        let chunk = JournalChunk::decode(&out).unwrap();
        assert_eq!(chunk.total, 5);
        assert_eq!(
            chunk.calls,
            vec![
                ("add", &[2u8][..]),
                ("add", &[3u8][..]),
                ("add", &[4u8][..])
            ]
        );
        out.clear();
        assert!(worker.journal_since(published + 1, 0, &mut out).is_err());
        worker.forget_baseline();
        assert!(worker.journal_since(published, 0, &mut out).is_err());
    }

    #[test]
    fn waiting_for_an_unpublished_generation_is_bounded() {
        let segment = StateSegment::create(4096).unwrap();
        let error = wait_for_generation(&segment, 1, Duration::from_millis(5)).unwrap_err();
        assert!(error.contains("not published"), "{error}");
    }

    #[test]
    fn a_waiting_restore_learns_that_its_state_went_to_a_grown_segment() {
        let state = super::super::PackageState::new("p".into());
        state.publish(1, b"small").unwrap();
        let (fd, _) = state.segment_fd().unwrap();
        let old = StateSegment::from_fd(fd).unwrap();
        // The snapshot the worker waits for (generation 2) did not fit.
        state.reserve(1 << 20).unwrap();
        wait_for_generation(&old, 2, Duration::from_secs(60)).unwrap();
        let mut out = SkillState {
            schema: 0,
            data: Vec::new(),
        };
        let error = read_generation(&old, 2, &mut out).unwrap_err();
        assert!(error.contains(MOVED_MESSAGE), "{error}");
        // The grown segment still has the state, at the same generation.
        assert_eq!(state.generation(), 1);
        assert_eq!(state.current().unwrap().payload, b"small");
    }

    #[test]
    fn a_restore_asleep_on_the_old_segment_is_woken_by_the_moved_marker() {
        let state = super::super::PackageState::new("p".into());
        state.publish(1, b"small").unwrap();
        let (fd, _) = state.segment_fd().unwrap();
        let old = StateSegment::from_fd(fd).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                // Only the marker's publish can end this before its bound,
                // and the bound would end it with an error.
                wait_for_generation(&old, 2, Duration::from_secs(60))?;
                let mut out = SkillState {
                    schema: 0,
                    data: Vec::new(),
                };
                read_generation(&old, 2, &mut out)
            });
            // Asleep (counted as a waiter in the header) before the growth.
            while old.header().unwrap().waiters == 0 {
                std::thread::yield_now();
            }
            state.reserve(1 << 20).unwrap();
            let error = waiter.join().unwrap().unwrap_err();
            assert!(error.contains(MOVED_MESSAGE), "{error}");
        });
        assert_eq!(old.header().unwrap().waiters, 0);
    }

    fn node_segment(state: &SegmentState) -> &StateSegment {
        state.segment.as_ref().unwrap()
    }
}
