//! The segment header as plain values: parsing from bytes and encoding back.
//!
//! Parsing is a pure function over `&[u8]` so it can be fuzzed and
//! property-tested; it checks structure only. A header read from a live
//! segment is a snapshot of words loaded one by one while a writer may run, so
//! the cross-word rules that only hold between writes (the active slot holds
//! the current generation, the other one the generation before) are checked
//! by the read protocol, not here.

use crate::layout::{
    CAPACITY_GRANULE, HEADER_FIELDS_LEN, HEADER_LEN, LAYOUT_VERSION, MAGIC, MAX_CAPACITY,
    OFFSET_CAPACITY, OFFSET_GENERATION, OFFSET_HEADER_LEN, OFFSET_LAYOUT_VERSION, OFFSET_MAGIC,
    OFFSET_RESERVED, OFFSET_SLOTS, OFFSET_WAITERS, SLOT_CHECKSUM, SLOT_GENERATION,
    SLOT_PAYLOAD_LEN, SLOT_RESERVED, SLOT_SCHEMA, SLOT_STRIDE, Slot, WRITING,
};

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than the header's fields need.
    #[error("header is {len} bytes, needs at least {needed}")]
    TooShort {
        /// Bytes given.
        len: usize,
        /// Bytes the fields take.
        needed: usize,
    },
    /// The first 8 bytes are not the segment magic: not a state segment.
    #[error("magic is {found:02x?}, not a clawmesh state segment")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A layout this code does not know.
    #[error("layout version {found} is not supported (this build reads {supported})")]
    UnsupportedLayout {
        /// The version in the header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The header-length field disagrees with this layout.
    #[error("header length field is {found}, the layout says {expected}")]
    BadHeaderLen {
        /// The value in the header.
        found: u32,
        /// [`HEADER_LEN`].
        expected: u32,
    },
    /// The capacity field is zero, not a multiple of the granule, or too big.
    #[error("capacity field is {capacity}: must be a non-zero multiple of {granule} up to {max}")]
    BadCapacity {
        /// The value in the header.
        capacity: u64,
        /// [`CAPACITY_GRANULE`].
        granule: u64,
        /// [`MAX_CAPACITY`].
        max: u64,
    },
    /// The capacity field disagrees with the size this process mapped.
    #[error("capacity field is {found}, but the mapping was made for {mapped}")]
    CapacityChanged {
        /// The value in the header now.
        found: u64,
        /// The capacity the segment was mapped with.
        mapped: u64,
    },
    /// The generation field holds the reserved in-progress marker.
    #[error("generation field holds the reserved value {found}")]
    BadGeneration {
        /// The value in the header.
        found: u64,
    },
    /// A slot claims more payload than its buffer holds.
    #[error("slot {slot} payload length {len} exceeds the capacity {capacity}")]
    PayloadLenExceedsCapacity {
        /// 0 or 1.
        slot: usize,
        /// The payload length in the slot.
        len: u64,
        /// The buffer capacity.
        capacity: u64,
    },
    /// A slot holds a generation of the wrong parity: generation `g` always
    /// goes to slot `g & 1`.
    #[error("slot {slot} holds generation {generation}, which belongs to the other slot")]
    SlotParity {
        /// 0 or 1.
        slot: usize,
        /// The generation in the slot.
        generation: u64,
    },
    /// A slot is older than the protocol allows for the current generation
    /// (the writer always fills a slot before publishing its generation).
    #[error("slot {slot} holds generation {slot_generation}, behind the expected {expected}")]
    SlotBehind {
        /// 0 or 1.
        slot: usize,
        /// The generation in the slot.
        slot_generation: u64,
        /// The generation the slot must hold at least.
        expected: u64,
    },
    /// The current slot holds a newer write (or a write under way) although
    /// the generation has not moved: the writer always publishes a
    /// generation before it starts overwriting that generation's buffer.
    #[error(
        "slot {slot} holds generation {slot_generation} while the current generation is {generation}"
    )]
    SlotAhead {
        /// 0 or 1.
        slot: usize,
        /// The generation in the slot.
        slot_generation: u64,
        /// The current generation.
        generation: u64,
    },
    /// Reserved bytes that must be zero are not.
    #[error("reserved byte at offset {offset} is {value:#04x}, must be zero")]
    ReservedNotZero {
        /// Offset of the first non-zero reserved byte.
        offset: usize,
        /// Its value.
        value: u8,
    },
}

