//! The node ↔ worker wire protocol: length-prefixed frames over a Unix socket.
//!
//! ```text
//! u32 LE  length of everything after it (header + payload), ≤ MAX_FRAME
//! u64 LE  request id (0 is reserved for the worker's unsolicited `Hello`)
//! u8      kind
//! ...     payload (layout per kind, below)
//! ```
//!
//! Requests (node → worker): `Invoke` (u16 LE op length, op UTF-8, input
//! bytes), `Snapshot`, `Restore` (u32 LE schema, state bytes), `Health`,
//! `Shutdown` (all empty), and the state-segment requests: `AttachSegment`
//! (empty; the segment's memfd rides on the same `sendmsg` as SCM_RIGHTS
//! ancillary data), `SnapshotToSegment` (empty; the `Ok` payload is a
//! [`SegmentWrite`]) and `RestoreFromSegment` (u64 LE generation, u32 LE
//! wait in ms). States never travel inside frames on these paths, so they
//! are not bounded by [`MAX_FRAME`].
//! Responses (worker → node): `Ok` (payload bytes) and `Err` (u8 code,
//! u16 LE skill-code length, skill code UTF-8, message UTF-8).
//!
//! Encoding and decoding are pure functions over bytes so they can be
//! tested and fuzzed without sockets; decoding never panics.

use thiserror::Error;

/// Largest frame accepted or sent, counted after the length prefix. Both
/// sides refuse anything bigger before allocating for it.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Bytes of the header after the length prefix: request id + kind.
pub const HEADER: usize = 8 + 1;

/// Largest payload a frame can carry.
pub const MAX_PAYLOAD: usize = MAX_FRAME - HEADER;

/// Longest operation name, bounded by its u16 length field.
pub const MAX_OP_LEN: usize = u16::MAX as usize;

/// Request id of the worker's unsolicited readiness frame.
pub const HELLO_ID: u64 = 0;

/// Frame kind byte values. Requests are below 0x80, responses at or above.
mod kind {
    pub const INVOKE: u8 = 0x01;
    pub const SNAPSHOT: u8 = 0x02;
    pub const RESTORE: u8 = 0x03;
    pub const HEALTH: u8 = 0x04;
    pub const SHUTDOWN: u8 = 0x05;
    pub const ATTACH_SEGMENT: u8 = 0x06;
    pub const SNAPSHOT_TO_SEGMENT: u8 = 0x07;
    pub const RESTORE_FROM_SEGMENT: u8 = 0x08;
    pub const JOURNAL_SINCE: u8 = 0x09;
    pub const PROBE_SNAPSHOT: u8 = 0x0A;
    pub const OK: u8 = 0x80;
    pub const ERR: u8 = 0x81;
}

/// A request from the node to a worker, borrowing its bytes from the frame
/// (decode) or from the caller (encode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Call the skill's `handle(op, input)`.
    Invoke {
        /// Operation name, at most [`MAX_OP_LEN`] bytes.
        op: &'a str,
        /// Opaque input bytes.
        input: &'a [u8],
    },
    /// Ask the skill for `snapshot()`; the `Ok` payload is [`encode_state`].
    Snapshot,
    /// Hand the skill a state for `restore(state)`.
    Restore {
        /// State schema version.
        schema: u32,
        /// State bytes.
        data: &'a [u8],
    },
    /// Ask the skill for `health()`.
    Health,
    /// Ask the worker to answer and exit.
    Shutdown,
    /// Use the state segment whose memfd rides on this frame's first byte
    /// (SCM_RIGHTS) from now on, replacing any segment attached before.
    AttachSegment,
    /// Snapshot the skill and publish the state into the attached segment;
    /// the `Ok` payload is a [`SegmentWrite`].
    SnapshotToSegment,
    /// Restore the skill from `generation` of the attached segment (the
    /// current state or the one before it), waiting up to `wait_ms` for a
    /// writer in another process to publish it.
    RestoreFromSegment {
        /// The generation to restore.
        generation: u64,
        /// How long to wait for that generation to be published.
        wait_ms: u32,
    },
    /// Send the calls the instance ran `Ok` since its state was
    /// `generation` of the segment, from the `from`-th on, as many as fit
    /// in one frame; the `Ok` payload is a [`JournalChunk`]. Refused when
    /// the instance's state is not that generation plus its journal (it
    /// published or restored another one since, or the journal overflowed).
    JournalSince {
        /// The generation the calls follow.
        generation: u64,
        /// Index of the first call wanted.
        from: u32,
    },
    /// Run the skill's `snapshot()` and discard the state (a check that the
    /// version can still serialise what it holds); the `Ok` payload is the
    /// state's length, u64 LE.
    ProbeSnapshot,
}

