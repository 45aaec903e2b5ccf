//! Publishing a state: fill the inactive buffer, then flip the generation.
//!
//! Protocol (one writer at a time, across all processes): load the
//! generation `g`; the inactive buffer is slot `(g + 1) & 1`. Store `WRITING`
//! into its generation word (Release) and fence (Release), so a reader that
//! sees any byte of the new payload also sees the mark; write the payload,
//! its length, schema and checksum; store `g + 1` into the slot's generation
//! word (Release), then into the segment's generation (SeqCst). From then on
//! readers are sent to the new buffer; restores asleep waiting for it are
//! woken (only if the header counts one, see `wait.rs`).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{Ordering, fence};

use crate::checksum::{COPY_CHUNK_LEN, Checksum, checksum};
use crate::header::{HeaderError, schema_checksum_word};
use crate::layout::{Slot, WRITING};
use crate::mapping::Word;
use crate::segment::StateSegment;

/// Why a state was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The payload does not fit a buffer: grow the segment
    /// ([`StateSegment::grown`]) and publish into the new one.
    #[error("payload of {len} bytes exceeds the buffer capacity of {capacity} bytes")]
    TooLarge {
        /// Bytes of payload.
        len: u64,
        /// Bytes a buffer holds.
        capacity: u64,
    },
    /// The header is invalid: the segment is not safe to write.
    #[error("invalid segment header: {0}")]
    BadHeader(#[from] HeaderError),
    /// Another writer published while this write was under way: the
    /// one-writer rule was broken, and the buffer this write filled may be
    /// mixed.
    #[error("another writer published generation {found} during a write based on {expected}")]
    ConcurrentWriter {
        /// The generation this write started from.
        expected: u64,
        /// The generation found at commit.
        found: u64,
    },
    /// The generation counter is exhausted (2^64 - 2 publishes).
    #[error("the generation counter is exhausted")]
    GenerationExhausted,
}

/// A write under way into the inactive buffer: fill it through
/// `Deref<Target = [u8]>` (it is exactly the length asked for), then
/// [`WriteGuard::commit`].
///
/// Dropping it without committing abandons the write: the current state is
/// untouched, but the previous state (which lived in this buffer) is gone.
#[must_use = "a write is published only by commit"]
pub struct WriteGuard<'a> {
    segment: &'a StateSegment,
    payload: &'a mut [u8],
    slot: Slot,
    base_generation: u64,
}

impl StateSegment {
    /// Publishes `payload` as the state, declared as `schema`; returns its
    /// generation. The previous state stays readable with
    /// [`StateSegment::read_previous`] until the next write begins.
    pub fn publish(&mut self, schema: u32, payload: &[u8]) -> Result<u64, PublishError> {
        let guard = self.begin_write(payload.len())?;
        let mut sum = Checksum::default();
        for (target, source) in guard
            .payload
            .chunks_mut(COPY_CHUNK_LEN)
            .zip(payload.chunks(COPY_CHUNK_LEN))
        {
            target.copy_from_slice(source);
            // Checksum the private source, not the shared copy.
            sum.update(source);
        }
        guard.publish(schema, sum.finish())
    }

    /// Starts a write of exactly `len` bytes into the inactive buffer.
    pub fn begin_write(&mut self, len: usize) -> Result<WriteGuard<'_>, PublishError> {
        self.header()?;
        let capacity = self.capacity();
        let too_large = || PublishError::TooLarge {
            len: len as u64,
            capacity,
        };
        if len as u64 > capacity {
            return Err(too_large());
        }
        // Acquire: the last publish may have come from another process.
        let base_generation = self.map.word(Word::Generation).load(Ordering::Acquire);
        if base_generation >= WRITING - 1 {
            return Err(PublishError::GenerationExhausted);
        }
        let slot = Slot::for_generation(base_generation + 1);
        self.map
            .word(Word::SlotGeneration(slot))
            .store(WRITING, Ordering::Release);
        fence(Ordering::Release);
        // SAFETY: `&mut self` makes this the only writer in this process, and
        // the one-writer rule (documented on StateSegment) covers the others;
        // the slot was marked WRITING just above, so readers discard what
        // they copy from it; the slice lives in the guard, which borrows
        // `self` mutably, so nothing else touches this mapping meanwhile, and
        // the slot is published only by `commit`, which consumes the guard.
        let payload = unsafe { self.map.payload_mut(slot, len) }.ok_or_else(too_large)?;
        Ok(WriteGuard {
            segment: self,
            payload,
            slot,
            base_generation,
        })
    }
}