/// The metadata of one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotMeta {
    /// Generation of the write this buffer holds; 0 if never written,
    /// [`WRITING`] while a write into it is under way or was abandoned.
    pub generation: u64,
    /// Bytes of payload.
    pub payload_len: u64,
    /// The state schema version the writer declared.
    pub schema: u32,
    /// crc32 of the payload.
    pub checksum: u32,
}

impl SlotMeta {
    /// A buffer that was never written.
    pub const EMPTY: SlotMeta = SlotMeta {
        generation: 0,
        payload_len: 0,
        schema: 0,
        checksum: 0,
    };
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentHeader {
    /// Capacity of each buffer in bytes.
    pub capacity: u64,
    /// The last published generation (0: nothing published yet).
    pub generation: u64,
    /// Restores that were sleeping on the generation's futex when the
    /// header was read. Advisory: any value is accepted (a wrong one costs
    /// a writer at most one needless wake-up call, or a waiter its bounded
    /// wait), and a segment no one waits on has 0.
    pub waiters: u64,
    /// Metadata of buffer 0 and buffer 1.
    pub slots: [SlotMeta; 2],
}

impl SegmentHeader {
    /// The header of a fresh segment: nothing published.
    pub fn empty(capacity: u64) -> SegmentHeader {
        SegmentHeader {
            capacity,
            generation: 0,
            waiters: 0,
            slots: [SlotMeta::EMPTY; 2],
        }
    }

    /// The metadata of `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotMeta {
        match slot {
            Slot::Zero => &self.slots[0],
            Slot::One => &self.slots[1],
        }
    }

