//! Growth: a bigger segment holding the same current and previous states.

use crate::header::{SegmentHeader, SlotMeta};
use crate::layout::Slot;
use crate::read::{MAX_READ_RETRIES, PayloadReader, ReadError, SnapshotMeta};
use crate::segment::{CreateError, StateSegment};

/// Why a bigger segment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// The new segment could not be created (capacity above the bound, or
    /// the system refused).
    #[error("creating the bigger segment failed: {0}")]
    Create(#[from] CreateError),
    /// The current or previous state could not be read from the old segment.
    #[error("reading the old segment failed: {0}")]
    Read(#[from] ReadError),
}

impl StateSegment {
    /// A new segment whose buffers hold at least `min_capacity` bytes (and
    /// no less than this one's), holding this segment's current and previous
    /// states with their generations, schemas and checksums, so it is
    /// complete before the caller swaps it in and passes its fd on. This
    /// segment is untouched; it is released when dropped.
    ///
    /// A publish into this segment during the copy makes the copy start
    /// again (at most [`MAX_READ_RETRIES`] times).
    pub fn grown(&self, min_capacity: u64) -> Result<StateSegment, GrowError> {
        let next = StateSegment::create(min_capacity.max(self.capacity()))?;
        for _ in 0..MAX_READ_RETRIES {
            let current = match self.read_with(|meta, reader| copy_into(&next, meta, reader)) {
                Ok((meta, true)) => meta,
                Ok((_, false)) => continue,
                Err(ReadError::Empty) => return Ok(next),
                Err(ReadError::Contended { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            let previous =
                match self.read_previous_with(|meta, reader| copy_into(&next, meta, reader)) {
                    Ok((meta, true)) => Some(meta),
                    Ok((_, false)) => continue,
                    Err(ReadError::NoPrevious { .. }) => None,
                    Err(ReadError::Contended { .. }) => continue,
                    Err(error) => return Err(error.into()),
                };
            let consistent = match previous {
                Some(previous) => previous.generation + 1 == current.generation,
                None => self.generation() == current.generation,
            };
            if !consistent {
                continue;
            }
            let mut header = SegmentHeader::empty(next.capacity());
            header.generation = current.generation;
            for meta in std::iter::once(current).chain(previous) {
                let slot = Slot::for_generation(meta.generation);
                header.slots[slot.index()] = SlotMeta {
                    generation: meta.generation,
                    payload_len: meta.len,
                    schema: meta.schema,
                    checksum: meta.checksum,
                };
            }
            next.store_header(&header);
            return Ok(next);
        }
        Err(ReadError::Contended {
            attempts: MAX_READ_RETRIES,
        }
        .into())
    }
}

/// Copies a payload being read into the same slot of `next`, which no other
/// process can see yet. False if it did not fit (cannot happen: next is at
/// least as big as the segment read).
fn copy_into(next: &StateSegment, meta: SnapshotMeta, reader: &mut PayloadReader<'_>) -> bool {
    let slot = Slot::for_generation(meta.generation);
    // meta.len <= the old capacity <= next's capacity.
    let len = meta.len as usize;
    // SAFETY: `next` was created by this call and its fd has not left it, so
    // no other process or mapping can touch it; this is its only writer, no
    // other reference into this buffer exists while the slice lives (each
    // call makes and drops its own), and its header is stored only after
    // the copies.
    match unsafe { next.map.payload_mut(slot, len) } {
        Some(target) => reader.copy_to(target) == len,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_current_and_previous() {
        let mut small = StateSegment::create(4096).unwrap();
        small.publish(1, b"old").unwrap();
        small.publish(2, &[9; 4096]).unwrap();
        let mut big = small.grown(10_000).unwrap();
        assert_eq!(big.capacity(), 12_288);
        assert_eq!(big.generation(), 2);
        assert_eq!(big.read().unwrap(), small.read().unwrap());
        assert_eq!(big.read_previous().unwrap(), small.read_previous().unwrap());
        // The bigger state that did not fit now does; generations go on.
        assert_eq!(big.publish(3, &[1; 10_000]), Ok(3));
        assert_eq!(big.read_previous().unwrap().payload, vec![9; 4096]);
        // The old segment is untouched.
        assert_eq!(small.read().unwrap().payload, vec![9; 4096]);
    }

    #[test]
    fn growth_of_a_segment_with_one_state_or_none() {
        let mut small = StateSegment::create(4096).unwrap();
        let empty = small.grown(8192).unwrap();
        assert_eq!(empty.read(), Err(ReadError::Empty));
        small.publish(4, b"only").unwrap();
        let big = small.grown(8192).unwrap();
        assert_eq!(big.read().unwrap().payload, b"only");
        assert_eq!(
            big.read_previous(),
            Err(ReadError::NoPrevious { generation: 1 })
        );
        assert!(big.header().is_ok());
    }

    #[test]
    fn growth_refuses_to_copy_a_corrupt_state() {
        let mut small = StateSegment::create(4096).unwrap();
        small.publish(1, b"state").unwrap();
        small.map.flip_payload_byte(Slot::One, 0, 1);
        assert!(matches!(
            small.grown(8192),
            Err(GrowError::Read(ReadError::Corrupt { .. }))
        ));
    }

    #[test]
    fn growth_beyond_the_bound_is_refused() {
        let small = StateSegment::create(4096).unwrap();
        assert!(matches!(
            small.grown(crate::layout::MAX_CAPACITY + 1),
            Err(GrowError::Create(CreateError::CapacityTooLarge { .. }))
        ));
    }
}
