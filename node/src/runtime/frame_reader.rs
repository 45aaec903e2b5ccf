//! Splits a byte stream into frames with one read per batch: the node's end
//! of a worker socket reads whatever is there (often many pipelined
//! answers) into one buffer and takes every complete frame out of it,
//! instead of two reads (length, then body) per frame.
//!
//! Sans-I/O: the caller reads into [`FrameReader::spare`] and reports how
//! much it read with [`FrameReader::filled`]; frames come out of
//! [`FrameReader::next_frame`].

use super::frame::{self, FrameError, LENGTH_PREFIX};

/// Bytes asked for per read. Kept below glibc's 64 KiB fastbin
/// consolidation threshold so freeing a buffer stays cheap.
pub const READ_CHUNK: usize = 32 * 1024;

/// A frame at least this long is read into a buffer of its own (handed on
/// without a copy) rather than through the shared read buffer.
pub const OWN_BUFFER_FRAME: usize = 64 * 1024;

/// What [`FrameReader::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// A complete small frame (the bytes after its length prefix),
    /// borrowed from the read buffer.
    Frame(&'a [u8]),
    /// A large frame begins here: the caller should read its remaining
    /// `missing` bytes straight into `started` (already holding the
    /// `started.len()` bytes that were buffered), then use it whole.
    Large {
        /// The frame's bytes received so far, with room for all of them.
        started: Vec<u8>,
        /// Bytes still to read.
        missing: usize,
    },
    /// No complete frame is buffered: read more.
    NeedMore,
}

/// Buffer of bytes read from the socket and not yet handed out as frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Allocated once and grown when a frame needs it; never zeroed again.
    buffer: Vec<u8>,
    /// Start of the bytes not yet consumed.
    start: usize,
    /// End of the bytes read.
    end: usize,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next complete frame, a large frame to finish reading, or
    /// [`Next::NeedMore`]. A bad length prefix is an error (the stream
    /// cannot be resynchronised after it).
    pub fn next_frame(&mut self) -> Result<Next<'_>, FrameError> {
        let available = &self.buffer[self.start..self.end];
        let Some(prefix) = available.first_chunk::<LENGTH_PREFIX>() else {
            return Ok(Next::NeedMore);
        };
        let length = frame::frame_length(*prefix)?;
        let body = &available[LENGTH_PREFIX..];
        if length >= OWN_BUFFER_FRAME {
            // Taken out now whether or not it is complete, so the body is
            // never copied through the shared buffer.
            let have = body.len().min(length);
            let mut started = Vec::with_capacity(length);
            started.extend_from_slice(&body[..have]);
            self.start += LENGTH_PREFIX + have;
            return Ok(Next::Large {
                started,
                missing: length - have,
            });
        }
        if body.len() < length {
            return Ok(Next::NeedMore);
        }
        let begin = self.start + LENGTH_PREFIX;
        self.start = begin + length;
        Ok(Next::Frame(&self.buffer[begin..begin + length]))
    }

    /// Room to read into (at least [`READ_CHUNK`] bytes): moves a partial
    /// frame to the front of the buffer first when the room runs short.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buffer.len() - self.end < READ_CHUNK && self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buffer.len() - self.end < READ_CHUNK {
            // A partial small frame plus one chunk: bounded by
            // OWN_BUFFER_FRAME + READ_CHUNK.
            self.buffer.resize(self.end + READ_CHUNK, 0);
        }
        &mut self.buffer[self.end..]
    }

    /// After reading `count` bytes into [`FrameReader::spare`].
    pub fn filled(&mut self, count: usize) {
        self.end = (self.end + count).min(self.buffer.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::frame::{Response, encode_response};

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, payload) in payloads.iter().enumerate() {
            encode_response(id as u64 + 1, &Response::Ok(payload), &mut out).unwrap();
        }
        out
    }

    /// Feeds `bytes` in pieces of `step` and collects every frame's payload.
    fn split(bytes: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut reader = FrameReader::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut large: Option<(Vec<u8>, usize)> = None;
        loop {
            if let Some((mut started, missing)) = large.take() {
                let take = missing.min(bytes.len() - fed).min(step);
                started.extend_from_slice(&bytes[fed..fed + take]);
                fed += take;
                if take == missing {
                    out.push(started);
                } else {
                    large = Some((started, missing - take));
                    continue;
                }
            }
            match reader.next_frame().unwrap() {
                Next::Frame(frame) => out.push(frame.to_vec()),
                Next::Large { started, missing } => large = Some((started, missing)),
                Next::NeedMore if fed == bytes.len() => return out,
                Next::NeedMore => {
                    let spare = reader.spare();
                    let take = step.min(bytes.len() - fed).min(spare.len());
                    spare[..take].copy_from_slice(&bytes[fed..fed + take]);
                    reader.filled(take);
                    fed += take;
                }
            }
        }
    }

    #[test]
    fn frames_come_out_whole_whatever_the_read_sizes() {
        let big = vec![7u8; OWN_BUFFER_FRAME + 10];
        let payloads: Vec<&[u8]> = vec![b"a", b"", b"hello", &big, b"tail"];
        let bytes = frames(&payloads);
        let expected = split(&bytes, usize::MAX);
        assert_eq!(expected.len(), payloads.len());
        for (frame, payload) in expected.iter().zip(&payloads) {
            let decoded = frame::decode_response(frame).unwrap();
            assert_eq!(decoded.body, Response::Ok(payload));
        }
        for step in [1, 3, 13, 4096, READ_CHUNK + 1] {
            assert_eq!(split(&bytes, step), expected, "reads of {step} bytes");
        }
    }

    #[test]
    fn a_bad_length_is_an_error() {
        let mut reader = FrameReader::new();
        let spare = reader.spare();
        spare[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        reader.filled(4);
        assert!(matches!(
            reader.next_frame(),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
