//! The mesh's automerge documents and their schema.
//!
//! Layout (why: docs/MESH.md, "Documents"): one catalog document and one
//! intents document, each a flat root map of string keys to byte scalars
//! (node statuses are not documents: they travel on the
//! [`crate::status_board`]):
//!
//! | document | key | value |
//! |---|---|---|
//! | catalog | `<package>@<version>` | encoded `SignedEnvelope` of the manifest |
//! | intents | `<package>/<intent digest hex>` | encoded `SignedEnvelope` of the intent |
//!
//! Reading a document validates every entry and returns the valid ones with
//! a list of [`RejectedEntry`]; every node rejects the same entries the same
//! way because validation depends only on the document and the trust root.

pub mod catalog;
pub mod intents;
mod store;

pub use store::{LoadError, MeshDocument, ReceiveError, WriteError};

use std::fmt;

use crate::proto::v1 as wire;

/// Which mesh document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocumentId {
    /// Package manifests.
    Catalog,
    /// Release intents.
    Intents,
}

impl DocumentId {
    /// Every document of the mesh, in a fixed order.
    pub fn all() -> impl Iterator<Item = DocumentId> {
        [DocumentId::Catalog, DocumentId::Intents].into_iter()
    }

    /// A file-name-safe name: `catalog`, `intents`.
    pub fn name(self) -> String {
        match self {
            DocumentId::Catalog => "catalog".to_string(),
            DocumentId::Intents => "intents".to_string(),
        }
    }

    /// The wire form.
    pub fn to_wire(self) -> wire::DocumentId {
        let kind = match self {
            DocumentId::Catalog => wire::DocumentKind::Catalog,
            DocumentId::Intents => wire::DocumentKind::Intents,
        };
        wire::DocumentId {
            kind: kind as i32,
            shard: 0,
        }
    }

