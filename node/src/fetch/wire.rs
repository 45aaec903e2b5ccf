//! The `/clawmesh/blob/1` wire format. One stream carries one request and
//! its answers, then closes.
//!
//! Request: `version u8 = 1`, `blob sha256 [32]`, `count u16`, then `count`
//! chunk indexes as `u32`; all big-endian, `count` in
//! `1..=MAX_CHUNKS_PER_REQUEST`.
//!
//! Answer, once per requested chunk and in request order: a 9-byte header
//! `index u32`, `status u8`, `len u32`, followed for `status = 0` by `len`
//! bytes of chunk. `status = 1` means the peer does not hold that chunk
//! (`len` is 0). The client knows each chunk's length from the manifest and
//! refuses a header announcing any other length before reading a byte of the
//! body, so an oversized or endless answer is cut at the manifest's size.

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::blob_store::BlobId;

/// The protocol name.
pub const BLOB_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/clawmesh/blob/1");
/// Wire format version in the request's first byte.
pub const WIRE_VERSION: u8 = 1;
/// Chunk indexes in one request, at most.
pub const MAX_CHUNKS_PER_REQUEST: usize = 64;
/// Bytes of a request before its index list.
pub const REQUEST_HEADER_LEN: usize = 1 + 32 + 2;
/// Largest request on the wire.
pub const MAX_REQUEST_LEN: usize = REQUEST_HEADER_LEN + 4 * MAX_CHUNKS_PER_REQUEST;
/// Bytes of an answer header.
pub const CHUNK_HEADER_LEN: usize = 9;

const STATUS_DATA: u8 = 0;
const STATUS_NOT_HELD: u8 = 1;

/// A request for chunks of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRequest {
    /// The blob.
    pub blob: BlobId,
    /// Chunk indexes, in the order they are to be answered.
    pub chunks: Vec<u32>,
}

/// The header of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkHeader {
    /// `len` bytes of chunk `index` follow.
    Data {
        /// Chunk index.
        index: u32,
        /// Bytes that follow.
        len: u32,
    },
    /// The peer does not hold chunk `index`.
    NotHeld {
        /// Chunk index.
        index: u32,
    },
}

impl ChunkHeader {
    /// The chunk this answers.
    pub fn index(&self) -> u32 {
        match *self {
            Self::Data { index, .. } | Self::NotHeld { index } => index,
        }
    }
}

/// Bytes that are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message is shorter than its fields say.
    #[error("{what} is truncated: {len} bytes, {needed} needed")]
    Truncated {
        /// Which message.
        what: &'static str,
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A request of another wire version.
    #[error("request has wire version {0}, expected {WIRE_VERSION}")]
    Version(u8),
    /// The chunk count is 0 or above `MAX_CHUNKS_PER_REQUEST`.
    #[error("request asks for {0} chunks; 1..={MAX_CHUNKS_PER_REQUEST} allowed")]
    ChunkCount(usize),
    /// Bytes after the index list.
    #[error("request has {0} trailing bytes")]
    Trailing(usize),
    /// An answer header with an unknown status.
    #[error("answer header has unknown status {0}")]
    Status(u8),
    /// A "not held" answer that announces a body.
    #[error("not-held answer for chunk {index} announces {len} bytes")]
    NotHeldWithBody {
        /// Chunk index.
        index: u32,
        /// Announced length.
        len: u32,
    },
}

/// Encodes a request; refuses a chunk count the wire does not allow.
pub fn encode_request(request: &BlobRequest) -> Result<Vec<u8>, WireError> {
    let count = request.chunks.len();
    let Ok(count16) = u16::try_from(count) else {
        return Err(WireError::ChunkCount(count));
    };
    if count == 0 || count > MAX_CHUNKS_PER_REQUEST {
        return Err(WireError::ChunkCount(count));
    }
    let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + 4 * count);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&request.blob.0);
    out.extend_from_slice(&count16.to_be_bytes());
    for c in &request.chunks {
        out.extend_from_slice(&c.to_be_bytes());
    }
    Ok(out)
}

/// The number of index bytes that follow a request header, checked.
pub fn decode_request_header(header: &[u8]) -> Result<(BlobId, usize), WireError> {
    let Some(header) = header.get(..REQUEST_HEADER_LEN) else {
        return Err(WireError::Truncated {
            what: "request",
            len: header.len(),
            needed: REQUEST_HEADER_LEN,
        });
    };
    if header[0] != WIRE_VERSION {
        return Err(WireError::Version(header[0]));
    }
    let mut blob = [0u8; 32];
    blob.copy_from_slice(&header[1..33]);
    let count = usize::from(u16::from_be_bytes([header[33], header[34]]));
    if count == 0 || count > MAX_CHUNKS_PER_REQUEST {
        return Err(WireError::ChunkCount(count));
    }
    Ok((BlobId(blob), count))
}