/// Calls a worker ran since a generation, as answered to `JournalSince`:
/// `u32 LE` calls in its journal in all, `u32 LE` calls in this chunk, then
/// per call `u16 LE` op length, op, `u32 LE` input length, input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalChunk<'a> {
    /// Calls in the worker's journal in all.
    pub total: u32,
    /// The calls of this chunk, in the order they ran.
    pub calls: Vec<(&'a str, &'a [u8])>,
}

impl<'a> JournalChunk<'a> {
    /// Bytes one call takes in a chunk.
    pub fn call_len(op: &str, input: &[u8]) -> usize {
        2 + op.len() + 4 + input.len()
    }

    /// Starts a chunk's payload in `out`; calls are appended with
    /// [`JournalChunk::push`] and counted with [`JournalChunk::finish`].
    pub fn begin(total: u32, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        start
    }

    /// Appends one call (op at most [`MAX_OP_LEN`], input below 4 GiB:
    /// both hold for any call that came in a frame).
    pub fn push(op: &str, input: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(op.len() as u16).to_le_bytes());
        out.extend_from_slice(op.as_bytes());
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        out.extend_from_slice(input);
    }

    /// Writes the number of calls appended since `begin` returned `start`.
    pub fn finish(start: usize, count: u32, out: &mut [u8]) {
        if let Some(field) = out.get_mut(start + 4..start + 8) {
            field.copy_from_slice(&count.to_le_bytes());
        }
    }

    /// Decodes a chunk; never panics.
    pub fn decode(payload: &'a [u8]) -> Result<Self, FrameError> {
        let (total, rest) = take_u32(payload, "journal total")?;
        let (count, mut rest) = take_u32(rest, "journal chunk count")?;
        let mut calls = Vec::with_capacity((count as usize).min(rest.len() / 6 + 1));
        for _ in 0..count {
            let (op_len, tail) = take_u16(rest, "journal op length")?;
            let (op, tail) =
                tail.split_at_checked(usize::from(op_len))
                    .ok_or(FrameError::Truncated {
                        field: "journal op",
                    })?;
            let op = std::str::from_utf8(op).map_err(|_| FrameError::NotUtf8 {
                field: "journal op",
            })?;
            let (input_len, tail) = take_u32(tail, "journal input length")?;
            let (input, tail) =
                tail.split_at_checked(input_len as usize)
                    .ok_or(FrameError::Truncated {
                        field: "journal input",
                    })?;
            calls.push((op, input));
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(FrameError::Truncated {
                field: "journal chunk (trailing bytes)",
            });
        }
        Ok(Self { total, calls })
    }
}

/// What a `SnapshotToSegment` did: published `generation`, or found the
/// segment too small for `len` bytes (the node grows it and asks again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentWrite {
    /// `false`: nothing was published, the state needs `len` bytes.
    pub published: bool,
    /// The generation published (or the current one when not published).
    pub generation: u64,
    /// The state's schema.
    pub schema: u32,
    /// The state's length in bytes.
    pub len: u64,
}

/// Bytes of an encoded [`SegmentWrite`].
pub const SEGMENT_WRITE_LEN: usize = 1 + 8 + 4 + 8;

impl SegmentWrite {
    /// The `Ok` payload of a `SnapshotToSegment`.
    pub fn encode(&self) -> [u8; SEGMENT_WRITE_LEN] {
        let mut out = [0u8; SEGMENT_WRITE_LEN];
        out[0] = u8::from(self.published);
        out[1..9].copy_from_slice(&self.generation.to_le_bytes());
        out[9..13].copy_from_slice(&self.schema.to_le_bytes());
        out[13..21].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Decodes the `Ok` payload of a `SnapshotToSegment`.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let (&published, rest) = payload.split_first().ok_or(FrameError::Truncated {
            field: "segment write status",
        })?;
        let (generation, rest) = take_u64(rest, "segment write generation")?;
        let (schema, rest) = take_u32(rest, "segment write schema")?;
        let (len, rest) = take_u64(rest, "segment write length")?;
        let published = match published {
            0 => false,
            1 => true,
            _ => {
                return Err(FrameError::Truncated {
                    field: "segment write status (0 or 1)",
                });
            }
        };
        empty(
            rest,
            "segment write",
            Self {
                published,
                generation,
                schema,
                len,
            },
        )
    }
}

