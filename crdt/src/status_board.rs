//! The status board: what every node reports about its packages, replicated
//! last-writer-wins per node, outside automerge.
//!
//! A node's status is one record `(node id, seq, package → status)`. A
//! record with a higher `seq` replaces a lower one; only the node itself
//! raises its `seq`. A node that meets a record for its own id that it did
//! not write (from its life before a restart without its disk, or forged)
//! re-publishes its own status above it.
//!
//! Why not automerge (docs/MESH.md, "Status board"): a status has one writer
//! and only its latest value matters, while automerge keeps and replays every
//! change. With statuses in automerge every node applied every node's every
//! status change (about 9·N² change applications per release pair) and the
//! status history grew without bound.
//!
//! This module is the board and its merge rule; [`crate::peer`] decides when
//! records travel.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

use prost::Message as _;

use crate::arbitration::FailureReport;
use crate::manifest::PackageName;
use crate::proto::v1 as wire;
use crate::signing::digest;
use crate::status::{MAX_NODE_ID_BYTES, PackageStatus, StatusTable, valid_node_id};

/// Packages one node's record may list.
pub const MAX_PACKAGES_PER_NODE: usize = 256;
/// Bytes of one encoded node record.
pub const MAX_NODE_STATUS_BYTES: usize = 256 * 1024;

/// Bounds of a [`StatusBoard`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusBoardLimits {
    /// Distinct node ids held; records of further nodes are refused.
    pub max_nodes: usize,
    /// Bytes of all encoded records held.
    pub max_bytes: usize,
}

impl Default for StatusBoardLimits {
    fn default() -> Self {
        StatusBoardLimits {
            max_nodes: 4096,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One node's status of every package it reports on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node.
    pub node_id: String,
    /// Its write counter: the higher record wins.
    pub seq: u64,
    /// Package → status.
    pub packages: BTreeMap<PackageName, PackageStatus>,
}

/// Why a record was refused; nothing of it was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusRecordError {
    /// The record is larger than [`MAX_NODE_STATUS_BYTES`].
    #[error("status record of {0} bytes, at most {MAX_NODE_STATUS_BYTES}")]
    TooLarge(usize),
    /// Not a `NodeStatus` message.
    #[error("malformed status record: {0}")]
    Malformed(String),
    /// The node id is empty, too long or contains '/'.
    #[error(
        "status record names a bad node id (empty, over {MAX_NODE_ID_BYTES} bytes or with '/')"
    )]
    BadNodeId,
    /// More packages than [`MAX_PACKAGES_PER_NODE`].
    #[error("status record of {node} lists {count} packages, at most {MAX_PACKAGES_PER_NODE}")]
    TooManyPackages {
        /// The node.
        node: String,
        /// Packages listed.
        count: usize,
    },
    /// A package entry does not parse.
    #[error("status record of {node}: package {package:?}: {reason}")]
    BadPackage {
        /// The node.
        node: String,
        /// The package as sent.
        package: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why this node's own status could not be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusWriteError {
    /// The node's record would exceed a bound.
    #[error(
        "own status record would be {bytes} bytes with {packages} packages (at most {MAX_NODE_STATUS_BYTES} bytes, {MAX_PACKAGES_PER_NODE} packages)"
    )]
    TooLarge {
        /// Encoded size it would have.
        bytes: usize,
        /// Packages it would list.
        packages: usize,
    },
    /// The node's own id is not a valid node id.
    #[error("own node id {0:?} is empty, over {MAX_NODE_ID_BYTES} bytes or contains '/'")]
    BadNodeId(String),
}

/// What [`StatusBoard::merge`] did with a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// Stored: newer than what the board held (or a new node).
    Stored {
        /// The failures it reports differ from the record it replaced (the
        /// quarantine must be derived again).
        failures_changed: bool,
    },
    /// Not newer than the board's record; nothing changed.
    Stale,
    /// A record for this node's own id it did not write: its own record now
    /// has a higher seq and must travel again.
    OwnRefuted,
    /// A new node, but the board is at a bound; nothing changed.
    BoardFull,
}

use crate::status_check::{CheckedRecord, Failure};

/// Where a node's record sits on a board: an index that never changes
/// while the board lives (records are replaced, never removed), so the
/// peer core can keep what each peer holds in a vector by slot instead of
/// a map keyed by node id.
pub type Slot = u32;

