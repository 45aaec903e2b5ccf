//! Where everything sits in a state segment, and the bounds on its size.
//!
//! ```text
//! offset        size  field
//! 0             8     magic "CLAWSHM1"
//! 8             4     layout version (u32)
//! 12            4     header length (u32) = HEADER_LEN, where buffer 0 starts
//! 16            8     capacity of each buffer in bytes (u64)
//! 24            8     generation (u64, atomic): the last published write;
//!                     its low 32 bits are the futex word restores sleep on
//! 32            8     waiters (u64, atomic): restores sleeping on that futex
//! 40            24    reserved, zero
//! 64            64    slot 0 metadata (buffer 0)
//! 128           64    slot 1 metadata (buffer 1)
//! 192           3904  unused, zero
//! 4096          cap   buffer 0
//! 4096 + cap    cap   buffer 1
//!
//! slot metadata, at 64 + 64 * slot:
//! +0            8     generation of the write it holds (atomic); 0 = never
//!                     written, WRITING = a write into it has begun
//! +8            8     payload length (u64, <= capacity)
//! +16           4     state schema version (u32)
//! +20           4     crc32 of the payload (u32)
//! +24           40    reserved, zero
//! ```
//!
//! Integers are in the host's native byte order: a segment never leaves the
//! host that made it. Every header word is 8-byte aligned, so each is read and
//! written as one `AtomicU64`.

/// The first 8 bytes of every segment.
pub const MAGIC: [u8; 8] = *b"CLAWSHM1";

/// The layout described in this module; a segment with another is refused.
/// Version 2 gave the word at offset 32 (reserved in version 1) to the count
/// of waiting restores.
pub const LAYOUT_VERSION: u32 = 2;

/// Bytes before buffer 0: one page, so both buffers start page-aligned.
pub const HEADER_LEN: usize = 4096;

/// Bytes of the header that carry fields; the rest of the page is zero.
pub const HEADER_FIELDS_LEN: usize = 192;

/// Buffer capacities are rounded up to a multiple of this (one page), so
/// buffer 1 is page-aligned too.
pub const CAPACITY_GRANULE: u64 = 4096;

/// The largest capacity of one buffer (1 GiB): state bigger than this is not
/// what a segment is for, and the bound keeps every offset well inside `usize`.
pub const MAX_CAPACITY: u64 = 1 << 30;

/// The value of a slot's generation word while a write into it is under way
/// (or was abandoned): readers never trust such a slot.
pub const WRITING: u64 = u64::MAX;

/// The number of header words (8 bytes each) that carry fields.
pub(crate) const HEADER_WORDS: usize = HEADER_FIELDS_LEN / 8;

pub(crate) const OFFSET_MAGIC: usize = 0;
pub(crate) const OFFSET_LAYOUT_VERSION: usize = 8;
pub(crate) const OFFSET_HEADER_LEN: usize = 12;
pub(crate) const OFFSET_CAPACITY: usize = 16;
pub(crate) const OFFSET_GENERATION: usize = 24;
/// The futex word: the low 32 bits of the generation word (native byte
/// order, so where they sit depends on the host's endianness).
pub(crate) const OFFSET_GENERATION_LOW: usize = if cfg!(target_endian = "little") {
    OFFSET_GENERATION
} else {
    OFFSET_GENERATION + 4
};
pub(crate) const OFFSET_WAITERS: usize = 32;
pub(crate) const OFFSET_RESERVED: usize = 40;
pub(crate) const OFFSET_SLOTS: usize = 64;
pub(crate) const SLOT_STRIDE: usize = 64;
pub(crate) const SLOT_GENERATION: usize = 0;
pub(crate) const SLOT_PAYLOAD_LEN: usize = 8;
pub(crate) const SLOT_SCHEMA: usize = 16;
pub(crate) const SLOT_CHECKSUM: usize = 20;
pub(crate) const SLOT_RESERVED: usize = 24;

/// One of the two buffers of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Buffer 0: holds the even generations.
    Zero,
    /// Buffer 1: holds the odd generations.
    One,
}

impl Slot {
    /// Both slots, in index order.
    pub const ALL: [Slot; 2] = [Slot::Zero, Slot::One];

    /// The slot a write of `generation` goes into: generations alternate
    /// between the buffers, so the active one is `generation & 1`.
    pub fn for_generation(generation: u64) -> Slot {
        if generation & 1 == 0 {
            Slot::Zero
        } else {
            Slot::One
        }
    }

    /// The other buffer.
    pub fn other(self) -> Slot {
        match self {
            Slot::Zero => Slot::One,
            Slot::One => Slot::Zero,
        }
    }

    /// 0 or 1.
    pub fn index(self) -> usize {
        match self {
            Slot::Zero => 0,
            Slot::One => 1,
        }
    }

    /// Offset of this slot's metadata in the header.
    pub(crate) fn meta_offset(self) -> usize {
        OFFSET_SLOTS + SLOT_STRIDE * self.index()
    }

    /// Offset of this slot's buffer in the segment, for a valid `capacity`.
    pub(crate) fn buffer_offset(self, capacity: u64) -> usize {
        // capacity <= MAX_CAPACITY, so this cannot overflow a 64-bit usize.
        HEADER_LEN + self.index() * capacity as usize
    }
}

/// `min_capacity` rounded up to the granule (at least one granule), or
/// `None` above [`MAX_CAPACITY`].
pub fn round_capacity(min_capacity: u64) -> Option<u64> {
    if min_capacity > MAX_CAPACITY {
        return None;
    }
    // MAX_CAPACITY is a multiple of the granule, so rounding stays in bounds.
    Some(min_capacity.max(1).div_ceil(CAPACITY_GRANULE) * CAPACITY_GRANULE)
}

/// The file size of a segment whose buffers hold `capacity` bytes each.
pub fn segment_len(capacity: u64) -> u64 {
    HEADER_LEN as u64 + 2 * capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rounds_up_to_the_granule_and_is_bounded() {
        assert_eq!(round_capacity(0), Some(CAPACITY_GRANULE));
        assert_eq!(round_capacity(1), Some(CAPACITY_GRANULE));
        assert_eq!(round_capacity(4096), Some(4096));
        assert_eq!(round_capacity(4097), Some(8192));
        assert_eq!(round_capacity(MAX_CAPACITY), Some(MAX_CAPACITY));
        assert_eq!(round_capacity(MAX_CAPACITY + 1), None);
        assert_eq!(round_capacity(u64::MAX), None);
    }

    #[test]
    fn generations_alternate_between_slots() {
        assert_eq!(Slot::for_generation(0), Slot::Zero);
        assert_eq!(Slot::for_generation(1), Slot::One);
        assert_eq!(Slot::for_generation(2), Slot::Zero);
        assert_eq!(Slot::Zero.other(), Slot::One);
        assert_eq!(Slot::One.buffer_offset(8192), HEADER_LEN + 8192);
        assert_eq!(Slot::One.meta_offset(), 128);
        assert!(Slot::One.meta_offset() + SLOT_STRIDE <= HEADER_FIELDS_LEN);
    }
}