/// A response from a worker, borrowing its bytes from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// Success; what the payload means depends on the request.
    Ok(&'a [u8]),
    /// Failure with a stable code.
    Err(WorkerFailure<'a>),
}

/// Why a worker could not answer a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure<'a> {
    /// Stable classification.
    pub code: FailureCode,
    /// The skill's own error code when `code` is [`FailureCode::Skill`], else empty.
    pub skill_code: &'a str,
    /// Human-readable detail.
    pub message: &'a str,
}

/// Stable classification of a worker-side failure (one byte on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The skill returned an error of its own.
    Skill,
    /// The call ran past its deadline and was interrupted.
    DeadlineExceeded,
    /// The call hit the store's memory limit.
    MemoryLimit,
    /// The skill trapped; the worker replaced its instance.
    Trap,
    /// The request was malformed or not supported by this worker.
    BadRequest,
    /// The worker could not load or instantiate its skill.
    LoadFailed,
    /// Any other host-side failure inside the worker.
    Internal,
}

impl FailureCode {
    fn to_byte(self) -> u8 {
        match self {
            Self::Skill => 1,
            Self::DeadlineExceeded => 2,
            Self::MemoryLimit => 3,
            Self::Trap => 4,
            Self::BadRequest => 5,
            Self::LoadFailed => 6,
            Self::Internal => 7,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Skill,
            2 => Self::DeadlineExceeded,
            3 => Self::MemoryLimit,
            4 => Self::Trap,
            5 => Self::BadRequest,
            6 => Self::LoadFailed,
            7 => Self::Internal,
            _ => return None,
        })
    }
}

/// A decoded frame: its request id and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T> {
    /// Id matching a response to its request.
    pub id: u64,
    /// The request or response.
    pub body: T,
}

/// Why bytes are not a valid frame, or a frame cannot be encoded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix (or the frame being encoded) is above [`MAX_FRAME`].
    #[error("frame length {length} exceeds the {MAX_FRAME}-byte limit")]
    TooLarge {
        /// The offending length.
        length: usize,
    },
    /// The length prefix is smaller than the fixed header.
    #[error("frame length {length} is shorter than the {HEADER}-byte header")]
    TooShort {
        /// The offending length.
        length: usize,
    },
    /// The kind byte names no request or no response.
    #[error("unknown frame kind 0x{kind:02x}")]
    UnknownKind {
        /// The offending byte.
        kind: u8,
    },
    /// A field inside the payload runs past the end of the frame.
    #[error("{field} is truncated")]
    Truncated {
        /// The field that did not fit.
        field: &'static str,
    },
    /// A kind with no payload carried bytes.
    #[error("{kind} frame carries {extra} unexpected payload bytes")]
    UnexpectedPayload {
        /// The frame kind.
        kind: &'static str,
        /// How many bytes it carried.
        extra: usize,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    NotUtf8 {
        /// The offending field.
        field: &'static str,
    },
    /// An operation name is longer than [`MAX_OP_LEN`].
    #[error("operation name is {length} bytes, the limit is {MAX_OP_LEN}")]
    OpTooLong {
        /// The offending length.
        length: usize,
    },
    /// The error code byte is unknown.
    #[error("unknown failure code {code}")]
    UnknownFailureCode {
        /// The offending byte.
        code: u8,
    },
}

/// Reads the length prefix of a frame: how many bytes follow it. Refuses a
/// length above [`MAX_FRAME`] or below [`HEADER`] before anyone allocates.
pub fn frame_length(prefix: [u8; LENGTH_PREFIX]) -> Result<usize, FrameError> {
    let length = u32::from_le_bytes(prefix) as usize;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge { length });
    }
    if length < HEADER {
        return Err(FrameError::TooShort { length });
    }
    Ok(length)
}