/// One node's latest record, kept as it travels (the encoded bytes) plus
/// what the board needs from its content: no decoded copy is kept, so a
/// board of thousands of nodes is a few allocations per node.
#[derive(Clone, Debug)]
struct Entry {
    node_id: Box<str>,
    seq: u64,
    bytes: Vec<u8>,
    /// The board's keyed hash of `bytes` (its key in `by_bytes`).
    fingerprint: u64,
    /// This record's term of the board digest ([`version_term`]).
    term: [u8; 32],
    /// The failures it reports, in package order (usually none).
    failures: Vec<Failure>,
}

/// Node id → that node's latest record, bounded by [`StatusBoardLimits`].
///
/// Records are looked up by node id through a hash map to a [`Slot`]; a
/// second index keeps the slots in node id order for everything that is
/// iterated (the versions list, the save, the table), so no output depends
/// on hash order. That index is brought up to date by
/// [`StatusBoard::sort`] (new nodes come in bursts; sorting once after a
/// burst is cheaper than an ordered insert each); until then iterating
/// sorts a copy.
#[derive(Clone, Debug)]
pub struct StatusBoard {
    own_id: String,
    limits: StatusBoardLimits,
    entries: Vec<Entry>,
    index: HashMap<Box<str>, Slot>,
    /// Keyed 64-bit hash of each held record's bytes → (its slot, its
    /// seq): a relayed copy of a record held here (most of what peers
    /// push) is recognised by hashing the bytes it came in, one lookup
    /// in a table without pointers (see [`StatusBoard::held_exactly`]).
    by_bytes: HashMap<u64, (Slot, u64)>,
    /// The key of that hash (random per board).
    bytes_key: RandomState,
    /// Slots in node id order; slots past its length are not in it yet.
    sorted: Vec<Slot>,
    /// This node's own record, decoded (it is rewritten on every report).
    own: Option<NodeStatus>,
    bytes: usize,
    digest: [u8; 32],
}

impl NodeStatus {
    /// The encoded `NodeStatus` (mesh.proto).
    pub fn encode(&self) -> Vec<u8> {
        wire::NodeStatus {
            node_id: self.node_id.clone(),
            seq: self.seq,
            packages: self
                .packages
                .iter()
                .map(|(package, status)| wire::PackageStatusEntry {
                    package: package.to_string(),
                    status: Some(status.to_wire()),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Decodes and validates a record.
    pub fn decode(bytes: &[u8]) -> Result<NodeStatus, StatusRecordError> {
        if bytes.len() > MAX_NODE_STATUS_BYTES {
            return Err(StatusRecordError::TooLarge(bytes.len()));
        }
        let record = wire::NodeStatus::decode(bytes)
            .map_err(|err| StatusRecordError::Malformed(err.to_string()))?;
        if !valid_node_id(&record.node_id) {
            return Err(StatusRecordError::BadNodeId);
        }
        if record.packages.len() > MAX_PACKAGES_PER_NODE {
            return Err(StatusRecordError::TooManyPackages {
                node: record.node_id,
                count: record.packages.len(),
            });
        }
        let mut packages = BTreeMap::new();
        for mut entry in record.packages {
            let bad = |reason: String| StatusRecordError::BadPackage {
                node: record.node_id.clone(),
                package: entry.package.clone(),
                reason,
            };
            let package: PackageName =
                entry.package.parse().map_err(|err| bad(format!("{err}")))?;
            let status = entry
                .status
                .take()
                .ok_or_else(|| bad("no status".to_string()))
                .and_then(|status| PackageStatus::from_wire(status).map_err(bad))?;
            if packages.insert(package, status).is_some() {
                return Err(bad("listed twice".to_string()));
            }
        }
        Ok(NodeStatus {
            node_id: record.node_id,
            seq: record.seq,
            packages,
        })
    }

    /// (package, failed version, intent clock) of every failure reported,
    /// in package order: what the quarantine is derived from.
    fn failures(&self) -> Vec<Failure> {
        self.packages
            .iter()
            .filter_map(|(package, status)| {
                status
                    .failed()
                    .map(|version| (package.clone(), version.clone(), status.known_intent_clock))
            })
            .collect()
    }
}

/// (node id, seq) of an encoded record, without decoding its packages:
/// a walk over the top-level fields that skips every other one by its
/// length, taking the last value of a repeated field as protobuf decoding
/// does. Allocates nothing, so a record already held costs a few
/// comparisons.
pub fn record_header(bytes: &[u8]) -> Result<(&str, u64), StatusRecordError> {
    use prost::encoding::decode_varint;
    if bytes.len() > MAX_NODE_STATUS_BYTES {
        return Err(StatusRecordError::TooLarge(bytes.len()));
    }
    let malformed = |what: &str| StatusRecordError::Malformed(what.to_string());
    let mut buf = bytes;
    let mut node_id = "";
    let mut seq = 0;
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).map_err(|e| malformed(&e.to_string()))?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let value = decode_varint(&mut buf).map_err(|e| malformed(&e.to_string()))?;
                if field == 2 {
                    seq = value;
                }
            }
            2 => {
                let len = decode_varint(&mut buf).map_err(|e| malformed(&e.to_string()))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= buf.len())
                    .ok_or_else(|| malformed("a field runs past the record"))?;
                let (value, rest) = buf.split_at(len);
                if field == 1 {
                    node_id = std::str::from_utf8(value)
                        .map_err(|_| malformed("node id is not UTF-8"))?;
                }
                buf = rest;
            }
            1 if buf.len() >= 8 => buf = &buf[8..],
            5 if buf.len() >= 4 => buf = &buf[4..],
            _ => return Err(malformed("bad wire type or truncated field")),
        }
    }
    Ok((node_id, seq))
}

