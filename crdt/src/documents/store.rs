//! One mesh document: an automerge document with bounded sync, bounded
//! writes and typed persistence. Knows nothing about what the values mean;
//! the schema modules beside it do.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc, ScalarValue, Value};

use super::{DocumentId, DocumentLimits};

/// Why a received sync message was refused. The document is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The encoded message is larger than `DocumentLimits::max_sync_message_bytes`.
    #[error("sync message is {size} bytes, at most {max} allowed")]
    MessageTooLarge {
        /// Size received.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes are not an automerge sync message.
    #[error("malformed sync message: {0}")]
    Malformed(String),
    /// The changes it carries exceed `DocumentLimits::max_change_bytes_per_message`.
    #[error("sync message carries {size} bytes of changes, at most {max} allowed")]
    ChangesTooLarge {
        /// Bytes of changes carried.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// Applying the changes would grow the document past `DocumentLimits::max_document_bytes`.
    #[error("document would grow to {would_be} bytes, at most {max} allowed")]
    DocumentFull {
        /// Estimated size after applying.
        would_be: usize,
        /// The bound.
        max: usize,
    },
    /// automerge refused the changes (bad encoding, bad hash, duplicate sequence).
    #[error("changes refused by automerge: {0}")]
    Refused(String),
}

/// Why a local write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The value is larger than `DocumentLimits::max_value_bytes`.
    #[error("value for key {key} is {size} bytes, at most {max} allowed")]
    ValueTooLarge {
        /// The key written.
        key: String,
        /// Value size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The document already holds `DocumentLimits::max_entries` keys.
    #[error("document holds {entries} entries, at most {max} allowed")]
    TooManyEntries {
        /// Entries held.
        entries: usize,
        /// The bound.
        max: usize,
    },
    /// The document is at `DocumentLimits::max_document_bytes`.
    #[error("document would grow to {would_be} bytes, at most {max} allowed")]
    DocumentFull {
        /// Estimated size after the write.
        would_be: usize,
        /// The bound.
        max: usize,
    },
    /// automerge refused the write (should not happen on a root map).
    #[error("automerge refused the write: {0}")]
    Refused(String),
}

/// Why saved bytes could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The saved bytes are larger than `DocumentLimits::max_document_bytes`.
    #[error("saved document is {size} bytes, at most {max} allowed")]
    TooLarge {
        /// Size of the saved bytes.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// automerge could not read the bytes (corrupt or truncated file).
    #[error("saved document is corrupt: {0}")]
    Corrupt(String),
}

/// One automerge document of the mesh, flat: the root map holds string keys
/// whose values are byte scalars (see docs/MESH.md, "Documents").
#[derive(Debug)]
pub struct MeshDocument {
    id: DocumentId,
    doc: AutoCommit,
    limits: DocumentLimits,
    /// Saved size plus bytes of changes since: a cheap upper bound of the
    /// document's size, checked before accepting anything.
    approx_bytes: usize,
}

impl MeshDocument {
    /// An empty document written to as `actor`.
    pub fn new(id: DocumentId, actor: &[u8], limits: DocumentLimits) -> Self {
        let doc = AutoCommit::new().with_actor(ActorId::from(actor));
        MeshDocument {
            id,
            doc,
            limits,
            approx_bytes: 0,
        }
    }

    /// Loads what [`MeshDocument::save`] (followed by any number of
    /// [`MeshDocument::save_incremental`] chunks) wrote.
    pub fn load(
        id: DocumentId,
        actor: &[u8],
        limits: DocumentLimits,
        bytes: &[u8],
    ) -> Result<Self, LoadError> {
        if bytes.len() > limits.max_document_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                max: limits.max_document_bytes,
            });
        }
        let doc = AutoCommit::load(bytes)
            .map_err(|err| LoadError::Corrupt(err.to_string()))?
            .with_actor(ActorId::from(actor));
        Ok(MeshDocument {
            id,
            doc,
            limits,
            approx_bytes: bytes.len(),
        })
    }

    /// Which document this is.
    pub fn id(&self) -> DocumentId {
        self.id
    }

    /// The whole document, compacted (write it over the incremental file).
    pub fn save(&mut self) -> Vec<u8> {
        let bytes = self.doc.save();
        self.approx_bytes = bytes.len();
        bytes
    }

    /// The changes since the last save or incremental save (append them to
    /// the document's file; empty when nothing changed).
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.doc.save_incremental()
    }

    /// Estimated size in bytes (saved size plus changes since).
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Current heads, sorted.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        let mut heads = self.doc.get_heads();
        heads.sort();
        heads
    }

    /// Whether the document holds the change `hash`.
    pub fn has_change(&mut self, hash: &ChangeHash) -> bool {
        self.doc.get_change_by_hash(hash).is_some()
    }

    /// Number of keys in the root map.
    pub fn len(&self) -> usize {
        self.doc.length(automerge::ROOT)
    }

    /// Whether the root map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `value` under `key` in the root map, within the limits.
    pub fn put_bytes(&mut self, key: &str, value: Vec<u8>) -> Result<(), WriteError> {
        if value.len() > self.limits.max_value_bytes {
            return Err(WriteError::ValueTooLarge {
                key: key.to_string(),
                size: value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        let is_new = self
            .doc
            .get(automerge::ROOT, key)
            .map_err(|err| WriteError::Refused(err.to_string()))?
            .is_none();
        let entries = self.len();
        if is_new && entries >= self.limits.max_entries {
            return Err(WriteError::TooManyEntries {
                entries,
                max: self.limits.max_entries,
            });
        }
        // Rough cost of one change: the value, the key and a fixed overhead.
        let would_be = self.approx_bytes + value.len() + key.len() + CHANGE_OVERHEAD_BYTES;
        if would_be > self.limits.max_document_bytes {
            return Err(WriteError::DocumentFull {
                would_be,
                max: self.limits.max_document_bytes,
            });
        }
        self.doc
            .put(automerge::ROOT, key, ScalarValue::Bytes(value))
            .map_err(|err| WriteError::Refused(err.to_string()))?;
        self.doc.commit();
        self.approx_bytes = would_be;
        Ok(())
    }

    /// Every key of the root map in sorted order with all its (possibly
    /// conflicting) values; a value that is not a byte scalar is `None`.
    pub fn entries(&self) -> Vec<(String, Vec<Option<Vec<u8>>>)> {
        let mut out = Vec::new();
        for key in self.doc.keys(automerge::ROOT) {
            let values = match self.doc.get_all(automerge::ROOT, key.as_str()) {
                Ok(values) => values
                    .into_iter()
                    .map(|(value, _)| match value {
                        Value::Scalar(scalar) => match scalar.as_ref() {
                            ScalarValue::Bytes(bytes) => Some(bytes.clone()),
                            _ => None,
                        },
                        Value::Object(_) => None,
                    })
                    .collect(),
                Err(_) => vec![None],
            };
            out.push((key, values));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The next sync message for the peer whose sync state is `state`, if
    /// there is anything to say.
    pub fn generate_sync_message(&mut self, state: &mut sync::State) -> Option<Vec<u8>> {
        if nothing_new_for(state, &self.doc.get_heads()) {
            return None;
        }
        self.doc
            .sync()
            .generate_sync_message(state)
            .map(sync::Message::encode)
    }

    /// Applies a received sync message within the limits; returns whether
    /// the document changed. On error nothing is applied.
    pub fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        bytes: &[u8],
    ) -> Result<bool, ReceiveError> {
        if bytes.len() > self.limits.max_sync_message_bytes {
            return Err(ReceiveError::MessageTooLarge {
                size: bytes.len(),
                max: self.limits.max_sync_message_bytes,
            });
        }
        let message =
            sync::Message::decode(bytes).map_err(|err| ReceiveError::Malformed(err.to_string()))?;
        let change_bytes: usize = message.changes.iter().map(<[u8]>::len).sum();
        if change_bytes > self.limits.max_change_bytes_per_message {
            return Err(ReceiveError::ChangesTooLarge {
                size: change_bytes,
                max: self.limits.max_change_bytes_per_message,
            });
        }
        let would_be = self.approx_bytes + change_bytes;
        if would_be > self.limits.max_document_bytes {
            return Err(ReceiveError::DocumentFull {
                would_be,
                max: self.limits.max_document_bytes,
            });
        }
        let before = self.doc.get_heads();
        self.doc
            .sync()
            .receive_sync_message(state, message)
            .map_err(|err| ReceiveError::Refused(err.to_string()))?;
        let changed = self.doc.get_heads() != before;
        if changed {
            self.approx_bytes = would_be;
        }
        Ok(changed)
    }
}

/// Whether automerge would answer "nothing to send" for this sync state:
/// our heads are the ones we last sent, and the peer either holds the same
/// heads or has not yet acknowledged what we sent. automerge reaches the same
/// answer only after building a bloom filter and collecting the changes to
/// send, which is most of a sync's cost when a change is offered to peers
/// that already have it.
fn nothing_new_for(state: &sync::State, our_heads: &[ChangeHash]) -> bool {
    state.have_responded
        && state.last_sent_heads == our_heads
        && (state.in_flight || state.their_heads.as_deref() == Some(our_heads))
}

/// Rough per-change overhead (hash, actor, sequence, op encoding) used by the
/// size estimate.
const CHANGE_OVERHEAD_BYTES: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc(actor: u8) -> MeshDocument {
        MeshDocument::new(DocumentId::Catalog, &[actor; 16], DocumentLimits::default())
    }

    /// Exchanges sync messages until both sides are quiet.
    fn sync_pair(a: &mut MeshDocument, b: &mut MeshDocument) {
        let mut a_state = sync::State::new();
        let mut b_state = sync::State::new();
        for _ in 0..16 {
            let to_b = a.generate_sync_message(&mut a_state);
            if let Some(bytes) = &to_b {
                b.receive_sync_message(&mut b_state, bytes).unwrap();
            }
            let to_a = b.generate_sync_message(&mut b_state);
            if let Some(bytes) = &to_a {
                a.receive_sync_message(&mut a_state, bytes).unwrap();
            }
            if to_a.is_none() && to_b.is_none() {
                return;
            }
        }
        panic!("sync did not settle");
    }

    #[test]
    fn two_documents_converge_and_keep_conflicting_values() {
        let mut a = doc(1);
        let mut b = doc(2);
        a.put_bytes("k", vec![1]).unwrap();
        b.put_bytes("k", vec![2]).unwrap();
        b.put_bytes("only-b", vec![3]).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        let entries = a.entries();
        assert_eq!(entries, b.entries());
        assert_eq!(entries.len(), 2);
        let mut values = entries[0].1.clone();
        values.sort();
        assert_eq!(values, vec![Some(vec![1]), Some(vec![2])]);
    }

    #[test]
    fn save_incremental_and_load_round_trip() {
        let mut a = doc(1);
        a.put_bytes("x", vec![1; 10]).unwrap();
        let mut file = a.save();
        a.put_bytes("y", vec![2; 10]).unwrap();
        file.extend(a.save_incremental());
        assert!(a.save_incremental().is_empty());
        let mut loaded = MeshDocument::load(
            DocumentId::Catalog,
            &[9; 16],
            DocumentLimits::default(),
            &file,
        )
        .unwrap();
        assert_eq!(loaded.heads(), a.heads());
        assert_eq!(loaded.entries(), a.entries());
    }

    #[test]
    fn corrupt_and_oversized_saves_are_typed_errors() {
        let limits = DocumentLimits::default();
        let err = MeshDocument::load(
            DocumentId::Catalog,
            &[1; 16],
            limits.clone(),
            b"not automerge",
        )
        .unwrap_err();
        assert!(matches!(err, LoadError::Corrupt(_)));
        let small = DocumentLimits {
            max_document_bytes: 4,
            ..limits
        };
        let err = MeshDocument::load(DocumentId::Catalog, &[1; 16], small, &[0; 5]).unwrap_err();
        assert!(matches!(err, LoadError::TooLarge { size: 5, max: 4 }));
    }

    #[test]
    fn writes_are_bounded() {
        let limits = DocumentLimits {
            max_entries: 1,
            max_value_bytes: 8,
            ..DocumentLimits::default()
        };
        let mut a = MeshDocument::new(DocumentId::Catalog, &[1; 16], limits);
        assert!(matches!(
            a.put_bytes("big", vec![0; 9]),
            Err(WriteError::ValueTooLarge {
                size: 9,
                max: 8,
                ..
            })
        ));
        a.put_bytes("one", vec![0; 8]).unwrap();
        a.put_bytes("one", vec![1; 8]).unwrap();
        assert!(matches!(
            a.put_bytes("two", vec![0; 8]),
            Err(WriteError::TooManyEntries { entries: 1, max: 1 })
        ));
    }

    #[test]
    fn oversized_changes_are_refused_and_nothing_is_applied() {
        let mut a = doc(1);
        // Incompressible bytes: automerge deflates large changes.
        let value: Vec<u8> = (0u8..125)
            .flat_map(|i| crate::signing::digest(&[i]))
            .collect();
        a.put_bytes("k", value).unwrap();
        let small = DocumentLimits {
            max_change_bytes_per_message: 1_000,
            ..DocumentLimits::default()
        };
        let mut b = MeshDocument::new(DocumentId::Catalog, &[2; 16], small);
        let mut a_state = sync::State::new();
        let mut b_state = sync::State::new();
        let hello = b.generate_sync_message(&mut b_state).unwrap();
        a.receive_sync_message(&mut a_state, &hello).unwrap();
        let with_changes = a.generate_sync_message(&mut a_state).unwrap();
        let err = b
            .receive_sync_message(&mut b_state, &with_changes)
            .unwrap_err();
        assert!(matches!(
            err,
            ReceiveError::ChangesTooLarge { max: 1_000, .. }
        ));
        assert!(b.is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_nor_change_the_document(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut a = doc(1);
            a.put_bytes("k", vec![1, 2, 3]).unwrap();
            let before = a.heads();
            let mut state = sync::State::new();
            let _ = a.receive_sync_message(&mut state, &bytes);
            prop_assert_eq!(a.heads(), before);
        }

        #[test]
        fn mutated_real_messages_never_panic(flip in any::<usize>(), value in any::<u8>(), truncate in any::<bool>()) {
            let mut a = doc(1);
            a.put_bytes("k", vec![1, 2, 3]).unwrap();
            let mut a_state = sync::State::new();
            let mut b = doc(2);
            let mut b_state = sync::State::new();
            let hello = b.generate_sync_message(&mut b_state).unwrap();
            a.receive_sync_message(&mut a_state, &hello).unwrap();
            let mut message = a.generate_sync_message(&mut a_state).unwrap();
            let at = flip % message.len();
            if truncate {
                message.truncate(at);
            } else {
                message[at] ^= value;
            }
            let _ = b.receive_sync_message(&mut b_state, &message);
        }
    }
}
