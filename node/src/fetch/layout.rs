//! `ChunkLayout`: what a fetched blob must be, taken from its manifest.

use clawmesh_crdt::manifest::Manifest;

use crate::blob_store::BlobId;

/// The shape of a blob as its manifest promises it: address, size, chunk
/// size and the sha256 of every chunk. The manifest is the source of truth;
/// nothing a peer says about a blob is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLayout {
    /// sha256 of the whole blob.
    pub blob: BlobId,
    /// Size in bytes.
    pub size: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
    /// sha256 of each chunk, in order.
    pub chunk_sha256: Vec<[u8; 32]>,
}

impl ChunkLayout {
    /// The layout a validated manifest describes.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        Self {
            blob: BlobId(manifest.sha256),
            size: manifest.size,
            chunk_size: manifest.chunk_size,
            chunk_sha256: manifest.chunk_sha256.clone(),
        }
    }

    /// The layout of `bytes` cut into `chunk_size` chunks (tests, benchmarks
    /// and blobs already held).
    pub fn of_bytes(bytes: &[u8], chunk_size: u32) -> Self {
        Self {
            blob: BlobId::of(bytes),
            size: bytes.len() as u64,
            chunk_size,
            chunk_sha256: clawmesh_crdt::manifest::ChunkHashes::compute(bytes, chunk_size),
        }
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunk_sha256.len()
    }

    /// Byte offset of chunk `index`.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    /// Length of chunk `index` (the last may be short); 0 past the end.
    pub fn chunk_len(&self, index: u32) -> u32 {
        if index as usize >= self.chunk_count() {
            return 0;
        }
        let left = self.size.saturating_sub(self.offset(index));
        // At most chunk_size, which is a u32.
        u32::try_from(left.min(u64::from(self.chunk_size))).unwrap_or(self.chunk_size)
    }

    /// Whether the chunk list, size and chunk size agree with each other.
    pub fn is_consistent(&self) -> bool {
        self.chunk_size > 0
            && self.size > 0
            && self.size.div_ceil(u64::from(self.chunk_size)) == self.chunk_count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_chunk_is_short_and_past_the_end_is_empty() {
        let bytes = vec![1u8; 150];
        let layout = ChunkLayout::of_bytes(&bytes, 64);
        assert_eq!(layout.chunk_count(), 3);
        assert_eq!(
            (0..4).map(|i| layout.chunk_len(i)).collect::<Vec<_>>(),
            vec![64, 64, 22, 0]
        );
        assert!(layout.is_consistent());
        let mut broken = layout.clone();
        broken.chunk_sha256.pop();
        assert!(!broken.is_consistent());
    }
}