/// The board digest's term for one record.
fn version_term(node_id: &str, seq: u64) -> [u8; 32] {
    let mut input = Vec::with_capacity(node_id.len() + 10);
    // Length-prefixed, so (id, seq) pairs cannot collide by concatenation.
    input.extend_from_slice(&(node_id.len() as u16).to_be_bytes());
    input.extend_from_slice(node_id.as_bytes());
    input.extend_from_slice(&seq.to_be_bytes());
    digest(&input)
}

fn xor_into(acc: &mut [u8; 32], term: &[u8; 32]) {
    for (a, t) in acc.iter_mut().zip(term) {
        *a ^= t;
    }
}

impl StatusBoard {
    /// An empty board of the node `own_id`.
    pub fn new(own_id: impl Into<String>, limits: StatusBoardLimits) -> StatusBoard {
        StatusBoard {
            own_id: own_id.into(),
            limits,
            entries: Vec::new(),
            index: HashMap::new(),
            by_bytes: HashMap::new(),
            bytes_key: RandomState::new(),
            sorted: Vec::new(),
            own: None,
            bytes: 0,
            digest: [0; 32],
        }
    }

    fn own_or_empty(&self) -> NodeStatus {
        self.own.clone().unwrap_or_else(|| NodeStatus {
            node_id: self.own_id.clone(),
            seq: 0,
            packages: BTreeMap::new(),
        })
    }

    /// Sets this node's status of `package` (a new record, seq + 1).
    pub fn report(
        &mut self,
        package: PackageName,
        status: PackageStatus,
    ) -> Result<(), StatusWriteError> {
        if !valid_node_id(&self.own_id) {
            return Err(StatusWriteError::BadNodeId(self.own_id.clone()));
        }
        let mut record = self.own_or_empty();
        record.seq = record.seq.saturating_add(1);
        record.packages.insert(package, status);
        let bytes = record.encode();
        if bytes.len() > MAX_NODE_STATUS_BYTES || record.packages.len() > MAX_PACKAGES_PER_NODE {
            return Err(StatusWriteError::TooLarge {
                bytes: bytes.len(),
                packages: record.packages.len(),
            });
        }
        self.put_own(record, bytes);
        Ok(())
    }

    /// (slot, seq) of the record held here whose bytes are exactly
    /// `bytes`, if any. Found by a keyed 64-bit hash of the bytes: two
    /// different records with the same hash (2⁻⁶⁴ for a pair, and the key
    /// is random per board and never sent, so a peer cannot aim for it)
    /// would count as the held one, i.e. the later would be ignored here
    /// like a relayed copy.
    pub fn held_exactly(&self, bytes: &[u8]) -> Option<(Slot, u64)> {
        self.by_bytes.get(&self.bytes_key.hash_one(bytes)).copied()
    }

    /// The slot of a node's record, if the board holds one.
    pub fn slot(&self, node_id: &str) -> Option<Slot> {
        self.index.get(node_id).copied()
    }

    /// Slots of every record, in node id order.
    pub fn slots(&self) -> Vec<Slot> {
        self.ordered().into_owned()
    }

    /// Brings the node id order up to date with the nodes added since.
    pub fn sort(&mut self) {
        if self.sorted.len() == self.entries.len() {
            return;
        }
        self.sorted = Self::sorted_slots(&self.entries);
    }