impl WriteGuard<'_> {
    /// The generation this write will publish.
    pub fn generation(&self) -> u64 {
        self.base_generation + 1
    }

    /// Checksums the buffer and publishes it as the state, declared as
    /// `schema`; returns its generation.
    pub fn commit(self, schema: u32) -> Result<u64, PublishError> {
        let sum = checksum(self.payload);
        self.publish(schema, sum)
    }

    fn publish(self, schema: u32, checksum: u32) -> Result<u64, PublishError> {
        let WriteGuard {
            segment,
            payload,
            slot,
            base_generation,
        } = self;
        let len = payload.len() as u64;
        let map = &segment.map;
        let generation = base_generation + 1;
        map.word(Word::SlotPayloadLen(slot))
            .store(len, Ordering::Relaxed);
        map.word(Word::SlotSchemaChecksum(slot))
            .store(schema_checksum_word(schema, checksum), Ordering::Relaxed);
        // Release: the payload and metadata above are visible to any reader
        // that loads this generation from the slot (Acquire).
        map.word(Word::SlotGeneration(slot))
            .store(generation, Ordering::Release);
        // SeqCst (Release for the readers, and ordered before the waiters
        // load in `wake_waiters`: see the wait protocol in wait.rs).
        map.word(Word::Generation)
            .compare_exchange(
                base_generation,
                generation,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .map_err(|found| PublishError::ConcurrentWriter {
                expected: base_generation,
                found,
            })?;
        segment.wake_waiters();
        Ok(generation)
    }
}

impl Deref for WriteGuard<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.payload
    }
}

impl DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_larger_than_a_buffer_is_refused() {
        let mut segment = StateSegment::create(4096).unwrap();
        assert_eq!(
            segment.publish(1, &[0; 4097]),
            Err(PublishError::TooLarge {
                len: 4097,
                capacity: 4096
            })
        );
        assert!(matches!(
            segment.begin_write(5000),
            Err(PublishError::TooLarge { len: 5000, .. })
        ));
        // Nothing was touched: the segment is still empty and writable.
        assert_eq!(segment.generation(), 0);
        assert_eq!(segment.publish(1, &[7; 4096]), Ok(1));
    }

    #[test]
    fn a_direct_write_publishes_on_commit() {
        let mut segment = StateSegment::create(4096).unwrap();
        let mut guard = segment.begin_write(4).unwrap();
        assert_eq!(guard.generation(), 1);
        assert_eq!(guard.len(), 4);
        guard.copy_from_slice(b"abcd");
        assert_eq!(guard.commit(5), Ok(1));
        let snapshot = segment.read().unwrap();
        assert_eq!((snapshot.generation, snapshot.schema), (1, 5));
        assert_eq!(snapshot.payload, b"abcd");
        let header = segment.header().unwrap();
        assert_eq!(header.generation, 1);
        assert_eq!(header.slots[1].checksum, checksum(b"abcd"));
        assert_eq!(header.slots[1].payload_len, 4);
    }

    #[test]
    fn a_publish_by_another_writer_during_a_write_is_detected() {
        let mut segment = StateSegment::create(4096).unwrap();
        let mut other = StateSegment::from_fd(segment.fd().try_clone_to_owned().unwrap()).unwrap();
        let guard = segment.begin_write(1).unwrap();
        other.publish(1, b"x").unwrap();
        assert_eq!(
            guard.commit(1),
            Err(PublishError::ConcurrentWriter {
                expected: 0,
                found: 1
            })
        );
    }

    #[test]
    fn a_bad_header_stops_a_write() {
        let mut segment = StateSegment::create(4096).unwrap();
        segment
            .map
            .word(Word::Generation)
            .store(WRITING, Ordering::Relaxed);
        assert!(matches!(
            segment.publish(1, b"x"),
            Err(PublishError::BadHeader(_))
        ));
    }
}