    /// Parses the first [`HEADER_FIELDS_LEN`] bytes of `bytes` (more are
    /// ignored). Never panics and never reads past `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let Some(fields) = bytes.first_chunk::<HEADER_FIELDS_LEN>() else {
            return Err(HeaderError::TooShort {
                len: bytes.len(),
                needed: HEADER_FIELDS_LEN,
            });
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&fields[OFFSET_MAGIC..OFFSET_MAGIC + 8]);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let layout_version = read_u32(fields, OFFSET_LAYOUT_VERSION);
        if layout_version != LAYOUT_VERSION {
            return Err(HeaderError::UnsupportedLayout {
                found: layout_version,
                supported: LAYOUT_VERSION,
            });
        }
        let header_len = read_u32(fields, OFFSET_HEADER_LEN);
        if header_len as usize != HEADER_LEN {
            return Err(HeaderError::BadHeaderLen {
                found: header_len,
                expected: HEADER_LEN as u32,
            });
        }
        let capacity = read_u64(fields, OFFSET_CAPACITY);
        if capacity == 0 || !capacity.is_multiple_of(CAPACITY_GRANULE) || capacity > MAX_CAPACITY {
            return Err(HeaderError::BadCapacity {
                capacity,
                granule: CAPACITY_GRANULE,
                max: MAX_CAPACITY,
            });
        }
        let generation = read_u64(fields, OFFSET_GENERATION);
        if generation == WRITING {
            return Err(HeaderError::BadGeneration { found: generation });
        }
        let waiters = read_u64(fields, OFFSET_WAITERS);
        check_zero(fields, OFFSET_RESERVED, OFFSET_SLOTS)?;
        let mut slots = [SlotMeta::EMPTY; 2];
        for slot in Slot::ALL {
            let base = slot.meta_offset();
            let meta = SlotMeta {
                generation: read_u64(fields, base + SLOT_GENERATION),
                payload_len: read_u64(fields, base + SLOT_PAYLOAD_LEN),
                schema: read_u32(fields, base + SLOT_SCHEMA),
                checksum: read_u32(fields, base + SLOT_CHECKSUM),
            };
            if meta.generation != 0
                && meta.generation != WRITING
                && Slot::for_generation(meta.generation) != slot
            {
                return Err(HeaderError::SlotParity {
                    slot: slot.index(),
                    generation: meta.generation,
                });
            }
            if meta.payload_len > capacity {
                return Err(HeaderError::PayloadLenExceedsCapacity {
                    slot: slot.index(),
                    len: meta.payload_len,
                    capacity,
                });
            }
            check_zero(fields, base + SLOT_RESERVED, base + SLOT_STRIDE)?;
            slots[slot.index()] = meta;
        }
        Ok(SegmentHeader {
            capacity,
            generation,
            waiters,
            slots,
        })
    }

    /// The header's field bytes; [`SegmentHeader::parse`] reads them back.
    pub fn encode(&self) -> [u8; HEADER_FIELDS_LEN] {
        let mut fields = [0u8; HEADER_FIELDS_LEN];
        fields[OFFSET_MAGIC..OFFSET_MAGIC + 8].copy_from_slice(&MAGIC);
        write_bytes(
            &mut fields,
            OFFSET_LAYOUT_VERSION,
            &LAYOUT_VERSION.to_ne_bytes(),
        );
        write_bytes(
            &mut fields,
            OFFSET_HEADER_LEN,
            &(HEADER_LEN as u32).to_ne_bytes(),
        );
        write_bytes(&mut fields, OFFSET_CAPACITY, &self.capacity.to_ne_bytes());
        write_bytes(
            &mut fields,
            OFFSET_GENERATION,
            &self.generation.to_ne_bytes(),
        );
        write_bytes(&mut fields, OFFSET_WAITERS, &self.waiters.to_ne_bytes());
        for slot in Slot::ALL {
            let base = slot.meta_offset();
            let meta = self.slot(slot);
            write_bytes(
                &mut fields,
                base + SLOT_GENERATION,
                &meta.generation.to_ne_bytes(),
            );
            write_bytes(
                &mut fields,
                base + SLOT_PAYLOAD_LEN,
                &meta.payload_len.to_ne_bytes(),
            );
            write_bytes(&mut fields, base + SLOT_SCHEMA, &meta.schema.to_ne_bytes());
            write_bytes(
                &mut fields,
                base + SLOT_CHECKSUM,
                &meta.checksum.to_ne_bytes(),
            );
        }
        fields
    }
}

/// The word holding a slot's schema (low 4 bytes) and checksum (high 4
/// bytes), as stored in one atomic `u64` at `SLOT_SCHEMA`.
pub(crate) fn schema_checksum_word(schema: u32, checksum: u32) -> u64 {
    let mut word = [0u8; 8];
    word[..4].copy_from_slice(&schema.to_ne_bytes());
    word[4..].copy_from_slice(&checksum.to_ne_bytes());
    u64::from_ne_bytes(word)
}

/// The inverse of [`schema_checksum_word`].
pub(crate) fn split_schema_checksum(word: u64) -> (u32, u32) {
    let bytes = word.to_ne_bytes();
    (read_u32(&bytes, 0), read_u32(&bytes, 4))
}

fn write_bytes(fields: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(target) = fields.get_mut(offset..offset + bytes.len()) {
        target.copy_from_slice(bytes);
    }
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(source) = bytes.get(offset..offset + 8) {
        word.copy_from_slice(source);
    }
    u64::from_ne_bytes(word)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(source) = bytes.get(offset..offset + 4) {
        word.copy_from_slice(source);
    }
    u32::from_ne_bytes(word)
}

