//! Reading a published state: the seqlock read of the current buffer or of
//! the previous one (the state before the last publish, kept for rollback).
//!
//! Protocol, for the slot the generation points at: load the slot's
//! generation word (Acquire) and check it is the expected one, read its
//! length, schema and checksum, copy the payload out while checksumming the
//! copy, then (after an Acquire fence) load the slot's generation word again.
//! A writer marks a slot `WRITING` before it touches the payload, so an
//! unchanged word means the copy is what was published; a changed one means
//! a writer got there first and the read is retried, at most
//! [`MAX_READ_RETRIES`] times.

use std::io;
use std::sync::atomic::{Ordering, fence};

use crate::checksum::{COPY_CHUNK_LEN, Checksum};
use crate::header::{HeaderError, split_schema_checksum};
use crate::layout::{Slot, WRITING};
use crate::mapping::{SharedMapping, Word};
use crate::segment::StateSegment;

/// Attempts a read makes before it reports [`ReadError::Contended`]. A read
/// only fails an attempt when a writer published twice (current) or once
/// (previous) during it, so a few attempts are plenty unless a writer
/// publishes in a tight loop.
pub const MAX_READ_RETRIES: u32 = 16;

/// Bytes of the stack buffer that checksums whatever a reader's closure left
/// unread.
const DRAIN_CHUNK_LEN: usize = 16 * 1024;

/// What a validated read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Generation of the write that produced this state.
    pub generation: u64,
    /// The state schema version its writer declared.
    pub schema: u32,
    /// The state itself.
    pub payload: Vec<u8>,
}

/// The metadata of the buffer being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Generation of the write that produced this state.
    pub generation: u64,
    /// The state schema version its writer declared.
    pub schema: u32,
    /// Bytes of payload.
    pub len: u64,
    /// crc32 of the payload, as the writer computed it.
    pub checksum: u32,
}

/// Why a read returned no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Nothing has been published into this segment yet.
    #[error("nothing has been published into the segment yet")]
    Empty,
    /// The other buffer holds no complete earlier state: nothing was
    /// published before `generation`, or a write into that buffer has begun
    /// (under way, or abandoned by a writer that died).
    #[error("no state before generation {generation} is kept")]
    NoPrevious {
        /// The current generation.
        generation: u64,
    },
    /// A writer kept overwriting the buffer during every attempt.
    #[error("the buffer changed during each of {attempts} read attempts")]
    Contended {
        /// Attempts made ([`MAX_READ_RETRIES`]).
        attempts: u32,
    },
    /// The payload does not match its checksum although no writer touched
    /// it during the read: the memory was corrupted.
    #[error(
        "generation {generation} is corrupt: checksum {actual:#010x}, expected {expected:#010x}"
    )]
    Corrupt {
        /// Generation of the buffer read.
        generation: u64,
        /// The checksum in the buffer's metadata.
        expected: u32,
        /// The checksum of the bytes read.
        actual: u32,
    },
    /// The header (magic, layout, lengths, generations) is invalid.
    #[error("invalid segment header: {0}")]
    BadHeader(#[from] HeaderError),
}

/// The payload of the buffer being read, handed to a read closure.
///
/// It copies bytes out of shared memory into the caller's buffers (never
/// lending a reference into the segment) and checksums the copies. The bytes
/// are provisional until the read returns `Ok`: on a retry the closure is
/// called again from the start.
pub struct PayloadReader<'a> {
    map: &'a SharedMapping,
    slot: Slot,
    len: u64,
    position: u64,
    checksum: Checksum,
}

