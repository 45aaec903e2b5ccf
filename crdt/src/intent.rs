//! Validated release intents and their signed form.
//!
//! An [`Intent`] says what a publisher wants the mesh to run for one package:
//! deploy a version, roll back to one, or pause. Intents are ordered by
//! [`SignedIntent::order_key`] (Lamport clock, then author key id, then the
//! digest of the signed bytes), a total order every node computes the same way.

use std::fmt;

use prost::Message;
use semver::Version;

use crate::manifest::{PackageName, PackageNameError, version_from_proto, version_to_proto};
use crate::proto::{PayloadKind, ReleaseAction, ReleaseIntent, RolloutPolicy, SignedEnvelope};
use crate::signing::{KeyId, KeyIdError, PublisherKey, digest, sign_envelope};
use crate::trust::{TrustRoot, VerifyError, decode_envelope};

/// Largest encoded intent accepted; a real one is a few hundred bytes.
pub const MAX_INTENT_BYTES: usize = 4 * 1024;
/// Largest rollout percentage.
pub const MAX_ROLLOUT_PERCENT: u32 = 100;

/// What an intent asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntentAction {
    /// Make the version the package's target.
    Deploy,
    /// Explicitly move the target back to the version (the only way down).
    Rollback,
    /// Stop changing what runs.
    Pause,
}

impl IntentAction {
    fn to_proto(self) -> ReleaseAction {
        match self {
            Self::Deploy => ReleaseAction::Deploy,
            Self::Rollback => ReleaseAction::Rollback,
            Self::Pause => ReleaseAction::Pause,
        }
    }
}

impl fmt::Display for IntentAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
            Self::Pause => "pause",
        })
    }
}

/// A validated release intent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Intent {
    /// The package it is about.
    pub package: PackageName,
    /// The version to deploy or roll back to (for a pause: the version seen
    /// when pausing, informative).
    pub version: Version,
    /// What to do.
    pub action: IntentAction,
    /// Lamport clock, at least 1: greater than every clock the author had seen
    /// for this package.
    pub clock: u64,
    /// The author's key id; must be one of the envelope's valid signers.
    pub author: KeyId,
    /// Wall-clock signing time, Unix ms; informative, never used to order.
    pub issued_at_ms: u64,
    /// Percentage of nodes to move at once (0 or 100 = all), at most 100.
    pub rollout_max_parallel_percent: u32,
}

