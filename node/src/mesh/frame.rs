//! Length-prefixed frames on a byte stream: a u32 big-endian length, then
//! that many bytes.
//!
//! Reading is split into header and body so callers can apply different
//! timeouts (waiting for the next frame is idle time; a started frame must
//! finish promptly) and can check the announced length against their limit
//! before a single byte of the body is allocated.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 4;

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteFrameError {
    /// The frame is longer than the limit the caller passed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream failed.
    #[error("writing frame: {0}")]
    Io(#[from] io::Error),
}

/// Reads a frame header. `Ok(None)` means the stream ended cleanly between
/// frames; a stream that ends inside a header is an `UnexpectedEof` error.
pub async fn read_frame_len<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<usize>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a frame header",
            ));
        }
        filled += n;
    }
    // A u32 always fits in usize on the 64-bit targets we build for.
    Ok(Some(u32::from_be_bytes(header) as usize))
}

/// Reads a frame body of `len` bytes. The caller has already checked `len`
/// against its limit.
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
    max: usize,
) -> Result<(), WriteFrameError> {
    let too_large = WriteFrameError::TooLarge {
        len: frame.len(),
        max,
    };
    if frame.len() > max {
        return Err(too_large);
    }
    let len = u32::try_from(frame.len()).map_err(|_| too_large)?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;
    use proptest::prelude::*;

    use super::*;

    async fn read_all_frames(bytes: Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        let mut cursor = Cursor::new(bytes);
        let mut frames = Vec::new();
        while let Some(len) = read_frame_len(&mut cursor).await? {
            frames.push(read_frame_body(&mut cursor, len).await?);
        }
        Ok(frames)
    }

    proptest! {
        #[test]
        fn frames_roundtrip_in_order(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 0..20)
        ) {
            let mut out = Cursor::new(Vec::new());
            for frame in &frames {
                block_on(write_frame(&mut out, frame, 300)).unwrap();
            }
            let read = block_on(read_all_frames(out.into_inner())).unwrap();
            prop_assert_eq!(read, frames);
        }

        #[test]
        fn truncated_stream_is_an_error_not_a_short_frame(
            frame in proptest::collection::vec(any::<u8>(), 1..100),
            cut in 1usize..100,
        ) {
            let mut out = Cursor::new(Vec::new());
            block_on(write_frame(&mut out, &frame, 100)).unwrap();
            let mut bytes = out.into_inner();
            let cut = cut.min(bytes.len() - 1);
            bytes.truncate(cut);
            let err = block_on(read_all_frames(bytes)).unwrap_err();
            prop_assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn write_refuses_frame_over_limit() {
        let mut out = Cursor::new(Vec::new());
        let err = block_on(write_frame(&mut out, &[0u8; 11], 10)).unwrap_err();
        assert!(matches!(
            err,
            WriteFrameError::TooLarge { len: 11, max: 10 }
        ));
        assert!(out.into_inner().is_empty());
    }

    #[test]
    fn header_announces_big_endian_length() {
        let mut cursor = Cursor::new(vec![0x01, 0x02, 0x03, 0x04]);
        let len = block_on(read_frame_len(&mut cursor)).unwrap();
        assert_eq!(len, Some(0x0102_0304));
    }
}