/// Decodes a whole request.
pub fn decode_request(bytes: &[u8]) -> Result<BlobRequest, WireError> {
    let (blob, count) = decode_request_header(bytes)?;
    let needed = REQUEST_HEADER_LEN + 4 * count;
    if bytes.len() < needed {
        return Err(WireError::Truncated {
            what: "request",
            len: bytes.len(),
            needed,
        });
    }
    if bytes.len() > needed {
        return Err(WireError::Trailing(bytes.len() - needed));
    }
    let chunks = bytes[REQUEST_HEADER_LEN..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(BlobRequest { blob, chunks })
}

/// Encodes an answer header.
pub fn encode_chunk_header(header: ChunkHeader) -> [u8; CHUNK_HEADER_LEN] {
    let (index, status, len) = match header {
        ChunkHeader::Data { index, len } => (index, STATUS_DATA, len),
        ChunkHeader::NotHeld { index } => (index, STATUS_NOT_HELD, 0),
    };
    let mut out = [0u8; CHUNK_HEADER_LEN];
    out[..4].copy_from_slice(&index.to_be_bytes());
    out[4] = status;
    out[5..].copy_from_slice(&len.to_be_bytes());
    out
}

/// Decodes an answer header.
pub fn decode_chunk_header(bytes: &[u8]) -> Result<ChunkHeader, WireError> {
    let Some(b) = bytes.get(..CHUNK_HEADER_LEN) else {
        return Err(WireError::Truncated {
            what: "answer header",
            len: bytes.len(),
            needed: CHUNK_HEADER_LEN,
        });
    };
    let index = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let len = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
    match b[4] {
        STATUS_DATA => Ok(ChunkHeader::Data { index, len }),
        STATUS_NOT_HELD if len == 0 => Ok(ChunkHeader::NotHeld { index }),
        STATUS_NOT_HELD => Err(WireError::NotHeldWithBody { index, len }),
        other => Err(WireError::Status(other)),
    }
}

/// Why reading a message off a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid message.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Reads one request (at most `MAX_REQUEST_LEN` bytes).
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<BlobRequest, ReadError> {
    let mut buf = vec![0u8; REQUEST_HEADER_LEN];
    stream.read_exact(&mut buf).await?;
    let (_, count) = decode_request_header(&buf)?;
    buf.resize(REQUEST_HEADER_LEN + 4 * count, 0);
    stream.read_exact(&mut buf[REQUEST_HEADER_LEN..]).await?;
    Ok(decode_request(&buf)?)
}

/// Writes a request.
pub async fn write_request<S: AsyncWrite + Unpin>(
    stream: &mut S,
    request: &BlobRequest,
) -> Result<(), ReadError> {
    let bytes = encode_request(request)?;
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one answer header.
pub async fn read_chunk_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ChunkHeader, ReadError> {
    let mut buf = [0u8; CHUNK_HEADER_LEN];
    stream.read_exact(&mut buf).await?;
    Ok(decode_chunk_header(&buf)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trips() {
        let req = BlobRequest {
            blob: BlobId([9; 32]),
            chunks: vec![0, 7, u32::MAX],
        };
        let bytes = encode_request(&req).unwrap();
        assert_eq!(bytes.len(), REQUEST_HEADER_LEN + 12);
        assert_eq!(decode_request(&bytes).unwrap(), req);
    }

    #[test]
    fn bad_requests_are_named() {
        let empty = BlobRequest {
            blob: BlobId([0; 32]),
            chunks: vec![],
        };
        assert_eq!(encode_request(&empty), Err(WireError::ChunkCount(0)));
        let many = BlobRequest {
            blob: BlobId([0; 32]),
            chunks: vec![1; MAX_CHUNKS_PER_REQUEST + 1],
        };
        assert_eq!(
            encode_request(&many),
            Err(WireError::ChunkCount(MAX_CHUNKS_PER_REQUEST + 1))
        );
        let mut bytes = encode_request(&BlobRequest {
            blob: BlobId([0; 32]),
            chunks: vec![1],
        })
        .unwrap();
        bytes.push(0);
        assert_eq!(decode_request(&bytes), Err(WireError::Trailing(1)));
        bytes[0] = 2;
        assert_eq!(decode_request(&bytes), Err(WireError::Version(2)));
    }

    #[test]
    fn headers_round_trip() {
        for h in [
            ChunkHeader::Data {
                index: 3,
                len: 65536,
            },
            ChunkHeader::NotHeld { index: 8 },
        ] {
            assert_eq!(decode_chunk_header(&encode_chunk_header(h)).unwrap(), h);
        }
        let mut bad = encode_chunk_header(ChunkHeader::NotHeld { index: 1 });
        bad[8] = 1;
        assert_eq!(
            decode_chunk_header(&bad),
            Err(WireError::NotHeldWithBody { index: 1, len: 1 })
        );
        bad[4] = 9;
        assert_eq!(decode_chunk_header(&bad), Err(WireError::Status(9)));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_request(&bytes);
            let _ = decode_request_header(&bytes);
            let _ = decode_chunk_header(&bytes);
        }

        #[test]
        fn any_valid_request_round_trips(blob in any::<[u8; 32]>(), chunks in proptest::collection::vec(any::<u32>(), 1..=MAX_CHUNKS_PER_REQUEST)) {
            let req = BlobRequest { blob: BlobId(blob), chunks };
            prop_assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
        }
    }
}
