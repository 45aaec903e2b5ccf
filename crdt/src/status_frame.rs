//! Status exchange frames (mesh.proto `SyncFrame { status }`) read and
//! written without copying their records.
//!
//! A push carries hundreds of records, most of which the receiver already
//! holds (several peers relay each one), so decoding the frame with prost
//! — one allocation and one copy per record — cost more than recognising
//! the records. [`parse_status_frame`] walks the frame and borrows every
//! record and node id from it; [`encode_status_frame`] writes a frame
//! straight from borrowed records. Both agree with prost byte for byte
//! (tests below): the walk takes only frames it reads exactly as prost
//! would and leaves anything unusual (a document field beside the status,
//! groups, bad UTF-8, truncation) to the prost path, which refuses or
//! accepts it as before.

use prost::Message as _;
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint};

use crate::proto::v1 as wire;

/// A `StatusExchange` whose node ids and records borrow from the frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusExchangeRef<'a> {
    /// `StatusPhase` as sent (not checked here).
    pub phase: i32,
    /// The sender's board digest (empty or, if valid, 32 bytes).
    pub digest: &'a [u8],
    /// (node id, seq) of the sender's board, for the versions phases.
    pub versions: Vec<(&'a str, u64)>,
    /// Encoded `NodeStatus` records.
    pub records: Vec<&'a [u8]>,
    /// The sender's document heads (the digest of an anti-entropy round;
    /// decoded, they are few and small).
    pub documents: Vec<wire::DocumentHeads>,
}

impl<'a> StatusExchangeRef<'a> {
    /// A view of a decoded exchange (the prost path).
    pub fn of(exchange: &'a wire::StatusExchange) -> Self {
        StatusExchangeRef {
            phase: exchange.phase,
            digest: &exchange.digest,
            versions: exchange
                .versions
                .iter()
                .map(|v| (v.node_id.as_str(), v.seq))
                .collect(),
            records: exchange.records.iter().map(Vec::as_slice).collect(),
            documents: exchange.documents.clone(),
        }
    }
}

/// One top-level field: (number, its bytes if length-delimited or its
/// value if a varint).
pub(crate) enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

/// The next field of `buf`, or `None` for anything but a varint or a
/// length-delimited field that fits (the caller then leaves the frame to
/// prost).
pub(crate) fn next_field<'a>(buf: &mut &'a [u8]) -> Option<Field<'a>> {
    let key = decode_varint(buf).ok()?;
    // prost refuses keys past u32 and field number 0.
    let number = u32::try_from(key).ok().map(|k| k >> 3).filter(|n| *n > 0)?;
    match key & 7 {
        0 => Some(Field::Varint(number, decode_varint(buf).ok()?)),
        2 => {
            let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
            if len > buf.len() {
                return None;
            }
            let (value, rest) = buf.split_at(len);
            *buf = rest;
            Some(Field::Bytes(number, value))
        }
        _ => None,
    }
}

/// The status exchange of a frame that holds only one (field 3), borrowed;
/// `None` when the frame is anything else or anything prost might read
/// differently: the caller decodes it with prost then.
pub fn parse_status_frame(frame: &[u8]) -> Option<StatusExchangeRef<'_>> {
    let mut buf = frame;
    let mut exchange: Option<StatusExchangeRef<'_>> = None;
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            // Several occurrences of a message field merge, as in prost.
            Field::Bytes(3, status) => {
                merge_exchange(exchange.get_or_insert_with(Default::default), status)?
            }
            _ => return None,
        }
    }
    exchange
}

fn merge_exchange<'a>(exchange: &mut StatusExchangeRef<'a>, mut buf: &'a [u8]) -> Option<()> {
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            // int32 from a varint: prost truncates the same way.
            Field::Varint(1, phase) => exchange.phase = phase as i32,
            Field::Bytes(2, digest) => exchange.digest = digest,
            Field::Bytes(3, version) => exchange.versions.push(parse_version(version)?),
            Field::Bytes(4, record) => exchange.records.push(record),
            // Malformed heads: prost refuses them (the caller then does).
            Field::Bytes(5, heads) => exchange
                .documents
                .push(wire::DocumentHeads::decode(heads).ok()?),
            // A known field with the other wire type: prost refuses it.
            Field::Varint(1..=5, _) | Field::Bytes(1, _) => return None,
            // Unknown fields are skipped, as prost does.
            Field::Varint(..) | Field::Bytes(..) => {}
        }
    }
    Some(())
}