/// Why an intent was refused; every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    /// The encoded intent is larger than [`MAX_INTENT_BYTES`]; refused before
    /// decoding.
    #[error("intent is {len} bytes, at most {max} allowed")]
    Oversized {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a `ReleaseIntent` protobuf.
    #[error("intent is not a valid ReleaseIntent protobuf: {0}")]
    Decode(String),
    /// A required field is absent or empty.
    #[error("{field}: missing")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// `package_name` is not reverse-DNS.
    #[error("package_name: {0}")]
    Name(#[from] PackageNameError),
    /// `author` is not a key id.
    #[error("author: {0}")]
    Author(#[from] KeyIdError),
    /// The author is not the key signing it.
    #[error("author is {author} but the intent is signed by {signer}")]
    AuthorNotSigner {
        /// The author named.
        author: KeyId,
        /// The signing key.
        signer: KeyId,
    },
    /// Any other field that is out of bounds or badly formed.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Intent {
    /// Validates a decoded `ReleaseIntent`.
    pub fn from_proto(intent: ReleaseIntent) -> Result<Self, IntentError> {
        let len = intent.encoded_len();
        if len > MAX_INTENT_BYTES {
            return Err(IntentError::Oversized {
                len,
                max: MAX_INTENT_BYTES,
            });
        }
        if intent.package_name.is_empty() {
            return Err(IntentError::Missing {
                field: "package_name",
            });
        }
        let package = PackageName::parse(&intent.package_name)?;
        let version = intent
            .version
            .as_ref()
            .ok_or(IntentError::Missing { field: "version" })?;
        let version = version_from_proto(version).map_err(|reason| IntentError::InvalidField {
            field: "version",
            reason,
        })?;
        let action = match ReleaseAction::try_from(intent.action) {
            Ok(ReleaseAction::Deploy) => IntentAction::Deploy,
            Ok(ReleaseAction::Rollback) => IntentAction::Rollback,
            Ok(ReleaseAction::Pause) => IntentAction::Pause,
            Ok(ReleaseAction::Unspecified) => return Err(IntentError::Missing { field: "action" }),
            Err(_) => {
                return Err(IntentError::InvalidField {
                    field: "action",
                    reason: format!("{} is not a known release action", intent.action),
                });
            }
        };
        if intent.clock == 0 {
            return Err(IntentError::InvalidField {
                field: "clock",
                reason: "must be at least 1".to_owned(),
            });
        }
        if intent.author.is_empty() {
            return Err(IntentError::Missing { field: "author" });
        }
        let author: KeyId = intent.author.parse()?;
        let percent = intent.rollout.map_or(0, |r| r.max_parallel_percent);
        if percent > MAX_ROLLOUT_PERCENT {
            return Err(IntentError::InvalidField {
                field: "rollout.max_parallel_percent",
                reason: format!("{percent} is more than {MAX_ROLLOUT_PERCENT}"),
            });
        }
        Ok(Self {
            package,
            version,
            action,
            clock: intent.clock,
            author,
            issued_at_ms: intent.issued_at_ms,
            rollout_max_parallel_percent: percent,
        })
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> ReleaseIntent {
        ReleaseIntent {
            package_name: self.package.to_string(),
            version: Some(version_to_proto(&self.version)),
            action: self.action.to_proto() as i32,
            clock: self.clock,
            author: self.author.to_string(),
            rollout: Some(RolloutPolicy {
                max_parallel_percent: self.rollout_max_parallel_percent,
            }),
            issued_at_ms: self.issued_at_ms,
        }
    }

    /// Decodes and validates an encoded `ReleaseIntent`, refusing more than
    /// [`MAX_INTENT_BYTES`] before decoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, IntentError> {
        if bytes.len() > MAX_INTENT_BYTES {
            return Err(IntentError::Oversized {
                len: bytes.len(),
                max: MAX_INTENT_BYTES,
            });
        }
        let intent =
            ReleaseIntent::decode(bytes).map_err(|e| IntentError::Decode(e.to_string()))?;
        Self::from_proto(intent)
    }

    /// The encoded `ReleaseIntent`.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Checks this intent as a receiver would.
    pub fn validate(&self) -> Result<(), IntentError> {
        Self::from_proto(self.to_proto()).map(|_| ())
    }
}

/// Why a signed intent was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentVerifyError {
    /// The envelope's signatures or shape: nothing was decoded.
    #[error("intent signature: {0}")]
    Signature(#[from] VerifyError),
    /// Signed by the trust root, but not a valid intent.
    #[error("signed intent is invalid: {0}")]
    Invalid(#[from] IntentError),
    /// Valid signatures, but none by the author the intent names: an intent
    /// always speaks for the key that signed it.
    #[error("intent names author {author}, which is not among its valid signers")]
    AuthorNotSigner {
        /// The author named.
        author: KeyId,
        /// The keys that did sign.
        signers: Vec<KeyId>,
    },
}

/// An intent, the envelope that carried it and the digest of its signed bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedIntent {
    /// The validated intent (decoded from `envelope.payload`).
    pub intent: Intent,
    /// The envelope as signed; keep and forward this, not a re-encoding.
    pub envelope: SignedEnvelope,
    /// sha256 of `envelope.payload`: identifies the intent and breaks ties.
    pub digest: [u8; 32],
}

impl SignedIntent {
    /// Validates `intent` and signs it with `key`, which must be its author.
    pub fn sign(intent: Intent, key: &PublisherKey) -> Result<Self, IntentError> {
        Self::sign_with(intent, &[key])
    }

    /// Like [`SignedIntent::sign`] with several keys (for a trust root whose
    /// threshold is above 1); the author must be one of them.
    pub fn sign_with(intent: Intent, keys: &[&PublisherKey]) -> Result<Self, IntentError> {
        intent.validate()?;
        if !keys.iter().any(|k| *k.key_id() == intent.author) {
            return Err(IntentError::AuthorNotSigner {
                author: intent.author.clone(),
                signer: keys
                    .first()
                    .map(|k| k.key_id().clone())
                    .unwrap_or_else(|| intent.author.clone()),
            });
        }
        let payload = intent.encode();
        let digest = digest(&payload);
        let envelope = sign_envelope(PayloadKind::ReleaseIntent, payload, keys);
        Ok(Self {
            intent,
            envelope,
            digest,
        })
    }

    /// Checks the envelope's signatures against `trust` first, then decodes
    /// and validates the intent, and checks that its author signed it.
    pub fn verify(envelope: SignedEnvelope, trust: &TrustRoot) -> Result<Self, IntentVerifyError> {
        let signers = trust.verify(&envelope, PayloadKind::ReleaseIntent)?;
        let intent = Intent::decode(&envelope.payload)?;
        if !signers.contains(&intent.author) {
            return Err(IntentVerifyError::AuthorNotSigner {
                author: intent.author,
                signers,
            });
        }
        let digest = digest(&envelope.payload);
        Ok(Self {
            intent,
            envelope,
            digest,
        })
    }

    /// [`SignedIntent::verify`] of an encoded envelope (at most
    /// [`crate::trust::MAX_ENVELOPE_BYTES`]).
    pub fn verify_bytes(bytes: &[u8], trust: &TrustRoot) -> Result<Self, IntentVerifyError> {
        Self::verify(decode_envelope(bytes)?, trust)
    }

    /// The encoded envelope.
    pub fn envelope_bytes(&self) -> Vec<u8> {
        self.envelope.encode_to_vec()
    }

    /// The digest as lowercase hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// The key that totally orders intents: clock, then author key id, then
    /// digest. Two different signed intents never share a key unless their
    /// signed bytes are identical.
    pub fn order_key(&self) -> (u64, KeyId, [u8; 32]) {
        (self.intent.clock, self.intent.author.clone(), self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SemVer;
    use crate::signing::KEY_BYTES;
    use crate::trust::MAX_ENVELOPE_BYTES;
    use crate::trust::TrustedPublisher;
    use proptest::prelude::*;

    fn key(n: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes(&[n; KEY_BYTES])
    }

    fn intent(author: &PublisherKey) -> Intent {
        Intent {
            package: PackageName::parse("com.example.counter").unwrap(),
            version: Version::parse("1.2.0").unwrap(),
            action: IntentAction::Deploy,
            clock: 3,
            author: author.key_id().clone(),
            issued_at_ms: 1_700_000_000_000,
            rollout_max_parallel_percent: 0,
        }
    }

    fn trust(keys: &[&PublisherKey]) -> TrustRoot {
        TrustRoot::new(
            1,
            keys.iter()
                .map(|k| TrustedPublisher::new("p", k.verifying_key())),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_through_bytes() {
        let a = key(1);
        for action in [
            IntentAction::Deploy,
            IntentAction::Rollback,
            IntentAction::Pause,
        ] {
            let i = Intent {
                action,
                ..intent(&a)
            };
            assert_eq!(Intent::decode(&i.encode()).unwrap(), i);
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let a = key(1);
        let base = intent(&a).to_proto();
        let check = |mutate: &dyn Fn(&mut ReleaseIntent), prefix: &str| {
            let mut p = base.clone();
            mutate(&mut p);
            let err = Intent::from_proto(p).unwrap_err();
            assert!(
                err.to_string().starts_with(prefix),
                "expected {prefix:?}, got {err}"
            );
        };
        check(&|p| p.package_name.clear(), "package_name: missing");
        check(
            &|p| p.package_name = "x".into(),
            "package_name: \"x\" is not a package name",
        );
        check(&|p| p.version = None, "version: missing");
        check(
            &|p| {
                p.version = Some(SemVer {
                    pre: "!".into(),
                    ..Default::default()
                })
            },
            "version: pre",
        );
        check(&|p| p.action = 0, "action: missing");
        check(&|p| p.action = 9, "action: 9 is not a known release action");
        check(&|p| p.clock = 0, "clock: must be at least 1");
        check(&|p| p.author.clear(), "author: missing");
        check(&|p| p.author = "ABC".into(), "author: ");
        check(
            &|p| {
                p.rollout = Some(RolloutPolicy {
                    max_parallel_percent: 101,
                })
            },
            "rollout.max_parallel_percent: 101",
        );
        assert!(matches!(
            Intent::decode(&vec![0; MAX_INTENT_BYTES + 1]),
            Err(IntentError::Oversized { .. })
        ));
    }

    #[test]
    fn signed_intent_verifies_and_orders() {
        let (a, b) = (key(1), key(2));
        let root = trust(&[&a, &b]);
        let signed = SignedIntent::sign(intent(&a), &a).unwrap();
        let back = SignedIntent::verify_bytes(&signed.envelope_bytes(), &root).unwrap();
        assert_eq!(back.intent, intent(&a));
        assert_eq!(back.digest, digest(&signed.envelope.payload));
        assert_eq!(back.digest_hex().len(), 64);

        let later = SignedIntent::sign(
            Intent {
                clock: 4,
                ..intent(&b)
            },
            &b,
        )
        .unwrap();
        assert!(later.order_key() > back.order_key(), "clock orders first");
        let same_clock_b = SignedIntent::sign(intent(&b), &b).unwrap();
        assert_eq!(
            same_clock_b.order_key().cmp(&back.order_key()),
            b.key_id().cmp(a.key_id()),
            "equal clocks: author key id breaks the tie"
        );
    }

    #[test]
    fn author_must_be_a_signer() {
        let (a, b) = (key(1), key(2));
        let root = trust(&[&a, &b]);
        assert!(matches!(
            SignedIntent::sign(intent(&a), &b),
            Err(IntentError::AuthorNotSigner { .. })
        ));
        // Forged by hand: b signs an intent claiming a wrote it.
        let env = sign_envelope(PayloadKind::ReleaseIntent, intent(&a).encode(), &[&b]);
        assert!(matches!(
            SignedIntent::verify(env, &root),
            Err(IntentVerifyError::AuthorNotSigner { .. })
        ));
    }

    #[test]
    fn forged_and_invalid_intents_are_refused() {
        let (a, stranger) = (key(1), key(9));
        let root = trust(&[&a]);
        let forged = SignedIntent::sign(intent(&stranger), &stranger).unwrap();
        assert!(matches!(
            SignedIntent::verify(forged.envelope, &root),
            Err(IntentVerifyError::Signature(VerifyError::UnknownKey(_)))
        ));
        let manifest_kind = sign_envelope(PayloadKind::SkillPackage, intent(&a).encode(), &[&a]);
        assert!(matches!(
            SignedIntent::verify(manifest_kind, &root),
            Err(IntentVerifyError::Signature(VerifyError::WrongKind { .. }))
        ));
        let mut zero_clock = intent(&a).to_proto();
        zero_clock.clock = 0;
        let env = sign_envelope(
            PayloadKind::ReleaseIntent,
            zero_clock.encode_to_vec(),
            &[&a],
        );
        assert!(matches!(
            SignedIntent::verify(env, &root),
            Err(IntentVerifyError::Invalid(IntentError::InvalidField {
                field: "clock",
                ..
            }))
        ));
        assert!(SignedIntent::verify_bytes(&vec![1; MAX_ENVELOPE_BYTES + 1], &root).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = Intent::decode(&bytes);
        }

        #[test]
        fn envelope_verify_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let a = key(1);
            let _ = SignedIntent::verify_bytes(&bytes, &trust(&[&a]));
        }
    }
}