/// Appends a complete request frame (prefix included) to `out`.
pub fn encode_request(id: u64, request: &Request<'_>, out: &mut Vec<u8>) -> Result<(), FrameError> {
    match request {
        Request::Invoke { op, input } => {
            if op.len() > MAX_OP_LEN {
                return Err(FrameError::OpTooLong { length: op.len() });
            }
            let start = begin(id, kind::INVOKE, 2 + op.len() + input.len(), out)?;
            // Bounded by MAX_OP_LEN above.
            out.extend_from_slice(&(op.len() as u16).to_le_bytes());
            out.extend_from_slice(op.as_bytes());
            out.extend_from_slice(input);
            debug_assert_eq!(
                out.len() - start,
                LENGTH_PREFIX + HEADER + 2 + op.len() + input.len()
            );
        }
        Request::Snapshot => {
            begin(id, kind::SNAPSHOT, 0, out)?;
        }
        Request::Restore { schema, data } => {
            begin(id, kind::RESTORE, 4 + data.len(), out)?;
            out.extend_from_slice(&schema.to_le_bytes());
            out.extend_from_slice(data);
        }
        Request::Health => {
            begin(id, kind::HEALTH, 0, out)?;
        }
        Request::Shutdown => {
            begin(id, kind::SHUTDOWN, 0, out)?;
        }
        Request::AttachSegment => {
            begin(id, kind::ATTACH_SEGMENT, 0, out)?;
        }
        Request::SnapshotToSegment => {
            begin(id, kind::SNAPSHOT_TO_SEGMENT, 0, out)?;
        }
        Request::RestoreFromSegment {
            generation,
            wait_ms,
        } => {
            begin(id, kind::RESTORE_FROM_SEGMENT, 12, out)?;
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&wait_ms.to_le_bytes());
        }
        Request::JournalSince { generation, from } => {
            begin(id, kind::JOURNAL_SINCE, 12, out)?;
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&from.to_le_bytes());
        }
        Request::ProbeSnapshot => {
            begin(id, kind::PROBE_SNAPSHOT, 0, out)?;
        }
    }
    Ok(())
}

/// Appends a complete response frame (prefix included) to `out`.
pub fn encode_response(
    id: u64,
    response: &Response<'_>,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    match response {
        Response::Ok(payload) => {
            begin(id, kind::OK, payload.len(), out)?;
            out.extend_from_slice(payload);
        }
        Response::Err(failure) => {
            // Skill codes are short identifiers; cut rather than refuse so an
            // error can always be reported.
            let skill_code = truncate_utf8(failure.skill_code, MAX_OP_LEN);
            let room = MAX_PAYLOAD - 1 - 2 - skill_code.len();
            let message = truncate_utf8(failure.message, room);
            begin(id, kind::ERR, 1 + 2 + skill_code.len() + message.len(), out)?;
            out.push(failure.code.to_byte());
            out.extend_from_slice(&(skill_code.len() as u16).to_le_bytes());
            out.extend_from_slice(skill_code.as_bytes());
            out.extend_from_slice(message.as_bytes());
        }
    }
    Ok(())
}

/// Decodes a request from the bytes after the length prefix.
pub fn decode_request(frame: &[u8]) -> Result<Frame<Request<'_>>, FrameError> {
    let (id, kind, payload) = split_header(frame)?;
    let body = match kind {
        kind::INVOKE => {
            let (op_len, rest) = take_u16(payload, "operation name length")?;
            let op_len = usize::from(op_len);
            if rest.len() < op_len {
                return Err(FrameError::Truncated {
                    field: "operation name",
                });
            }
            let (op, input) = rest.split_at(op_len);
            let op = std::str::from_utf8(op).map_err(|_| FrameError::NotUtf8 {
                field: "operation name",
            })?;
            Request::Invoke { op, input }
        }
        kind::SNAPSHOT => empty(payload, "snapshot", Request::Snapshot)?,
        kind::RESTORE => {
            let (schema, data) = take_u32(payload, "restore schema")?;
            Request::Restore { schema, data }
        }
        kind::HEALTH => empty(payload, "health", Request::Health)?,
        kind::SHUTDOWN => empty(payload, "shutdown", Request::Shutdown)?,
        kind::ATTACH_SEGMENT => empty(payload, "attach-segment", Request::AttachSegment)?,
        kind::SNAPSHOT_TO_SEGMENT => {
            empty(payload, "snapshot-to-segment", Request::SnapshotToSegment)?
        }
        kind::RESTORE_FROM_SEGMENT => {
            let (generation, rest) = take_u64(payload, "restore generation")?;
            let (wait_ms, rest) = take_u32(rest, "restore wait")?;
            empty(
                rest,
                "restore-from-segment",
                Request::RestoreFromSegment {
                    generation,
                    wait_ms,
                },
            )?
        }
        kind::JOURNAL_SINCE => {
            let (generation, rest) = take_u64(payload, "journal generation")?;
            let (from, rest) = take_u32(rest, "journal start")?;
            empty(
                rest,
                "journal-since",
                Request::JournalSince { generation, from },
            )?
        }
        kind::PROBE_SNAPSHOT => empty(payload, "probe-snapshot", Request::ProbeSnapshot)?,
        other => return Err(FrameError::UnknownKind { kind: other }),
    };
    Ok(Frame { id, body })
}