impl PayloadReader<'_> {
    /// Bytes of payload in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not yet copied out.
    pub fn remaining(&self) -> u64 {
        self.len - self.position
    }

    /// Copies the next bytes of the payload into `dst`: as many as fit, up
    /// to what remains. Returns the number copied.
    pub fn copy_to(&mut self, dst: &mut [u8]) -> usize {
        let wanted = usize::try_from(self.remaining())
            .unwrap_or(usize::MAX)
            .min(dst.len());
        let mut copied = 0;
        for chunk in dst[..wanted].chunks_mut(COPY_CHUNK_LEN) {
            if !self.map.copy_out(self.slot, self.position, chunk) {
                // Unreachable: len <= capacity was checked before the reader
                // was made. Stop rather than read out of bounds.
                break;
            }
            self.checksum.update(chunk);
            self.position += chunk.len() as u64;
            copied += chunk.len();
        }
        copied
    }

    /// Checksums whatever the closure left unread, and returns the checksum
    /// of the whole payload as read.
    fn finish(mut self) -> u32 {
        if self.remaining() > 0 {
            let mut bounce = [0u8; DRAIN_CHUNK_LEN];
            while self.remaining() > 0 {
                if self.copy_to(&mut bounce) == 0 {
                    break;
                }
            }
        }
        self.checksum.finish()
    }
}

impl io::Read for PayloadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.copy_to(buf))
    }
}

/// Which buffer a read wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    /// The one the generation points at.
    Current,
    /// The other one: the state before the last publish.
    Previous,
}

impl StateSegment {
    /// The current state, copied out and validated.
    pub fn read(&self) -> Result<StateSnapshot, ReadError> {
        self.read_slot_with(Which::Current, copy_payload)
            .map(into_snapshot)
    }

    /// The state before the last publish (the other buffer), copied out and
    /// validated; [`ReadError::NoPrevious`] once a new write has begun.
    pub fn read_previous(&self) -> Result<StateSnapshot, ReadError> {
        self.read_slot_with(Which::Previous, copy_payload)
            .map(into_snapshot)
    }

