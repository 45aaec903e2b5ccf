//! The shared mapping of a segment, and every raw access to it.
//!
//! This is the only place that dereferences pointers into the mapping. The
//! memory is shared with other processes (and other mappings in this one), so:
//! header words are only touched as `AtomicU64`; payload bytes are copied in
//! and out with `ptr::copy_nonoverlapping` and never lent out as `&[u8]`,
//! except to the single writer for the buffer it has marked `WRITING`
//! (see docs/SHM.md, "Safety argument").

use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use nix::errno::Errno;

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{
    HEADER_FIELDS_LEN, HEADER_LEN, HEADER_WORDS, OFFSET_GENERATION, OFFSET_GENERATION_LOW,
    OFFSET_WAITERS, SLOT_GENERATION, SLOT_PAYLOAD_LEN, SLOT_SCHEMA, Slot, segment_len,
};

/// A header word: the only atomics the protocol needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Word {
    /// The published generation.
    Generation,
    /// How many restores sleep on the generation's futex.
    Waiters,
    /// A slot's generation (or `WRITING`).
    SlotGeneration(Slot),
    /// A slot's payload length.
    SlotPayloadLen(Slot),
    /// A slot's schema and checksum, packed.
    SlotSchemaChecksum(Slot),
    /// Any header word by index, for copying the header as a whole.
    Index(HeaderWord),
}

/// The index of one of the [`HEADER_WORDS`] header words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeaderWord(usize);

impl HeaderWord {
    /// Every header word, in order.
    pub(crate) fn all() -> impl Iterator<Item = HeaderWord> {
        (0..HEADER_WORDS).map(HeaderWord)
    }
}

impl Word {
    fn offset(self) -> usize {
        match self {
            Word::Generation => OFFSET_GENERATION,
            Word::Waiters => OFFSET_WAITERS,
            Word::SlotGeneration(slot) => slot.meta_offset() + SLOT_GENERATION,
            Word::SlotPayloadLen(slot) => slot.meta_offset() + SLOT_PAYLOAD_LEN,
            Word::SlotSchemaChecksum(slot) => slot.meta_offset() + SLOT_SCHEMA,
            Word::Index(HeaderWord(index)) => index * 8,
        }
    }
}

/// A segment's mapping, `HEADER_LEN + 2 * capacity` bytes long.
pub(crate) struct SharedMapping {
    map: MmapRaw,
    capacity: u64,
}

impl std::fmt::Debug for SharedMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMapping")
            .field("len", &self.map.len())
            .finish()
    }
}

impl SharedMapping {
    /// Maps the first `segment_len(capacity)` bytes of `fd` read-write and
    /// shared. The caller has checked that the file is at least that long and
    /// sealed against shrinking, so the whole mapping stays backed.
    pub(crate) fn map(fd: &OwnedFd, capacity: u64) -> std::io::Result<SharedMapping> {
        let len = usize::try_from(segment_len(capacity))
            .map_err(|_| std::io::Error::other("segment length does not fit in usize"))?;
        let map = MmapOptions::new().len(len).map_raw(fd)?;
        if map.len() != len || map.len() < HEADER_LEN {
            return Err(std::io::Error::other("mapping has an unexpected length"));
        }
        Ok(SharedMapping { map, capacity })
    }

    /// Maps only the header page of `fd`, to read the header before the
    /// capacity it claims is trusted. No payload range is valid in it.
    pub(crate) fn map_header(fd: &OwnedFd) -> std::io::Result<SharedMapping> {
        let map = MmapOptions::new().len(HEADER_LEN).map_raw(fd)?;
        if map.len() != HEADER_LEN {
            return Err(std::io::Error::other(
                "header mapping has an unexpected length",
            ));
        }
        Ok(SharedMapping { map, capacity: 0 })
    }