/// Decodes a response from the bytes after the length prefix.
pub fn decode_response(frame: &[u8]) -> Result<Frame<Response<'_>>, FrameError> {
    let (id, kind, payload) = split_header(frame)?;
    let body = match kind {
        kind::OK => Response::Ok(payload),
        kind::ERR => {
            let (&code, rest) = payload.split_first().ok_or(FrameError::Truncated {
                field: "failure code",
            })?;
            let code =
                FailureCode::from_byte(code).ok_or(FrameError::UnknownFailureCode { code })?;
            let (skill_code_len, rest) = take_u16(rest, "skill code length")?;
            let skill_code_len = usize::from(skill_code_len);
            if rest.len() < skill_code_len {
                return Err(FrameError::Truncated {
                    field: "skill code",
                });
            }
            let (skill_code, message) = rest.split_at(skill_code_len);
            let skill_code = std::str::from_utf8(skill_code).map_err(|_| FrameError::NotUtf8 {
                field: "skill code",
            })?;
            let message = std::str::from_utf8(message).map_err(|_| FrameError::NotUtf8 {
                field: "failure message",
            })?;
            Response::Err(WorkerFailure {
                code,
                skill_code,
                message,
            })
        }
        other => return Err(FrameError::UnknownKind { kind: other }),
    };
    Ok(Frame { id, body })
}

/// Encodes a skill state as the payload of a `Snapshot` answer.
pub fn encode_state(schema: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(data);
}

/// Decodes the payload of a `Snapshot` answer into (schema, data).
pub fn decode_state(payload: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    take_u32(payload, "state schema")
}

/// Writes the prefix and header, checking the whole frame fits; returns the
/// offset where the frame starts in `out`.
fn begin(id: u64, kind: u8, payload_len: usize, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let length = HEADER.saturating_add(payload_len);
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge { length });
    }
    let start = out.len();
    out.reserve(LENGTH_PREFIX + length);
    // length ≤ MAX_FRAME < u32::MAX.
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.push(kind);
    Ok(start)
}

fn split_header(frame: &[u8]) -> Result<(u64, u8, &[u8]), FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            length: frame.len(),
        });
    }
    let Some((id, rest)) = frame.split_first_chunk::<8>() else {
        return Err(FrameError::TooShort {
            length: frame.len(),
        });
    };
    let Some((&kind, payload)) = rest.split_first() else {
        return Err(FrameError::TooShort {
            length: frame.len(),
        });
    };
    Ok((u64::from_le_bytes(*id), kind, payload))
}

fn take_u16<'a>(bytes: &'a [u8], field: &'static str) -> Result<(u16, &'a [u8]), FrameError> {
    let (value, rest) = bytes
        .split_first_chunk::<2>()
        .ok_or(FrameError::Truncated { field })?;
    Ok((u16::from_le_bytes(*value), rest))
}