    /// The current state, copied by `f` straight to where it is needed (a
    /// guest's memory, a file) with no intermediate buffer.
    ///
    /// `f` may be called more than once (once per attempt); only the value
    /// of the last call is returned, and only if that attempt validated. What
    /// `f` copied in a failed attempt must be treated as garbage.
    pub fn read_with<R>(
        &self,
        f: impl FnMut(SnapshotMeta, &mut PayloadReader<'_>) -> R,
    ) -> Result<(SnapshotMeta, R), ReadError> {
        self.read_slot_with(Which::Current, f)
    }

    /// [`StateSegment::read_with`] for the state before the last publish.
    pub fn read_previous_with<R>(
        &self,
        f: impl FnMut(SnapshotMeta, &mut PayloadReader<'_>) -> R,
    ) -> Result<(SnapshotMeta, R), ReadError> {
        self.read_slot_with(Which::Previous, f)
    }

    fn read_slot_with<R>(
        &self,
        which: Which,
        mut f: impl FnMut(SnapshotMeta, &mut PayloadReader<'_>) -> R,
    ) -> Result<(SnapshotMeta, R), ReadError> {
        self.header()?;
        let map = &self.map;
        for attempt in 0..MAX_READ_RETRIES {
            back_off(attempt);
            let generation = map.word(Word::Generation).load(Ordering::Acquire);
            if generation == 0 {
                return Err(ReadError::Empty);
            }
            if generation == WRITING {
                return Err(HeaderError::BadGeneration { found: generation }.into());
            }
            let current = Slot::for_generation(generation);
            let (slot, expected) = match which {
                Which::Current => (current, generation),
                Which::Previous => (current.other(), generation - 1),
            };
            let slot_generation = map.word(Word::SlotGeneration(slot)).load(Ordering::Acquire);
            match which {
                Which::Previous if slot_generation == 0 || slot_generation == WRITING => {
                    if map.word(Word::Generation).load(Ordering::Acquire) != generation {
                        continue;
                    }
                    return Err(ReadError::NoPrevious { generation });
                }
                _ if slot_generation == WRITING || slot_generation > expected => {
                    // A writer has moved past the generation we loaded; the
                    // writer stores the generation before it marks the
                    // current slot WRITING, so if the generation is still
                    // the same, the header is inconsistent.
                    if which == Which::Current
                        && map.word(Word::Generation).load(Ordering::Acquire) == generation
                    {
                        return Err(HeaderError::SlotAhead {
                            slot: slot.index(),
                            slot_generation,
                            generation,
                        }
                        .into());
                    }
                    continue;
                }
                _ if slot_generation < expected => {
                    // The writer fills a slot before it publishes that
                    // generation, so a slot behind it is corruption.
                    return Err(HeaderError::SlotBehind {
                        slot: slot.index(),
                        slot_generation,
                        expected,
                    }
                    .into());
                }
                _ => {}
            }
            let len = map.word(Word::SlotPayloadLen(slot)).load(Ordering::Relaxed);
            let (schema, checksum) = split_schema_checksum(
                map.word(Word::SlotSchemaChecksum(slot))
                    .load(Ordering::Relaxed),
            );
            if len > map.capacity() {
                if self.slot_unchanged(slot, slot_generation) {
                    return Err(HeaderError::PayloadLenExceedsCapacity {
                        slot: slot.index(),
                        len,
                        capacity: map.capacity(),
                    }
                    .into());
                }
                continue;
            }
            let meta = SnapshotMeta {
                generation: slot_generation,
                schema,
                len,
                checksum,
            };
            let mut reader = PayloadReader {
                map,
                slot,
                len,
                position: 0,
                checksum: Checksum::default(),
            };
            let value = f(meta, &mut reader);
            let actual = reader.finish();
            if !self.slot_unchanged(slot, slot_generation) {
                continue;
            }
            if actual != checksum {
                return Err(ReadError::Corrupt {
                    generation: slot_generation,
                    expected: checksum,
                    actual,
                });
            }
            return Ok((meta, value));
        }
        Err(ReadError::Contended {
            attempts: MAX_READ_RETRIES,
        })
    }

    /// The seqlock's closing check: after everything read from the slot,
    /// its generation word still holds what the read started with.
    fn slot_unchanged(&self, slot: Slot, slot_generation: u64) -> bool {
        // The Acquire fence orders the payload and metadata loads above
        // before the load below: if any of them saw a writer's store (made
        // after that writer's Release-fenced WRITING mark), this load sees
        // WRITING or a later generation.
        fence(Ordering::Acquire);
        self.map
            .word(Word::SlotGeneration(slot))
            .load(Ordering::Relaxed)
            == slot_generation
    }
}

/// Between attempts, let a writer on another core finish: a few spins,
/// doubling per attempt (bounded by MAX_READ_RETRIES).
fn back_off(attempt: u32) {
    for _ in 0..(1u32 << attempt.min(10)).saturating_sub(1) {
        std::hint::spin_loop();
    }
}

fn copy_payload(meta: SnapshotMeta, reader: &mut PayloadReader<'_>) -> Vec<u8> {
    // len <= capacity <= MAX_CAPACITY, so it fits in usize.
    let mut payload = vec![0u8; meta.len as usize];
    let copied = reader.copy_to(&mut payload);
    payload.truncate(copied);
    payload
}

fn into_snapshot((meta, payload): (SnapshotMeta, Vec<u8>)) -> StateSnapshot {
    StateSnapshot {
        generation: meta.generation,
        schema: meta.schema,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HeaderError;
    use crate::mapping::HeaderWord;
    use std::io::Read;
    use std::sync::atomic::AtomicBool;

    fn segment(capacity: u64) -> StateSegment {
        StateSegment::create(capacity).unwrap()
    }

    #[test]
    fn an_empty_segment_has_no_state() {
        let segment = segment(4096);
        assert_eq!(segment.read(), Err(ReadError::Empty));
        assert_eq!(segment.read_previous(), Err(ReadError::Empty));
    }

    #[test]
    fn publish_flips_current_and_keeps_previous() {
        let mut segment = segment(4096);
        assert_eq!(segment.publish(1, b"A").unwrap(), 1);
        assert_eq!(
            segment.read().unwrap(),
            StateSnapshot {
                generation: 1,
                schema: 1,
                payload: b"A".to_vec()
            }
        );
        assert_eq!(
            segment.read_previous(),
            Err(ReadError::NoPrevious { generation: 1 })
        );
        assert_eq!(segment.publish(2, b"BB").unwrap(), 2);
        assert_eq!(
            segment.read().unwrap(),
            StateSnapshot {
                generation: 2,
                schema: 2,
                payload: b"BB".to_vec()
            }
        );
        assert_eq!(
            segment.read_previous().unwrap(),
            StateSnapshot {
                generation: 1,
                schema: 1,
                payload: b"A".to_vec()
            }
        );
        assert_eq!(segment.publish(3, b"").unwrap(), 3);
        assert_eq!(segment.read().unwrap().payload, b"");
        assert_eq!(segment.read_previous().unwrap().payload, b"BB");
    }

    #[test]
    fn a_flipped_payload_byte_is_reported_corrupt() {
        let mut segment = segment(4096);
        segment.publish(1, b"first").unwrap();
        segment.publish(1, b"second").unwrap();
        let expected = crate::checksum(b"second");
        segment.map.flip_payload_byte(Slot::Zero, 3, 0x10);
        match segment.read() {
            Err(ReadError::Corrupt {
                generation: 2,
                expected: found,
                actual,
            }) => {
                assert_eq!(found, expected);
                assert_ne!(actual, expected);
            }
            other => panic!("unexpected {other:?}"),
        }
        // The other buffer is untouched.
        assert_eq!(segment.read_previous().unwrap().payload, b"first");
        segment.map.flip_payload_byte(Slot::One, 0, 1);
        assert!(matches!(
            segment.read_previous(),
            Err(ReadError::Corrupt { generation: 1, .. })
        ));
    }

    #[test]
    fn a_bad_magic_is_reported_as_a_bad_header() {
        let mut segment = segment(4096);
        segment.publish(1, b"state").unwrap();
        let magic = HeaderWord::all().next().unwrap();
        segment
            .map
            .word(Word::Index(magic))
            .store(0, Ordering::Relaxed);
        assert!(matches!(
            segment.read(),
            Err(ReadError::BadHeader(HeaderError::BadMagic { .. }))
        ));
        assert!(matches!(
            segment.read_previous(),
            Err(ReadError::BadHeader(HeaderError::BadMagic { .. }))
        ));
    }

    #[test]
    fn a_length_past_the_buffer_is_reported_as_a_bad_header() {
        let mut segment = segment(4096);
        segment.publish(1, b"state").unwrap();
        segment
            .map
            .word(Word::SlotPayloadLen(Slot::One))
            .store(4097, Ordering::Relaxed);
        assert!(matches!(
            segment.read(),
            Err(ReadError::BadHeader(
                HeaderError::PayloadLenExceedsCapacity { len: 4097, .. }
            ))
        ));
    }

    #[test]
    fn a_current_slot_older_than_the_generation_is_reported() {
        let mut segment = segment(4096);
        segment.publish(1, b"a").unwrap();
        segment.publish(1, b"b").unwrap();
        segment.publish(1, b"c").unwrap();
        // Slot 1 holds generation 3; pretend it still holds 1.
        segment
            .map
            .word(Word::SlotGeneration(Slot::One))
            .store(1, Ordering::Relaxed);
        assert_eq!(
            segment.read(),
            Err(ReadError::BadHeader(HeaderError::SlotBehind {
                slot: 1,
                slot_generation: 1,
                expected: 3
            }))
        );
    }

    #[test]
    fn an_abandoned_write_keeps_current_and_drops_previous() {
        let mut segment = segment(4096);
        segment.publish(1, b"one").unwrap();
        segment.publish(1, b"two").unwrap();
        {
            let mut guard = segment.begin_write(3).unwrap();
            guard.copy_from_slice(b"xxx");
        }
        assert_eq!(segment.read().unwrap().payload, b"two");
        assert_eq!(
            segment.read_previous(),
            Err(ReadError::NoPrevious { generation: 2 })
        );
        // The next write goes ahead and the state after it is complete.
        segment.publish(1, b"three").unwrap();
        assert_eq!(segment.read().unwrap().payload, b"three");
        assert_eq!(segment.read_previous().unwrap().payload, b"two");
    }

    #[test]
    fn read_with_copies_straight_into_the_callers_buffer() {
        let mut segment = segment(1 << 20);
        let payload: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        segment.publish(9, &payload).unwrap();
        let mut target = vec![0u8; payload.len()];
        let (meta, read) = segment
            .read_with(|_, reader| reader.read_exact(&mut target).is_ok())
            .unwrap();
        assert!(read);
        assert_eq!(
            meta,
            SnapshotMeta {
                generation: 1,
                schema: 9,
                len: payload.len() as u64,
                checksum: crate::checksum(&payload),
            }
        );
        assert_eq!(target, payload);
    }

    #[test]
    fn read_with_validates_even_what_the_closure_skipped() {
        let mut segment = segment(4096);
        segment.publish(1, b"0123456789").unwrap();
        let (_, first) = segment
            .read_with(|_, reader| {
                let mut byte = [0u8; 1];
                reader.copy_to(&mut byte);
                byte[0]
            })
            .unwrap();
        assert_eq!(first, b'0');
        segment.map.flip_payload_byte(Slot::One, 9, 1);
        assert!(matches!(
            segment.read_with(|_, _| ()),
            Err(ReadError::Corrupt { .. })
        ));
    }

    /// The payload a test writer publishes as `generation`: its length and
    /// every byte depend on the generation, so a mix of two is visible.
    fn pattern(generation: u64) -> Vec<u8> {
        let len = 1 + (generation * 7919 % 50_000) as usize;
        (0..len)
            .map(|i| (generation as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect()
    }

    #[test]
    fn a_concurrent_reader_never_sees_a_torn_state() {
        const PUBLISHES: u64 = 2_000;
        let mut writer = segment(64 * 1024);
        let reader = StateSegment::from_fd(writer.fd().try_clone_to_owned().unwrap()).unwrap();
        let done = AtomicBool::new(false);
        let (mut validated, mut contended) = (0u64, 0u64);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for generation in 1..=PUBLISHES {
                    let published = writer.publish(generation as u32, &pattern(generation));
                    assert_eq!(published, Ok(generation));
                }
                done.store(true, Ordering::Release);
            });
            loop {
                let finished = done.load(Ordering::Acquire);
                for result in [reader.read(), reader.read_previous()] {
                    match result {
                        Ok(snapshot) => {
                            assert_eq!(u64::from(snapshot.schema), snapshot.generation);
                            assert!(
                                snapshot.payload == pattern(snapshot.generation),
                                "torn read"
                            );
                            validated += 1;
                        }
                        Err(ReadError::Contended { .. })
                        | Err(ReadError::Empty)
                        | Err(ReadError::NoPrevious { .. }) => contended += 1,
                        Err(error) => panic!("unexpected {error}"),
                    }
                }
                if finished {
                    break;
                }
            }
        });
        // Once the writer is done, both buffers read back exactly.
        assert_eq!(reader.read().unwrap().payload, pattern(PUBLISHES));
        assert_eq!(
            reader.read_previous().unwrap().payload,
            pattern(PUBLISHES - 1)
        );
        assert!(validated >= 2, "validated {validated}, refused {contended}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn publish_then_read_round_trips(
                schema in any::<u32>(),
                payload in proptest::collection::vec(any::<u8>(), 0..9000),
            ) {
                let mut segment = segment(9000);
                let generation = segment.publish(schema, &payload).unwrap();
                prop_assert_eq!(
                    segment.read().unwrap(),
                    StateSnapshot { generation, schema, payload }
                );
            }

            #[test]
            fn publishes_keep_current_and_previous(
                states in proptest::collection::vec(
                    (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)),
                    1..12,
                ),
            ) {
                let mut segment = segment(300);
                for (index, (schema, payload)) in states.iter().enumerate() {
                    let generation = segment.publish(*schema, payload).unwrap();
                    prop_assert_eq!(generation, index as u64 + 1);
                    let current = segment.read().unwrap();
                    prop_assert_eq!(&current.payload, payload);
                    prop_assert_eq!(current.schema, *schema);
                    match index.checked_sub(1).map(|before| &states[before]) {
                        None => prop_assert_eq!(
                            segment.read_previous(),
                            Err(ReadError::NoPrevious { generation: 1 })
                        ),
                        Some((schema, payload)) => {
                            let previous = segment.read_previous().unwrap();
                            prop_assert_eq!(previous.generation, generation - 1);
                            prop_assert_eq!(previous.schema, *schema);
                            prop_assert_eq!(&previous.payload, payload);
                        }
                    }
                }
            }
        }
    }
}