fn check_zero(fields: &[u8], start: usize, end: usize) -> Result<(), HeaderError> {
    let reserved = fields.get(start..end).unwrap_or_default();
    match reserved.iter().position(|&byte| byte != 0) {
        None => Ok(()),
        Some(index) => Err(HeaderError::ReservedNotZero {
            offset: start + index,
            value: reserved.get(index).copied().unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SegmentHeader {
        SegmentHeader {
            capacity: 8192,
            generation: 7,
            waiters: 0,
            slots: [
                SlotMeta {
                    generation: 6,
                    payload_len: 10,
                    schema: 2,
                    checksum: 0xdead_beef,
                },
                SlotMeta {
                    generation: 7,
                    payload_len: 8192,
                    schema: 3,
                    checksum: 1,
                },
            ],
        }
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let header = sample();
        assert_eq!(SegmentHeader::parse(&header.encode()), Ok(header));
        let empty = SegmentHeader::empty(4096);
        assert_eq!(SegmentHeader::parse(&empty.encode()), Ok(empty));
    }

    #[test]
    fn bytes_past_the_fields_are_ignored() {
        let mut bytes = sample().encode().to_vec();
        bytes.extend_from_slice(&[0xff; 100]);
        assert_eq!(SegmentHeader::parse(&bytes), Ok(sample()));
    }

    #[test]
    fn refuses_short_input() {
        let bytes = sample().encode();
        assert_eq!(
            SegmentHeader::parse(&bytes[..HEADER_FIELDS_LEN - 1]),
            Err(HeaderError::TooShort {
                len: HEADER_FIELDS_LEN - 1,
                needed: HEADER_FIELDS_LEN
            })
        );
    }

    #[test]
    fn refuses_bad_magic_and_version() {
        let mut bytes = sample().encode();
        bytes[0] ^= 1;
        assert!(matches!(
            SegmentHeader::parse(&bytes),
            Err(HeaderError::BadMagic { .. })
        ));
        let mut bytes = sample().encode();
        bytes[OFFSET_LAYOUT_VERSION] = 9;
        assert_eq!(
            SegmentHeader::parse(&bytes),
            Err(HeaderError::UnsupportedLayout {
                found: 9,
                supported: LAYOUT_VERSION
            })
        );
        let mut bytes = sample().encode();
        bytes[OFFSET_HEADER_LEN] = 1;
        assert!(matches!(
            SegmentHeader::parse(&bytes),
            Err(HeaderError::BadHeaderLen { .. })
        ));
    }

    #[test]
    fn refuses_bad_capacity() {
        for capacity in [0, 100, MAX_CAPACITY + CAPACITY_GRANULE] {
            let header = SegmentHeader {
                capacity,
                ..SegmentHeader::empty(4096)
            };
            assert!(matches!(
                SegmentHeader::parse(&header.encode()),
                Err(HeaderError::BadCapacity { capacity: found, .. }) if found == capacity
            ));
        }
    }

    #[test]
    fn refuses_inconsistent_slots() {
        let mut header = sample();
        header.slots[0].payload_len = 8193;
        assert_eq!(
            SegmentHeader::parse(&header.encode()),
            Err(HeaderError::PayloadLenExceedsCapacity {
                slot: 0,
                len: 8193,
                capacity: 8192
            })
        );
        let mut header = sample();
        header.slots[1].generation = 6;
        assert_eq!(
            SegmentHeader::parse(&header.encode()),
            Err(HeaderError::SlotParity {
                slot: 1,
                generation: 6
            })
        );
        let mut header = sample();
        header.slots[1].generation = WRITING;
        assert_eq!(SegmentHeader::parse(&header.encode()), Ok(header));
        let mut header = sample();
        header.generation = WRITING;
        assert!(matches!(
            SegmentHeader::parse(&header.encode()),
            Err(HeaderError::BadGeneration { .. })
        ));
    }

    #[test]
    fn refuses_a_version_1_header() {
        // Version 1 had no waiters word: a process of that build would
        // neither count itself as a waiter nor wake one.
        let mut bytes = sample().encode();
        bytes[OFFSET_LAYOUT_VERSION..OFFSET_LAYOUT_VERSION + 4]
            .copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(
            SegmentHeader::parse(&bytes),
            Err(HeaderError::UnsupportedLayout {
                found: 1,
                supported: LAYOUT_VERSION
            })
        );
    }

    #[test]
    fn any_waiters_count_is_accepted_and_kept() {
        for waiters in [1, 3, u64::MAX] {
            let header = SegmentHeader {
                waiters,
                ..sample()
            };
            let bytes = header.encode();
            assert_eq!(
                bytes[OFFSET_WAITERS..OFFSET_WAITERS + 8],
                waiters.to_ne_bytes()
            );
            assert_eq!(SegmentHeader::parse(&bytes), Ok(header));
        }
        // The word is the only one the layout took from the reserved bytes.
        assert_eq!(OFFSET_WAITERS + 8, OFFSET_RESERVED);
    }

    #[test]
    fn refuses_non_zero_reserved_bytes() {
        for offset in OFFSET_RESERVED..OFFSET_SLOTS {
            let mut bytes = sample().encode();
            bytes[offset] = 5;
            assert_eq!(
                SegmentHeader::parse(&bytes),
                Err(HeaderError::ReservedNotZero { offset, value: 5 })
            );
        }
        let mut bytes = sample().encode();
        let offset = Slot::One.meta_offset() + SLOT_RESERVED + 39;
        bytes[offset] = 1;
        assert_eq!(
            SegmentHeader::parse(&bytes),
            Err(HeaderError::ReservedNotZero { offset, value: 1 })
        );
    }

    #[test]
    fn schema_and_checksum_share_a_word() {
        let word = schema_checksum_word(0x0102_0304, 0xa0b0_c0d0);
        assert_eq!(split_schema_checksum(word), (0x0102_0304, 0xa0b0_c0d0));
        let mut fields = [0u8; 8];
        fields.copy_from_slice(&word.to_ne_bytes());
        assert_eq!(read_u32(&fields, 0), 0x0102_0304);
        assert_eq!(read_u32(&fields, 4), 0xa0b0_c0d0);
    }

    fn arbitrary_header() -> impl Strategy<Value = SegmentHeader> {
        let slot = |parity: u64| {
            (
                0u64..1 << 40,
                0u64..=4096,
                any::<u32>(),
                any::<u32>(),
                0u8..4,
            )
                .prop_map(move |(generation, payload_len, schema, checksum, kind)| {
                    SlotMeta {
                        generation: match kind {
                            0 => 0,
                            1 => WRITING,
                            _ => generation * 2 + parity,
                        },
                        payload_len,
                        schema,
                        checksum,
                    }
                })
        };
        (1u64..=16, 0u64..WRITING, any::<u64>(), slot(0), slot(1)).prop_map(
            |(pages, generation, waiters, a, b)| SegmentHeader {
                capacity: pages * 4096,
                generation,
                waiters,
                slots: [a, b],
            },
        )
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SegmentHeader::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_headers(
            header in arbitrary_header(),
            flips in proptest::collection::vec((0usize..HEADER_FIELDS_LEN, any::<u8>()), 0..8),
        ) {
            let mut bytes = header.encode();
            for (offset, value) in flips {
                bytes[offset] = value;
            }
            if let Ok(parsed) = SegmentHeader::parse(&bytes) {
                // Whatever parses encodes back to the same bytes.
                prop_assert_eq!(parsed.encode(), bytes);
            }
        }

        #[test]
        fn valid_headers_round_trip(header in arbitrary_header()) {
            prop_assert_eq!(SegmentHeader::parse(&header.encode()), Ok(header));
        }
    }
}
