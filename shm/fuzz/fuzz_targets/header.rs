//! Fuzzes `SegmentHeader::parse`: it must never panic or read out of
//! bounds, and whatever it accepts must encode back to the bytes it read.
#![no_main]

use clawmesh_shm::SegmentHeader;
use clawmesh_shm::layout::HEADER_FIELDS_LEN;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = SegmentHeader::parse(data) {
        assert_eq!(&header.encode()[..], &data[..HEADER_FIELDS_LEN]);
    }
});