    /// Parses the wire form; `None` for an unknown or retired kind, or a
    /// non-zero shard.
    pub fn from_wire(id: &wire::DocumentId) -> Option<DocumentId> {
        match wire::DocumentKind::try_from(id.kind).ok()? {
            wire::DocumentKind::Catalog if id.shard == 0 => Some(DocumentId::Catalog),
            wire::DocumentKind::Intents if id.shard == 0 => Some(DocumentId::Intents),
            _ => None,
        }
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Bounds on one document, checked on every write, load and received sync
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentLimits {
    /// Estimated size (saved bytes plus changes since) a document may reach.
    pub max_document_bytes: usize,
    /// Keys in the root map; readers reject entries past this many, in key order.
    pub max_entries: usize,
    /// Bytes of one value.
    pub max_value_bytes: usize,
    /// Bytes of one encoded sync message.
    pub max_sync_message_bytes: usize,
    /// Bytes of changes one sync message may carry.
    pub max_change_bytes_per_message: usize,
}

impl Default for DocumentLimits {
    fn default() -> Self {
        DocumentLimits {
            max_document_bytes: 32 * 1024 * 1024,
            max_entries: 200_000,
            max_value_bytes: 80 * 1024,
            // A peer far behind is sent the whole document in one message
            // (automerge's v2 sync), so a message must be able to carry one.
            max_sync_message_bytes: 33 * 1024 * 1024,
            max_change_bytes_per_message: 32 * 1024 * 1024,
        }
    }
}

/// Results of validating stored values, keyed by the sha256 of the value
/// bytes, so re-reading a document after a change checks only new values'
/// signatures. Each read keeps only the values it saw, so the cache never
/// holds more than one document's entries.
#[derive(Debug)]
pub struct VerifyCache<T> {
    previous: std::collections::BTreeMap<[u8; 32], Result<T, String>>,
    current: std::collections::BTreeMap<[u8; 32], Result<T, String>>,
}

impl<T> Default for VerifyCache<T> {
    fn default() -> Self {
        VerifyCache {
            previous: std::collections::BTreeMap::new(),
            current: std::collections::BTreeMap::new(),
        }
    }
}

impl<T: Clone> VerifyCache<T> {
    /// The result for `bytes`, computed by `verify` unless already known.
    pub fn get_or_verify(
        &mut self,
        bytes: &[u8],
        verify: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        let key = crate::signing::digest(bytes);
        if let Some(result) = self.current.get(&key) {
            return result.clone();
        }
        let result = match self.previous.remove(&key) {
            Some(result) => result,
            None => verify(bytes),
        };
        self.current.insert(key, result.clone());
        result
    }

    /// Ends a read: forgets values the read did not see.
    pub fn finish_read(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

/// An entry every node ignores, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RejectedEntry {
    /// `<document>/<key>`, e.g. `intents/com.example.x/3fa4…`.
    pub path: String,
    /// Why it was rejected.
    pub reason: String,
}

impl RejectedEntry {
    /// A rejection of `key` in `document`.
    pub fn new(document: DocumentId, key: &str, reason: impl Into<String>) -> Self {
        RejectedEntry {
            path: format!("{}/{key}", document.name()),
            reason: reason.into(),
        }
    }
}

/// A stored signed envelope, decoded and verified by `verify` (through
/// `cache`), that must be stored under the key `key_of` names for it.
pub(crate) fn verified_entry<T: Clone, E: fmt::Display>(
    cache: &mut VerifyCache<T>,
    bytes: &[u8],
    key: &str,
    verify: impl FnOnce(wire::SignedEnvelope) -> Result<T, E>,
    key_of: impl FnOnce(&T) -> String,
) -> Result<T, String> {
    use prost::Message as _;
    let value = cache.get_or_verify(bytes, |bytes| {
        wire::SignedEnvelope::decode(bytes)
            .map_err(|err| format!("malformed envelope: {err}"))
            .and_then(|envelope| verify(envelope).map_err(|err| err.to_string()))
    })?;
    let expected = key_of(&value);
    if expected == key {
        Ok(value)
    } else {
        Err(format!("entry is {expected}, stored under another key"))
    }
}

/// Reads every entry of `doc` through `accept`, which validates the entry's
/// (possibly conflicting) values and keeps what is valid; entries past
/// `max_entries` and entries `accept` refuses are reported in `rejected`.
pub(crate) fn read_entries(
    doc: &MeshDocument,
    max_entries: usize,
    rejected: &mut Vec<RejectedEntry>,
    mut accept: impl FnMut(&str, &[Option<Vec<u8>>]) -> Result<(), String>,
) {
    let id = doc.id();
    for (index, (key, values)) in doc.entries().into_iter().enumerate() {
        if index >= max_entries {
            rejected.push(RejectedEntry::new(
                id,
                &key,
                format!("past the document's {max_entries} entry limit"),
            ));
            continue;
        }
        if let Err(reason) = accept(&key, &values) {
            rejected.push(RejectedEntry::new(id, &key, reason));
        }
    }
}

/// Of the conflicting values of one key, the valid one with the lowest
/// `rank` (ties: the first), so every node picks the same one whatever the
/// merge order; if none is valid, why the last one was not.
pub(crate) fn best_value<T, R: Ord>(
    values: &[Option<Vec<u8>>],
    mut check: impl FnMut(&[u8]) -> Result<T, String>,
    rank: impl Fn(&[u8], &T) -> R,
) -> Result<T, String> {
    let mut best: Option<(R, T)> = None;
    let mut last_error = String::from("no value");
    for value in values {
        let Some(bytes) = value else {
            last_error = "value is not a byte scalar".to_string();
            continue;
        };
        match check(bytes) {
            Ok(valid) => {
                let r = rank(bytes, &valid);
                if best.as_ref().is_none_or(|(b, _)| r < *b) {
                    best = Some((r, valid));
                }
            }
            Err(err) => last_error = err,
        }
    }
    best.map(|(_, valid)| valid).ok_or(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_round_trip_through_the_wire_form() {
        let all: Vec<DocumentId> = DocumentId::all().collect();
        assert_eq!(all.len(), 2);
        for id in all {
            assert_eq!(DocumentId::from_wire(&id.to_wire()), Some(id));
        }
        // The retired status documents, a shard on a single document, and an
        // unknown kind name nothing.
        for (kind, shard) in [
            (wire::DocumentKind::Status as i32, 0),
            (wire::DocumentKind::Catalog as i32, 1),
            (99, 0),
        ] {
            assert_eq!(
                DocumentId::from_wire(&wire::DocumentId { kind, shard }),
                None
            );
        }
    }
}