    fn sorted_slots(entries: &[Entry]) -> Vec<Slot> {
        let mut slots: Vec<Slot> = (0..entries.len() as Slot).collect();
        slots.sort_unstable_by(|a, b| {
            entries[*a as usize]
                .node_id
                .cmp(&entries[*b as usize].node_id)
        });
        slots
    }

    /// Slots in node id order: the index if it is up to date, else a
    /// sorted copy.
    fn ordered(&self) -> Cow<'_, [Slot]> {
        if self.sorted.len() == self.entries.len() {
            Cow::Borrowed(&self.sorted)
        } else {
            Cow::Owned(Self::sorted_slots(&self.entries))
        }
    }

    /// (node id, seq, encoded record) in `slot`.
    pub fn at(&self, slot: Slot) -> Option<(&str, u64, &[u8])> {
        self.entries
            .get(slot as usize)
            .map(|e| (&*e.node_id, e.seq, e.bytes.as_slice()))
    }

    /// The seq of the record in `slot`.
    pub fn seq_at(&self, slot: Slot) -> Option<u64> {
        self.entries.get(slot as usize).map(|e| e.seq)
    }

    /// Whether a record (node id, seq, bytes) would change the board if
    /// merged: cheap, from [`record_header`], before decoding the record.
    pub fn would_take(&self, node_id: &str, seq: u64, bytes: &[u8]) -> bool {
        self.would_take_at(self.slot(node_id), node_id, seq, bytes)
    }

    /// [`StatusBoard::would_take`] with the node's slot already looked up.
    pub fn would_take_at(&self, slot: Option<Slot>, node_id: &str, seq: u64, bytes: &[u8]) -> bool {
        match slot.and_then(|slot| self.entries.get(slot as usize)) {
            None => true,
            Some(held) if node_id == self.own_id => seq >= held.seq && held.bytes != bytes,
            // Equal seqs with different bytes come only from a forgery or a
            // reset node; the larger encoding wins so every node keeps the
            // same one.
            Some(held) => seq > held.seq || (seq == held.seq && bytes > held.bytes.as_slice()),
        }
    }

    /// Merges a record received from a peer. Invalid bytes change nothing.
    pub fn merge(&mut self, bytes: &[u8]) -> Result<Merged, StatusRecordError> {
        let record = NodeStatus::decode(bytes)?;
        Ok(self.merge_decoded(record, bytes))
    }

    /// Merges a record already decoded from `bytes`.
    pub fn merge_decoded(&mut self, record: NodeStatus, bytes: &[u8]) -> Merged {
        if record.node_id == self.own_id {
            return self.refute(&record, bytes);
        }
        let failures = record.failures();
        self.merge_other(&record.node_id, record.seq, bytes, failures)
    }

    /// Merges a record read by [`crate::status_check::check_record`] from
    /// `bytes` (what [`StatusBoard::merge_decoded`] does, without the
    /// decoded record; a record of this node's own id is decoded for the
    /// refutation).
    pub fn merge_checked(&mut self, record: CheckedRecord<'_>, bytes: &[u8]) -> Merged {
        if record.node_id == self.own_id {
            return match NodeStatus::decode(bytes) {
                Ok(decoded) => self.refute(&decoded, bytes),
                // Unreachable for a checked record; nothing is applied.
                Err(_) => Merged::Stale,
            };
        }
        self.merge_other(record.node_id, record.seq, bytes, record.failures)
    }

    /// Merges a valid record of another node than this one.
    fn merge_other(
        &mut self,
        node_id: &str,
        seq: u64,
        bytes: &[u8],
        failures: Vec<Failure>,
    ) -> Merged {
        let slot = self.slot(node_id);
        if !self.would_take_at(slot, node_id, seq, bytes) {
            return Merged::Stale;
        }
        match slot.and_then(|slot| self.entries.get(slot as usize)) {
            Some(held) => {
                let failures_changed = held.failures != failures;
                if self.bytes - held.bytes.len() + bytes.len() > self.limits.max_bytes {
                    return Merged::BoardFull;
                }
                self.put_at(slot, node_id, seq, bytes.to_vec(), failures);
                Merged::Stored { failures_changed }
            }
            None => {
                if self.entries.len() >= self.limits.max_nodes
                    || self.bytes + bytes.len() > self.limits.max_bytes
                {
                    return Merged::BoardFull;
                }
                let failures_changed = !failures.is_empty();
                self.put_at(slot, node_id, seq, bytes.to_vec(), failures);
                Merged::Stored { failures_changed }
            }
        }
    }

    /// A record for this node's own id: kept out, and answered by the node's
    /// own record above it, unless it is exactly the node's own record.
    fn refute(&mut self, record: &NodeStatus, bytes: &[u8]) -> Merged {
        if !self.would_take(&record.node_id, record.seq, bytes) {
            return Merged::Stale;
        }
        let mut own = self.own_or_empty();
        // At u64::MAX a forged record cannot be out-counted (docs/MESH.md,
        // "Limits": statuses are unsigned).
        own.seq = record.seq.saturating_add(1);
        let encoded = own.encode();
        self.put_own(own, encoded);
        Merged::OwnRefuted
    }

    /// Loads a saved board (`StatusBoardSave`) into this empty one, at
    /// start-up: this node's own record is taken as its own (its seq goes
    /// on from there). Invalid records are skipped and counted.
    pub fn load(&mut self, bytes: &[u8]) -> Result<usize, StatusRecordError> {
        let save = wire::StatusBoardSave::decode(bytes)
            .map_err(|err| StatusRecordError::Malformed(err.to_string()))?;
        let mut skipped = 0;
        for record_bytes in save.records {
            match NodeStatus::decode(&record_bytes) {
                Ok(record) if record.node_id == self.own_id => {
                    self.put_own(record, record_bytes);
                }
                Ok(record) => {
                    if !matches!(
                        self.merge_decoded(record, &record_bytes),
                        Merged::Stored { .. }
                    ) {
                        skipped += 1;
                    }
                }
                Err(_) => skipped += 1,
            }
        }
        Ok(skipped)
    }

    /// The whole board as a `StatusBoardSave` (for the node's disk), in
    /// node id order: written straight from the records held, one buffer.
    pub fn save(&self) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        // `repeated bytes records = 1`.
        let len: usize = self
            .entries
            .iter()
            .map(|e| 1 + encoded_len_varint(e.bytes.len() as u64) + e.bytes.len())
            .sum();
        let mut out = Vec::with_capacity(len);
        for slot in self.ordered().iter() {
            let Some(entry) = self.entries.get(*slot as usize) else {
                continue;
            };
            encode_key(1, WireType::LengthDelimited, &mut out);
            encode_varint(entry.bytes.len() as u64, &mut out);
            out.extend_from_slice(&entry.bytes);
        }
        out
    }

    fn put_own(&mut self, record: NodeStatus, bytes: Vec<u8>) {
        let failures = record.failures();
        let slot = self.slot(&record.node_id);
        self.put_at(slot, &record.node_id, record.seq, bytes, failures);
        self.own = Some(record);
    }

    /// Stores a record of `node_id`, whose slot (if it has one) is `slot`.
    fn put_at(
        &mut self,
        slot: Option<Slot>,
        node_id: &str,
        seq: u64,
        bytes: Vec<u8>,
        failures: Vec<Failure>,
    ) {
        let term = version_term(node_id, seq);
        xor_into(&mut self.digest, &term);
        self.bytes += bytes.len();
        let fingerprint = self.bytes_key.hash_one(bytes.as_slice());
        match slot.filter(|slot| (*slot as usize) < self.entries.len()) {
            Some(slot) => {
                let entry = &mut self.entries[slot as usize];
                if self
                    .by_bytes
                    .get(&entry.fingerprint)
                    .is_some_and(|(s, _)| *s == slot)
                {
                    self.by_bytes.remove(&entry.fingerprint);
                }
                self.by_bytes.insert(fingerprint, (slot, seq));
                self.bytes -= entry.bytes.len();
                xor_into(&mut self.digest, &entry.term);
                entry.seq = seq;
                entry.bytes = bytes;
                entry.fingerprint = fingerprint;
                entry.term = term;
                entry.failures = failures;
            }
            None => {
                let slot = self.entries.len() as Slot;
                self.entries.push(Entry {
                    node_id: node_id.into(),
                    seq,
                    bytes,
                    fingerprint,
                    term,
                    failures,
                });
                self.index.insert(node_id.into(), slot);
                self.by_bytes.insert(fingerprint, (slot, seq));
            }
        }
    }

    /// This node's id.
    pub fn own_id(&self) -> &str {
        &self.own_id
    }

    /// A node's record, decoded.
    pub fn get(&self, node_id: &str) -> Option<NodeStatus> {
        if node_id == self.own_id {
            return self.own.clone();
        }
        self.record_bytes(node_id)
            .and_then(|bytes| NodeStatus::decode(bytes).ok())
    }

    /// A node's record as encoded (what travels).
    pub fn record_bytes(&self, node_id: &str) -> Option<&[u8]> {
        self.record(node_id).map(|(_, bytes)| bytes)
    }

    /// A node's seq and encoded record, in one lookup.
    pub fn record(&self, node_id: &str) -> Option<(u64, &[u8])> {
        self.slot(node_id)
            .and_then(|slot| self.at(slot))
            .map(|(_, seq, bytes)| (seq, bytes))
    }

    /// The seq held for a node.
    pub fn seq(&self, node_id: &str) -> Option<u64> {
        self.slot(node_id).and_then(|slot| self.seq_at(slot))
    }

    /// Every (node id, seq) held, in node id order.
    pub fn versions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.slots()
            .into_iter()
            .filter_map(|slot| self.entries.get(slot as usize))
            .map(|e| (&*e.node_id, e.seq))
    }

    /// XOR over the board of sha256(id length, id, seq): equal boards have
    /// equal digests; kept up to date on every change.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Nodes held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no node is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of all encoded records held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The board's bounds.
    pub fn limits(&self) -> &StatusBoardLimits {
        &self.limits
    }

    /// Every failure the records report, in node id order, for
    /// [`crate::arbitration::derive_quarantine`] (kept per record when it is
    /// merged, so nothing is decoded here).
    pub fn failure_reports(&self) -> impl Iterator<Item = FailureReport<'_, PackageName>> {
        self.slots()
            .into_iter()
            .filter_map(|slot| self.entries.get(slot as usize))
            .flat_map(|e| {
                e.failures
                    .iter()
                    .map(|(package, version, clock)| FailureReport {
                        node: &e.node_id,
                        package,
                        version,
                        known_intent_clock: *clock,
                    })
            })
    }

    /// This node's own failures (package, version, intent clock).
    pub fn own_failures(&self) -> &[(PackageName, semver::Version, u64)] {
        self.slot(&self.own_id)
            .and_then(|slot| self.entries.get(slot as usize))
            .map_or(&[], |e| e.failures.as_slice())
    }

    /// Every node's package statuses, in node id order (decoded here).
    pub fn statuses(&self) -> impl Iterator<Item = (&str, BTreeMap<PackageName, PackageStatus>)> {
        self.slots()
            .into_iter()
            .filter_map(|slot| self.entries.get(slot as usize))
            .filter_map(|e| {
                let packages = if *e.node_id == *self.own_id {
                    self.own.as_ref().map(|own| own.packages.clone())
                } else {
                    NodeStatus::decode(&e.bytes).ok().map(|r| r.packages)
                };
                packages.map(|packages| (&*e.node_id, packages))
            })
    }

    /// Node id → package → status (decoded).
    pub fn table(&self) -> StatusTable {
        self.statuses()
            .map(|(node, packages)| (node.to_string(), packages))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release_state::{Health, ReleaseState};
    use proptest::prelude::*;
    use semver::Version;

    fn package(n: u8) -> PackageName {
        format!("com.example.p{n}").parse().unwrap()
    }

    fn status(state: ReleaseState, minor: u64) -> PackageStatus {
        PackageStatus {
            state,
            version: Some(Version::new(1, minor, 0)),
            running: None,
            failed_version: None,
            health: Health::Unknown,
            updated_at_ms: 0,
            blobs_held: vec![],
            known_intent_clock: 0,
            detail: String::new(),
        }
    }

    fn board(id: &str) -> StatusBoard {
        StatusBoard::new(id, StatusBoardLimits::default())
    }

    #[test]
    fn exactly_the_records_held_are_recognised_by_their_bytes() {
        let mut a = board("a");
        a.report(package(1), status(ReleaseState::Pending, 0))
            .unwrap();
        let first = a.record_bytes("a").unwrap().to_vec();
        a.report(package(1), status(ReleaseState::Active, 0))
            .unwrap();
        let second = a.record_bytes("a").unwrap().to_vec();
        // The own record, as written.
        assert_eq!(a.held_exactly(&second), Some((a.slot("a").unwrap(), 2)));
        assert_eq!(a.held_exactly(&first), None);
        let mut b = board("b");
        assert_eq!(b.held_exactly(&first), None);
        b.merge(&first).unwrap();
        let slot = b.slot("a").unwrap();
        assert_eq!(b.held_exactly(&first), Some((slot, 1)));
        // Replaced: the old bytes are no longer held, the new ones are.
        b.merge(&second).unwrap();
        assert_eq!(b.held_exactly(&first), None);
        assert_eq!(b.held_exactly(&second), Some((slot, 2)));
        let mut longer = second.clone();
        longer.push(0);
        assert_eq!(b.held_exactly(&longer), None);
        assert_eq!(b.held_exactly(&[]), None);
    }

    #[test]
    fn a_newer_record_replaces_an_older_one_and_not_the_reverse() {
        let mut a = board("a");
        a.report(package(1), status(ReleaseState::Pending, 0))
            .unwrap();
        let first = a.record_bytes("a").unwrap().to_vec();
        a.report(package(1), status(ReleaseState::Active, 0))
            .unwrap();
        let second = a.record_bytes("a").unwrap().to_vec();
        let mut b = board("b");
        assert_eq!(
            b.merge(&second).unwrap(),
            Merged::Stored {
                failures_changed: false
            }
        );
        assert_eq!(b.merge(&first).unwrap(), Merged::Stale);
        assert_eq!(b.merge(&second).unwrap(), Merged::Stale);
        assert_eq!(
            b.get("a").unwrap().packages[&package(1)].state,
            ReleaseState::Active
        );
        assert_eq!(b.seq("a"), Some(2));
    }

    #[test]
    fn a_record_for_the_own_id_is_refuted_above_it() {
        let mut old_life = board("a");
        for _ in 0..5 {
            old_life
                .report(package(1), status(ReleaseState::Active, 0))
                .unwrap();
        }
        let stale = old_life.record_bytes("a").unwrap().to_vec();
        let mut a = board("a");
        a.report(package(2), status(ReleaseState::Pending, 0))
            .unwrap();
        assert_eq!(a.merge(&stale).unwrap(), Merged::OwnRefuted);
        let mine = a.get("a").unwrap();
        assert_eq!(mine.seq, 6);
        assert!(mine.packages.contains_key(&package(2)));
        assert!(
            !mine.packages.contains_key(&package(1)),
            "the old life's packages are not adopted"
        );
        // Its own record echoed back changes nothing.
        let echo = a.record_bytes("a").unwrap().to_vec();
        assert_eq!(a.merge(&echo).unwrap(), Merged::Stale);
    }

    #[test]
    fn failures_changed_is_reported_only_when_the_failures_differ() {
        let mut a = board("a");
        a.report(package(1), status(ReleaseState::Pending, 0))
            .unwrap();
        let mut b = board("b");
        assert_eq!(
            b.merge(a.record_bytes("a").unwrap()).unwrap(),
            Merged::Stored {
                failures_changed: false
            }
        );
        a.report(package(1), status(ReleaseState::Failed, 0))
            .unwrap();
        assert_eq!(
            b.merge(a.record_bytes("a").unwrap()).unwrap(),
            Merged::Stored {
                failures_changed: true
            }
        );
        let mut failed = status(ReleaseState::Failed, 0);
        failed.detail = "still".into();
        a.report(package(1), failed).unwrap();
        assert_eq!(
            b.merge(a.record_bytes("a").unwrap()).unwrap(),
            Merged::Stored {
                failures_changed: false
            }
        );
    }

    #[test]
    fn bounds_refuse_new_nodes_and_bad_records_change_nothing() {
        let mut b = StatusBoard::new(
            "b",
            StatusBoardLimits {
                max_nodes: 1,
                max_bytes: 1 << 20,
            },
        );
        let mut one = board("one");
        one.report(package(1), status(ReleaseState::Active, 0))
            .unwrap();
        let mut two = board("two");
        two.report(package(1), status(ReleaseState::Active, 0))
            .unwrap();
        assert!(matches!(
            b.merge(one.record_bytes("one").unwrap()),
            Ok(Merged::Stored { .. })
        ));
        assert_eq!(
            b.merge(two.record_bytes("two").unwrap()).unwrap(),
            Merged::BoardFull
        );
        let digest = b.digest();
        assert!(matches!(
            b.merge(&[0xff; 9]),
            Err(StatusRecordError::Malformed(_))
        ));
        assert!(matches!(
            b.merge(&vec![0; MAX_NODE_STATUS_BYTES + 1]),
            Err(StatusRecordError::TooLarge(_))
        ));
        let bad_id = NodeStatus {
            node_id: "a/b".into(),
            seq: 1,
            packages: BTreeMap::new(),
        };
        assert_eq!(b.merge(&bad_id.encode()), Err(StatusRecordError::BadNodeId));
        let bad_package = wire::NodeStatus {
            node_id: "x".into(),
            seq: 1,
            packages: vec![wire::PackageStatusEntry {
                package: "Not A Package".into(),
                status: Some(status(ReleaseState::Active, 0).to_wire()),
            }],
        };
        assert!(matches!(
            b.merge(&bad_package.encode_to_vec()),
            Err(StatusRecordError::BadPackage { .. })
        ));
        assert_eq!(b.digest(), digest);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn save_and_load_keep_every_record_and_the_own_seq() {
        let mut a = board("a");
        a.report(package(1), status(ReleaseState::Active, 3))
            .unwrap();
        a.report(package(1), status(ReleaseState::Active, 4))
            .unwrap();
        let mut c = board("c");
        c.report(package(2), status(ReleaseState::Failed, 1))
            .unwrap();
        a.merge(c.record_bytes("c").unwrap()).unwrap();
        let mut restarted = board("a");
        assert_eq!(restarted.load(&a.save()).unwrap(), 0);
        assert_eq!(restarted.digest(), a.digest());
        assert_eq!(restarted.table(), a.table());
        restarted
            .report(package(1), status(ReleaseState::Active, 5))
            .unwrap();
        assert_eq!(restarted.seq("a"), Some(3));
        assert!(board("a").load(b"\xff\xff").is_err());
    }

    #[test]
    fn the_header_walk_agrees_with_full_decoding() {
        let mut a = board("node-a");
        for minor in 0..3 {
            a.report(
                package(minor),
                status(ReleaseState::Active, u64::from(minor)),
            )
            .unwrap();
        }
        let bytes = a.record_bytes("node-a").unwrap();
        assert_eq!(record_header(bytes).unwrap(), ("node-a", 3));
        let full = NodeStatus::decode(bytes).unwrap();
        assert_eq!((full.node_id.as_str(), full.seq), ("node-a", 3));
        assert!(record_header(&bytes[..bytes.len() - 1]).is_err());
        assert!(record_header(&[0x0a, 0x05, b'a']).is_err());
        assert!(record_header(&[0x0b]).is_err());
    }

    fn arb_record() -> impl Strategy<Value = (u8, u64, u8, bool)> {
        (0u8..4, 0u64..6, 0u8..3, any::<bool>())
    }

    fn record_bytes((node, seq, minor, failed): (u8, u64, u8, bool)) -> Vec<u8> {
        let mut packages = BTreeMap::new();
        let state = if failed {
            ReleaseState::Failed
        } else {
            ReleaseState::Active
        };
        packages.insert(package(1), status(state, u64::from(minor)));
        NodeStatus {
            node_id: format!("n{node}"),
            seq,
            packages,
        }
        .encode()
    }

    proptest! {
        /// The header walk never panics and, whenever the record decodes,
        /// reads the same (node id, seq) as full decoding.
        #[test]
        fn the_header_walk_matches_prost_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let header = record_header(&bytes);
            if let Ok(record) = wire::NodeStatus::decode(bytes.as_slice()) {
                prop_assert_eq!(header.unwrap(), (record.node_id.as_str(), record.seq));
            }
        }

        /// Merge is order-independent: any delivery order of any records
        /// (duplicates included) leaves every board with the same content
        /// and digest.
        #[test]
        fn merge_order_does_not_matter(records in prop::collection::vec(arb_record(), 1..24), seed in any::<u64>()) {
            let bytes: Vec<Vec<u8>> = records.into_iter().map(record_bytes).collect();
            let mut forward = board("observer");
            for b in &bytes {
                forward.merge(b).unwrap();
            }
            let mut shuffled = bytes.clone();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut other = board("observer");
            for b in shuffled.iter().chain(shuffled.iter()) {
                other.merge(b).unwrap();
            }
            prop_assert_eq!(forward.digest(), other.digest());
            prop_assert_eq!(forward.save(), other.save());
            let mut rebuilt = [0u8; 32];
            for (node, seq) in other.versions() {
                xor_into(&mut rebuilt, &version_term(node, seq));
            }
            prop_assert_eq!(rebuilt, other.digest());
        }
    }
}