fn take_u64<'a>(bytes: &'a [u8], field: &'static str) -> Result<(u64, &'a [u8]), FrameError> {
    let (value, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or(FrameError::Truncated { field })?;
    Ok((u64::from_le_bytes(*value), rest))
}

fn take_u32<'a>(bytes: &'a [u8], field: &'static str) -> Result<(u32, &'a [u8]), FrameError> {
    let (value, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(FrameError::Truncated { field })?;
    Ok((u32::from_le_bytes(*value), rest))
}

fn empty<T>(payload: &[u8], kind: &'static str, value: T) -> Result<T, FrameError> {
    if payload.is_empty() {
        Ok(value)
    } else {
        Err(FrameError::UnexpectedPayload {
            kind,
            extra: payload.len(),
        })
    }
}

/// The longest prefix of `text` that is at most `max` bytes and ends on a
/// character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip_request(id: u64, request: Request<'_>) {
        let mut out = Vec::new();
        encode_request(id, &request, &mut out).unwrap();
        let length = frame_length(out[..4].try_into().unwrap()).unwrap();
        assert_eq!(length, out.len() - LENGTH_PREFIX);
        let frame = decode_request(&out[LENGTH_PREFIX..]).unwrap();
        assert_eq!(frame, Frame { id, body: request });
    }

    #[test]
    fn every_request_kind_round_trips() {
        roundtrip_request(
            1,
            Request::Invoke {
                op: "add",
                input: b"\x01\x02",
            },
        );
        roundtrip_request(2, Request::Invoke { op: "", input: b"" });
        roundtrip_request(3, Request::Snapshot);
        roundtrip_request(
            4,
            Request::Restore {
                schema: 7,
                data: b"state",
            },
        );
        roundtrip_request(5, Request::Health);
        roundtrip_request(u64::MAX, Request::Shutdown);
        roundtrip_request(6, Request::AttachSegment);
        roundtrip_request(7, Request::SnapshotToSegment);
        roundtrip_request(
            8,
            Request::RestoreFromSegment {
                generation: u64::MAX - 1,
                wait_ms: 250,
            },
        );
    }

    #[test]
    fn journal_requests_and_chunks_round_trip() {
        roundtrip_request(
            9,
            Request::JournalSince {
                generation: 7,
                from: 3,
            },
        );
        roundtrip_request(10, Request::ProbeSnapshot);
        let mut out = vec![0xAA];
        let start = JournalChunk::begin(5, &mut out);
        JournalChunk::push("add", b"1", &mut out);
        JournalChunk::push("", b"", &mut out);
        JournalChunk::finish(start, 2, &mut out);
        let chunk = JournalChunk::decode(&out[1..]).unwrap();
        assert_eq!(chunk.total, 5);
        assert_eq!(chunk.calls, vec![("add", &b"1"[..]), ("", &b""[..])]);
        assert_eq!(
            out.len() - 1,
            8 + JournalChunk::call_len("add", b"1") + JournalChunk::call_len("", b"")
        );
        for cut in 0..out.len() - 1 {
            assert!(
                JournalChunk::decode(&out[1..1 + cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn segment_write_round_trips_and_refuses_junk() {
        let write = SegmentWrite {
            published: true,
            generation: 42,
            schema: 2,
            len: 64 << 20,
        };
        assert_eq!(SegmentWrite::decode(&write.encode()), Ok(write));
        let mut junk = write.encode();
        junk[0] = 7;
        assert!(SegmentWrite::decode(&junk).is_err());
        assert!(SegmentWrite::decode(&write.encode()[..20]).is_err());
    }

    #[test]
    fn both_response_kinds_round_trip() {
        let mut out = Vec::new();
        encode_response(9, &Response::Ok(b"out"), &mut out).unwrap();
        let failure = WorkerFailure {
            code: FailureCode::Skill,
            skill_code: "not_found",
            message: "no key ü",
        };
        encode_response(10, &Response::Err(failure.clone()), &mut out).unwrap();
        let first = frame_length(out[..4].try_into().unwrap()).unwrap();
        let (a, b) = out.split_at(LENGTH_PREFIX + first);
        assert_eq!(
            decode_response(&a[LENGTH_PREFIX..]).unwrap(),
            Frame {
                id: 9,
                body: Response::Ok(b"out")
            }
        );
        assert_eq!(
            decode_response(&b[LENGTH_PREFIX..]).unwrap(),
            Frame {
                id: 10,
                body: Response::Err(failure)
            }
        );
    }

    #[test]
    fn length_prefix_above_the_limit_is_refused_before_reading() {
        let too_big = u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes();
        assert_eq!(
            frame_length(too_big),
            Err(FrameError::TooLarge {
                length: MAX_FRAME + 1
            })
        );
        assert_eq!(
            frame_length(3u32.to_le_bytes()),
            Err(FrameError::TooShort { length: 3 })
        );
    }

    #[test]
    fn oversized_input_is_refused_at_encode() {
        let input = vec![0u8; MAX_FRAME];
        let mut out = Vec::new();
        let err = encode_request(
            1,
            &Request::Invoke {
                op: "x",
                input: &input,
            },
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(out.is_empty(), "nothing is written for a refused frame");
    }

    #[test]
    fn overlong_op_is_refused_at_encode() {
        let op = "o".repeat(MAX_OP_LEN + 1);
        let err = encode_request(
            1,
            &Request::Invoke {
                op: &op,
                input: b"",
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            FrameError::OpTooLong {
                length: MAX_OP_LEN + 1
            }
        );
    }

    #[test]
    fn malformed_payloads_are_named() {
        let mut frame = 1u64.to_le_bytes().to_vec();
        frame.push(kind::INVOKE);
        frame.extend_from_slice(&5u16.to_le_bytes());
        frame.extend_from_slice(b"ab");
        assert_eq!(
            decode_request(&frame),
            Err(FrameError::Truncated {
                field: "operation name"
            })
        );

        let mut frame = 1u64.to_le_bytes().to_vec();
        frame.push(kind::HEALTH);
        frame.push(0);
        assert_eq!(
            decode_request(&frame),
            Err(FrameError::UnexpectedPayload {
                kind: "health",
                extra: 1
            })
        );

        let mut frame = 1u64.to_le_bytes().to_vec();
        frame.push(0x42);
        assert_eq!(
            decode_request(&frame),
            Err(FrameError::UnknownKind { kind: 0x42 })
        );
        assert_eq!(
            decode_response(&frame),
            Err(FrameError::UnknownKind { kind: 0x42 })
        );

        let mut frame = 1u64.to_le_bytes().to_vec();
        frame.extend_from_slice(&[kind::ERR, 99]);
        assert_eq!(
            decode_response(&frame),
            Err(FrameError::UnknownFailureCode { code: 99 })
        );
    }

    #[test]
    fn state_payload_round_trips() {
        let mut out = Vec::new();
        encode_state(3, b"abc", &mut out);
        assert_eq!(decode_state(&out), Ok((3, &b"abc"[..])));
        assert_eq!(
            decode_state(b"ab"),
            Err(FrameError::Truncated {
                field: "state schema"
            })
        );
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let message = "é".repeat(MAX_FRAME);
        let failure = WorkerFailure {
            code: FailureCode::Trap,
            skill_code: "",
            message: &message,
        };
        let mut out = Vec::new();
        encode_response(1, &Response::Err(failure), &mut out).unwrap();
        assert!(out.len() - LENGTH_PREFIX <= MAX_FRAME);
        let Response::Err(decoded) = decode_response(&out[LENGTH_PREFIX..]).unwrap().body else {
            panic!("expected an error frame");
        };
        assert!(decoded.message.chars().all(|c| c == 'é'));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = decode_state(&bytes);
            if let Some(prefix) = bytes.first_chunk::<4>() {
                let _ = frame_length(*prefix);
            }
        }

        #[test]
        fn invoke_round_trips(id in any::<u64>(), op in "\\PC{0,40}", input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            encode_request(id, &Request::Invoke { op: &op, input: &input }, &mut out).unwrap();
            let frame = decode_request(&out[LENGTH_PREFIX..]).unwrap();
            prop_assert_eq!(frame, Frame { id, body: Request::Invoke { op: &op, input: &input } });
        }

        #[test]
        fn decoding_a_mutated_valid_frame_never_panics(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut out = Vec::new();
            encode_response(5, &Response::Err(WorkerFailure { code: FailureCode::Skill, skill_code: "c", message: "m" }), &mut out).unwrap();
            let at = index.index(out.len() - LENGTH_PREFIX) + LENGTH_PREFIX;
            out[at] = byte;
            let _ = decode_response(&out[LENGTH_PREFIX..]);
            let _ = decode_request(&out[LENGTH_PREFIX..]);
        }
    }
}
