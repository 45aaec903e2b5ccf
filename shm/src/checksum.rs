//! The payload checksum (crc32, hardware-accelerated where the CPU allows)
//! and the chunk size payloads move in.

/// Payloads are copied and checksummed in chunks of this size, so each chunk
/// is still in cache when the checksum reads it after the copy.
pub(crate) const COPY_CHUNK_LEN: usize = 256 * 1024;

/// A running crc32 over payload bytes.
#[derive(Clone, Default)]
pub(crate) struct Checksum(crc32fast::Hasher);

impl Checksum {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// The checksum of `bytes` in one go.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut sum = Checksum::default();
    sum.update(bytes);
    sum.finish()
}