    /// The capacity this mapping was made for: the bound on every payload
    /// access, trusted because this process chose it, whatever the header
    /// says later.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// One header word as an atomic.
    pub(crate) fn word(&self, word: Word) -> &AtomicU64 {
        let offset = word.offset();
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER_FIELDS_LEN);
        // SAFETY: `offset` comes from `Word`, so it is a multiple of 8 below
        // HEADER_FIELDS_LEN <= HEADER_LEN <= the mapping's length (checked in
        // `map`); the mapping is page-aligned, so the pointer is 8-aligned and
        // valid for 8 bytes for as long as `self` (the mapping) lives, which
        // bounds the returned lifetime. Every process accesses these words
        // only atomically (this module is the only accessor here, and the
        // layout says so for others), which is what `AtomicU64::from_ptr`
        // requires; `AtomicU64` has interior mutability, so a shared
        // reference to memory others write is sound.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(offset).cast::<u64>()) }
    }

    /// The header fields, each word loaded atomically (Relaxed: the header
    /// snapshot is checked for structure only; the protocol's own loads give
    /// the ordering).
    pub(crate) fn header_fields(&self) -> [u8; HEADER_FIELDS_LEN] {
        let mut fields = [0u8; HEADER_FIELDS_LEN];
        for (chunk, word) in fields.chunks_exact_mut(8).zip(HeaderWord::all()) {
            let value = self
                .word(Word::Index(word))
                .load(std::sync::atomic::Ordering::Relaxed);
            chunk.copy_from_slice(&value.to_ne_bytes());
        }
        fields
    }

    /// Stores a whole header, for a segment no other process can see yet
    /// (creation and growth); the generation word goes last, with Release.
    pub(crate) fn store_header_fields(&self, fields: &[u8; HEADER_FIELDS_LEN]) {
        let mut generation = 0;
        for (chunk, word) in fields.chunks_exact(8).zip(HeaderWord::all()) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            let value = u64::from_ne_bytes(bytes);
            if Word::Index(word).offset() == OFFSET_GENERATION {
                generation = value;
            } else {
                self.word(Word::Index(word))
                    .store(value, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.word(Word::Generation)
            .store(generation, std::sync::atomic::Ordering::Release);
    }

    /// Sleeps while the low 32 bits of the generation word equal
    /// `expected`, for at most `timeout` (`FUTEX_WAIT` on a process-shared
    /// futex: the kernel keys it by the memfd page, so a wake from any
    /// process or mapping of this segment reaches it). `Ok` means woken,
    /// possibly spuriously; `EAGAIN` that the word had already changed,
    /// `ETIMEDOUT` and `EINTR` what they say: the caller re-checks the
    /// generation in every case.
    pub(crate) fn futex_wait(&self, expected: u32, timeout: Duration) -> Result<(), Errno> {
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        // SAFETY: the futex address is the 4-aligned low half of the
        // generation word, inside the header of the live mapping (see
        // `futex_word`), valid for the whole call because `self` is borrowed;
        // the kernel only reads it (atomically) and queues this thread on it.
        // `timeout` is a valid timespec on this stack frame, read by the
        // kernel during the call only. The remaining arguments (uaddr2,
        // val3) are unused by FUTEX_WAIT. No Rust reference aliases the word
        // non-atomically: this process touches it only as an AtomicU64.
        let result = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.futex_word(),
                libc::FUTEX_WAIT,
                expected,
                &raw const timeout,
                ptr::null::<u32>(),
                0u32,
            )
        };
        if result == -1 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    /// Wakes every thread (in any process) sleeping in
    /// [`SharedMapping::futex_wait`] on this segment; returns how many.
    pub(crate) fn futex_wake_all(&self) -> Result<usize, Errno> {
        // SAFETY: the same address as in `futex_wait`, inside the live
        // mapping; FUTEX_WAKE does not even read it (it only looks up the
        // waiters queued on its key). The timeout, uaddr2 and val3 arguments
        // are unused by FUTEX_WAKE.
        let result = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.futex_word(),
                libc::FUTEX_WAKE,
                i32::MAX,
                ptr::null::<libc::timespec>(),
                ptr::null::<u32>(),
                0u32,
            )
        };
        if result < 0 {
            Err(Errno::last())
        } else {
            Ok(usize::try_from(result).unwrap_or(0))
        }
    }

    /// The address of the futex word: the low 32 bits of the generation.
    /// Never dereferenced in Rust (only the kernel reads through it).
    fn futex_word(&self) -> *const u32 {
        const _: () = assert!(OFFSET_GENERATION_LOW.is_multiple_of(4));
        const _: () = assert!(OFFSET_GENERATION_LOW + 4 <= HEADER_FIELDS_LEN);
        self.map
            .as_ptr()
            .wrapping_add(OFFSET_GENERATION_LOW)
            .cast::<u32>()
    }

    /// Copies `dst.len()` payload bytes of `slot` starting at `start` into
    /// `dst`. Returns false (and copies nothing) if the range leaves the
    /// buffer. The bytes may be torn by a concurrent writer: callers validate
    /// them with the seqlock protocol and the checksum before trusting them.
    pub(crate) fn copy_out(&self, slot: Slot, start: u64, dst: &mut [u8]) -> bool {
        let Some(offset) = self.payload_offset(slot, start, dst.len()) else {
            return false;
        };
        // SAFETY: `payload_offset` checked that `offset..offset + dst.len()`
        // lies inside this slot's buffer, inside the live mapping. `dst` is
        // private memory that cannot overlap the mapping (a `&mut [u8]` into
        // the mapping is only ever lent to the writer of the WRITING slot,
        // which never calls this). The source is read as raw bytes, no
        // reference to it is made, and every bit pattern is a valid u8, so a
        // concurrent write by another process can only give wrong bytes,
        // which the protocol detects and discards.
        unsafe {
            ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), dst.as_mut_ptr(), dst.len());
        }
        true
    }

    /// The first `len` bytes of `slot`'s buffer as a mutable slice.
    ///
    /// # Safety
    /// The caller must be the only writer of this segment (in every process),
    /// must have stored `WRITING` into the slot's generation word before the
    /// call (so every reader discards what it reads of this buffer) unless no
    /// other process or mapping can see the segment yet, must not
    /// publish the slot while the slice lives, and must not read the buffer
    /// through this mapping by other means while the slice lives. `len` must
    /// not exceed the capacity (checked: returns `None` otherwise).
    #[expect(
        clippy::mut_from_ref,
        reason = "the memory is shared, not owned by self: exclusivity is the caller's contract"
    )]
    pub(crate) unsafe fn payload_mut(&self, slot: Slot, len: usize) -> Option<&mut [u8]> {
        let offset = self.payload_offset(slot, 0, len)?;
        // SAFETY: the range is inside this slot's buffer in the live mapping
        // (checked above), so the pointer is valid and aligned for `len`
        // bytes, initialised (file-backed memory reads as bytes). Exclusivity
        // is the caller's contract: no one else writes this buffer while the
        // slice lives, and readers in other mappings only copy it out raw and
        // discard the copy because the slot is WRITING.
        Some(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(offset), len) })
    }

    fn payload_offset(&self, slot: Slot, start: u64, len: usize) -> Option<usize> {
        let end = start.checked_add(u64::try_from(len).ok()?)?;
        if end > self.capacity {
            return None;
        }
        // end <= capacity <= MAX_CAPACITY, so these fit in usize.
        Some(slot.buffer_offset(self.capacity) + start as usize)
    }
}

#[cfg(test)]
impl SharedMapping {
    /// Test-only: xor one payload byte with `mask`, as a bit flip in memory
    /// would.
    pub(crate) fn flip_payload_byte(&self, slot: Slot, index: u64, mask: u8) {
        let offset = self
            .payload_offset(slot, index, 1)
            .expect("index inside the buffer");
        // SAFETY: in bounds (checked above); a test calls this while no
        // thread writes the segment.
        unsafe {
            let byte = self.map.as_mut_ptr().add(offset);
            byte.write(byte.read() ^ mask);
        }
    }
}