fn parse_version(mut buf: &[u8]) -> Option<(&str, u64)> {
    let mut node_id = "";
    let mut seq = 0;
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            Field::Bytes(1, id) => node_id = std::str::from_utf8(id).ok()?,
            Field::Varint(2, value) => seq = value,
            Field::Varint(1, _) | Field::Bytes(2, _) => return None,
            Field::Varint(..) | Field::Bytes(..) => {}
        }
    }
    Some((node_id, seq))
}

/// Bytes of `SyncFrame { status: StatusExchange { records } }` with phase
/// RECORDS, no digest and no versions: what [`encode_status_frame`] writes.
pub fn records_frame_len<'r>(records: impl Iterator<Item = &'r [u8]>) -> usize {
    let inner = records_len(records);
    1 + encoded_len_varint(inner as u64) + inner
}

fn records_len<'r>(records: impl Iterator<Item = &'r [u8]>) -> usize {
    records
        .map(|r| 1 + encoded_len_varint(r.len() as u64) + r.len())
        .sum()
}

/// Encodes `SyncFrame { status: exchange }` exactly as prost would,
/// copying each record once.
pub fn encode_status_frame(exchange: &StatusExchangeRef<'_>) -> Vec<u8> {
    let versions: Vec<usize> = exchange
        .versions
        .iter()
        .map(|(node_id, seq)| version_len(node_id, *seq))
        .collect();
    let mut inner = 0;
    if exchange.phase != 0 {
        inner += 1 + encoded_len_varint(exchange.phase as i64 as u64);
    }
    if !exchange.digest.is_empty() {
        inner += 1 + encoded_len_varint(exchange.digest.len() as u64) + exchange.digest.len();
    }
    inner += versions
        .iter()
        .map(|len| 1 + encoded_len_varint(*len as u64) + len)
        .sum::<usize>();
    inner += records_len(exchange.records.iter().copied());
    let documents: Vec<usize> = exchange
        .documents
        .iter()
        .map(wire::DocumentHeads::encoded_len)
        .collect();
    inner += documents
        .iter()
        .map(|len| 1 + encoded_len_varint(*len as u64) + len)
        .sum::<usize>();
    let mut out = Vec::with_capacity(1 + encoded_len_varint(inner as u64) + inner);
    encode_key(3, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    if exchange.phase != 0 {
        encode_key(1, WireType::Varint, &mut out);
        // prost writes an int32 as its sign-extended 64-bit varint.
        encode_varint(exchange.phase as i64 as u64, &mut out);
    }
    if !exchange.digest.is_empty() {
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(exchange.digest.len() as u64, &mut out);
        out.extend_from_slice(exchange.digest);
    }
    for ((node_id, seq), len) in exchange.versions.iter().zip(versions) {
        encode_key(3, WireType::LengthDelimited, &mut out);
        encode_varint(len as u64, &mut out);
        if !node_id.is_empty() {
            encode_key(1, WireType::LengthDelimited, &mut out);
            encode_varint(node_id.len() as u64, &mut out);
            out.extend_from_slice(node_id.as_bytes());
        }
        if *seq != 0 {
            encode_key(2, WireType::Varint, &mut out);
            encode_varint(*seq, &mut out);
        }
    }
    for record in &exchange.records {
        encode_key(4, WireType::LengthDelimited, &mut out);
        encode_varint(record.len() as u64, &mut out);
        out.extend_from_slice(record);
    }
    for (heads, len) in exchange.documents.iter().zip(documents) {
        encode_key(5, WireType::LengthDelimited, &mut out);
        encode_varint(len as u64, &mut out);
        heads.encode_raw(&mut out);
    }
    out
}

fn version_len(node_id: &str, seq: u64) -> usize {
    let mut len = 0;
    if !node_id.is_empty() {
        len += 1 + encoded_len_varint(node_id.len() as u64) + node_id.len();
    }
    if seq != 0 {
        len += 1 + encoded_len_varint(seq);
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exchange(
        phase: i32,
        digest: Vec<u8>,
        versions: Vec<(String, u64)>,
        records: Vec<Vec<u8>>,
    ) -> wire::StatusExchange {
        wire::StatusExchange {
            phase,
            digest,
            versions: versions
                .into_iter()
                .map(|(node_id, seq)| wire::StatusVersion { node_id, seq })
                .collect(),
            records,
            documents: Vec::new(),
        }
    }

    fn frame(status: wire::StatusExchange) -> wire::SyncFrame {
        wire::SyncFrame {
            document: None,
            sync_message: Vec::new(),
            status: Some(status),
        }
    }

    #[test]
    fn frames_the_core_sends_round_trip_and_match_prost() {
        let cases = [
            exchange(0, vec![], vec![], vec![b"one".to_vec(), vec![7; 300]]),
            exchange(1, vec![9; 32], vec![], vec![]),
            exchange(
                2,
                vec![1; 32],
                vec![("node-1".into(), 3), ("".into(), 0), ("n".into(), u64::MAX)],
                vec![],
            ),
            exchange(3, vec![], vec![], vec![vec![]]),
            wire::StatusExchange {
                documents: vec![
                    wire::DocumentHeads {
                        document: Some(wire::DocumentId { kind: 1, shard: 0 }),
                        heads: vec![vec![3; 32], vec![4; 32]],
                    },
                    wire::DocumentHeads {
                        document: Some(wire::DocumentId { kind: 2, shard: 0 }),
                        heads: vec![],
                    },
                ],
                ..exchange(1, vec![9; 32], vec![], vec![])
            },
        ];
        for case in cases {
            let prost_bytes = frame(case.clone()).encode_to_vec();
            let ours = encode_status_frame(&StatusExchangeRef::of(&case));
            assert_eq!(ours, prost_bytes);
            assert_eq!(
                parse_status_frame(&prost_bytes),
                Some(StatusExchangeRef::of(&case))
            );
        }
        let records: Vec<&[u8]> = vec![b"ab", &[0; 200]];
        let pushed = encode_status_frame(&StatusExchangeRef {
            records: records.clone(),
            ..Default::default()
        });
        assert_eq!(records_frame_len(records.into_iter()), pushed.len());
    }

    #[test]
    fn anything_else_is_left_to_prost() {
        let document = wire::SyncFrame {
            document: Some(wire::DocumentId { kind: 1, shard: 0 }),
            sync_message: vec![1, 2, 3],
            status: None,
        };
        assert_eq!(parse_status_frame(&document.encode_to_vec()), None);
        let mut both = frame(exchange(0, vec![], vec![], vec![b"r".to_vec()]));
        both.document = Some(wire::DocumentId { kind: 1, shard: 0 });
        assert_eq!(parse_status_frame(&both.encode_to_vec()), None);
        assert_eq!(parse_status_frame(&[]), None);
        assert_eq!(parse_status_frame(&[0x1a, 0x05, 0x22]), None);
        // A node id that is not UTF-8.
        let bad = [0x1a, 0x05, 0x1a, 0x03, 0x0a, 0x01, 0xff];
        assert_eq!(parse_status_frame(&bad), None);
        assert!(wire::SyncFrame::decode(bad.as_slice()).is_err());
    }

    proptest! {
        /// On any bytes the walk either leaves the frame to prost or reads
        /// exactly what prost reads.
        #[test]
        fn the_walk_agrees_with_prost(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            if let Some(ours) = parse_status_frame(&bytes) {
                let decoded = wire::SyncFrame::decode(bytes.as_slice());
                prop_assert!(decoded.is_ok());
                let decoded = decoded.unwrap();
                prop_assert!(decoded.document.is_none() && decoded.sync_message.is_empty());
                let status = decoded.status.unwrap_or_default();
                prop_assert_eq!(ours, StatusExchangeRef::of(&status));
            }
        }

        /// Well-formed exchanges (with unknown fields mixed in) are read by
        /// the walk as prost reads them.
        #[test]
        fn well_formed_exchanges_take_the_walk(
            phase in -2i32..6,
            digest in prop::collection::vec(any::<u8>(), 0..33),
            versions in prop::collection::vec(("[a-z0-9-]{0,12}", any::<u64>()), 0..5),
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..5),
        ) {
            let case = exchange(phase, digest, versions, records);
            let bytes = frame(case.clone()).encode_to_vec();
            prop_assert_eq!(parse_status_frame(&bytes), Some(StatusExchangeRef::of(&case)));
            prop_assert_eq!(encode_status_frame(&StatusExchangeRef::of(&case)), bytes.clone());
            // An unknown field appended inside the exchange is skipped.
            let mut with_unknown = bytes[1..].to_vec();
            let (inner_len, rest) = {
                let mut b = with_unknown.as_slice();
                let len = decode_varint(&mut b).unwrap() as usize;
                (len, b.to_vec())
            };
            let mut inner = rest[..inner_len].to_vec();
            inner.extend_from_slice(&[0x38, 0x05]); // field 7, varint 5
            with_unknown.clear();
            encode_key(3, WireType::LengthDelimited, &mut with_unknown);
            encode_varint(inner.len() as u64, &mut with_unknown);
            with_unknown.extend_from_slice(&inner);
            prop_assert_eq!(parse_status_frame(&with_unknown), Some(StatusExchangeRef::of(&case)));
        }
    }
}
