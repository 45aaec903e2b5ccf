//! The intents document: package → intent digest → signed intent.
//!
//! Key `<package>/<hex of the intent digest>`, value the encoded
//! `SignedEnvelope`. The key names the content, so an honest key never has
//! two different values; a value whose digest differs from its key is
//! rejected, which also makes a replayed intent (same digest) land on the
//! same key and count once.

use prost::Message as _;

use super::{
    MeshDocument, RejectedEntry, VerifyCache, WriteError, best_value, read_entries, verified_entry,
};
use crate::intent::SignedIntent;
use crate::manifest::PackageName;
use crate::trust::TrustRoot;

/// The intents key of an intent for `package` with `digest`.
pub fn intent_key(package: &PackageName, digest: &[u8; 32]) -> String {
    format!("{package}/{}", hex::encode(digest))
}

/// Writes a signed intent into the intents document.
pub fn write_intent(doc: &mut MeshDocument, intent: &SignedIntent) -> Result<(), WriteError> {
    let key = intent_key(&intent.intent.package, &intent.digest);
    doc.put_bytes(&key, intent.envelope.encode_to_vec())
}

/// Reads and validates the intents document: valid intents in key order.
pub fn read_intents(
    doc: &MeshDocument,
    trust: &TrustRoot,
    max_entries: usize,
    cache: &mut VerifyCache<SignedIntent>,
    intents: &mut Vec<SignedIntent>,
    rejected: &mut Vec<RejectedEntry>,
) {
    read_entries(doc, max_entries, rejected, |key, values| {
        let check = |bytes: &[u8]| {
            verified_entry(
                cache,
                bytes,
                key,
                |envelope| SignedIntent::verify(envelope, trust),
                |i| intent_key(&i.intent.package, &i.digest),
            )
        };
        // Same key means same digest means same signed bytes: any valid one will do.
        intents.push(best_value(values, check, |_, _| ())?);
        Ok(())
    });
    cache.finish_read();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::{DocumentId, DocumentLimits};
    use crate::intent::{Intent, IntentAction};
    use crate::signing::PublisherKey;
    use crate::trust::TrustedPublisher;

    fn key(n: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes(&[n; 32])
    }

    fn signed(clock: u64) -> SignedIntent {
        let intent = Intent {
            package: "com.example.app".parse().unwrap(),
            version: semver::Version::new(1, 0, 0),
            action: IntentAction::Deploy,
            clock,
            author: key(1).key_id().clone(),
            issued_at_ms: 0,
            rollout_max_parallel_percent: 100,
        };
        SignedIntent::sign(intent, &key(1)).unwrap()
    }

    #[test]
    fn valid_intents_are_read_and_replays_and_misplaced_ones_are_not() {
        let trust =
            TrustRoot::new(1, [TrustedPublisher::new("p", key(1).verifying_key())]).unwrap();
        let mut doc = MeshDocument::new(DocumentId::Intents, &[1; 16], DocumentLimits::default());
        let first = signed(1);
        write_intent(&mut doc, &first).unwrap();
        write_intent(&mut doc, &first).unwrap();
        let misplaced = intent_key(&first.intent.package, &[0; 32]);
        doc.put_bytes(&misplaced, signed(2).envelope_bytes())
            .unwrap();
        let mut intents = Vec::new();
        let mut rejected = Vec::new();
        let mut cache = VerifyCache::default();
        read_intents(&doc, &trust, 10, &mut cache, &mut intents, &mut rejected);
        // A second read answers from the cache, identically.
        let mut again = Vec::new();
        let mut rejected_again = Vec::new();
        read_intents(
            &doc,
            &trust,
            10,
            &mut cache,
            &mut again,
            &mut rejected_again,
        );
        assert_eq!((&again, &rejected_again), (&intents, &rejected));
        assert_eq!(intents, vec![first]);
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].reason.contains("another key"));
    }
}
