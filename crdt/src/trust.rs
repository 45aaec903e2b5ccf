//! The mesh's trust root: which publisher keys may sign manifests and intents,
//! and how many of them must sign.
//!
//! Every node is started with the same trust root file, so every node accepts
//! and ignores the same envelopes. The file is TOML:
//!
//! ```toml
//! threshold = 1
//!
//! [[publisher]]
//! name = "alice"                 # for people only
//! key_id = "0123456789abcdef"    # must be the id of public_key
//! public_key = "<64 hex characters>"
//! ```
//!
//! Verification is by count of distinct trusted keys with a valid signature.
//! A signature by an unknown key, with an unreadable key id, or that does not
//! verify is not counted, but does not by itself spoil an envelope that has
//! enough valid ones: otherwise anyone could invalidate a published envelope
//! by appending junk to a copy of it (the signed payload, and so every digest
//! of it, is unchanged by such junk).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::proto::{PayloadKind, SignedEnvelope};
use crate::signing::{
    KeyId, KeyIdError, PublicKeyError, SIGNATURE_BYTES, public_key_from_hex, signing_message,
};

/// Most signatures an envelope may carry; more is refused before any is checked.
pub const MAX_SIGNATURES: usize = 16;
/// Largest signed payload accepted; manifests and intents are refused at
/// encoding time when larger.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest encoded envelope accepted: the largest payload plus the largest
/// signature list, with room for field tags.
pub const MAX_ENVELOPE_BYTES: usize = MAX_PAYLOAD_BYTES + MAX_SIGNATURES * 128 + 64;
/// Most publishers a trust root may list.
pub const MAX_PUBLISHERS: usize = 256;
/// Largest trust root file accepted.
pub const MAX_TRUST_ROOT_FILE_LEN: usize = 256 * 1024;
/// Longest publisher name, in bytes.
pub const MAX_PUBLISHER_NAME_LEN: usize = 128;

/// A publisher key the mesh trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedPublisher {
    /// Who this is, for people; never interpreted.
    pub name: String,
    /// The key's id (always the id of `key`).
    pub key_id: KeyId,
    /// The ed25519 public key.
    pub key: VerifyingKey,
}

impl TrustedPublisher {
    /// A trusted publisher for `key`, its id computed.
    pub fn new(name: impl Into<String>, key: VerifyingKey) -> Self {
        Self {
            name: name.into(),
            key_id: KeyId::of(&key),
            key,
        }
    }
}

/// The set of trusted publisher keys and the number of them that must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    threshold: usize,
    publishers: BTreeMap<KeyId, TrustedPublisher>,
}

/// Why a trust root was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustRootError {
    /// The file is larger than [`MAX_TRUST_ROOT_FILE_LEN`].
    #[error("trust root file is {len} bytes, more than the {max} allowed")]
    FileTooLarge {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not TOML of the expected shape.
    #[error("trust root is not valid TOML of the expected shape: {0}")]
    Syntax(String),
    /// More publishers than [`MAX_PUBLISHERS`].
    #[error("trust root lists {count} publishers, more than the {max} allowed")]
    TooManyPublishers {
        /// Publishers listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The threshold is 0 or more than the number of keys.
    #[error("threshold {threshold} must be between 1 and the number of publisher keys ({keys})")]
    Threshold {
        /// The threshold given.
        threshold: u64,
        /// Number of keys listed.
        keys: usize,
    },
    /// A publisher's name is empty, too long or has control characters.
    #[error("publisher[{index}].name: {reason}")]
    InvalidName {
        /// Position in the list, from 0.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A publisher's `key_id` is not a key id.
    #[error("publisher[{index}].key_id: {source}")]
    InvalidKeyId {
        /// Position in the list, from 0.
        index: usize,
        /// What is wrong.
        source: KeyIdError,
    },
    /// A publisher's `public_key` is not an ed25519 public key.
    #[error("publisher[{index}].public_key: {source}")]
    InvalidPublicKey {
        /// Position in the list, from 0.
        index: usize,
        /// What is wrong.
        source: PublicKeyError,
    },
    /// A publisher's `key_id` is not the id of its `public_key`.
    #[error("publisher[{index}].key_id is {stated} but public_key has key id {actual}")]
    KeyIdMismatch {
        /// Position in the list, from 0.
        index: usize,
        /// The id written.
        stated: KeyId,
        /// The id of the public key.
        actual: KeyId,
    },
    /// The same key is listed twice.
    #[error("publisher[{second}] repeats the key {key_id} of publisher[{first}]")]
    DuplicateKey {
        /// The repeated key.
        key_id: KeyId,
        /// Position of the first listing.
        first: usize,
        /// Position of the repeat.
        second: usize,
    },
}

/// Why a signed envelope was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The envelope carries another kind of payload than the caller expects.
    #[error("envelope carries a {} payload, expected {}", found.as_str_name(), expected.as_str_name())]
    WrongKind {
        /// The kind the caller expects.
        expected: PayloadKind,
        /// The kind the envelope says.
        found: PayloadKind,
    },
    /// No signature is by a trusted key; this is the first signer named.
    #[error("signed only by key {0}, which is not in the trust root")]
    UnknownKey(KeyId),
    /// A trusted key's signature does not verify, and without it the envelope
    /// lacks enough valid signatures.
    #[error("signature by trusted key {key_id} does not verify")]
    BadSignature {
        /// The key whose signature is wrong.
        key_id: KeyId,
    },
    /// Some trusted keys signed, but fewer than the threshold.
    #[error("{valid} valid signature(s) from trusted keys, the trust root needs {needed}")]
    BelowThreshold {
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// The trust root's threshold.
        needed: usize,
    },
    /// The envelope itself is unusable (unknown kind, too large, too many
    /// signatures, no readable signature).
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

/// Decodes an encoded [`SignedEnvelope`], refusing more than
/// [`MAX_ENVELOPE_BYTES`] before decoding. Nothing is verified yet.
pub fn decode_envelope(bytes: &[u8]) -> Result<SignedEnvelope, VerifyError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(VerifyError::Malformed(format!(
            "envelope is {} bytes, at most {MAX_ENVELOPE_BYTES} allowed",
            bytes.len()
        )));
    }
    <SignedEnvelope as prost::Message>::decode(bytes)
        .map_err(|e| VerifyError::Malformed(format!("not a SignedEnvelope protobuf: {e}")))
}

/// The file form, for deserialising only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustRootFile {
    threshold: u64,
    #[serde(default)]
    publisher: Vec<PublisherEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublisherEntry {
    name: String,
    key_id: String,
    public_key: String,
}

fn check_name(index: usize, name: &str) -> Result<(), TrustRootError> {
    let reason = if name.trim().is_empty() {
        "must not be empty".to_owned()
    } else if name.len() > MAX_PUBLISHER_NAME_LEN {
        format!(
            "is {} bytes, at most {MAX_PUBLISHER_NAME_LEN} allowed",
            name.len()
        )
    } else if name.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(TrustRootError::InvalidName { index, reason })
}

impl TrustRoot {
    /// A trust root of `publishers` needing `threshold` distinct signatures.
    pub fn new(
        threshold: usize,
        publishers: impl IntoIterator<Item = TrustedPublisher>,
    ) -> Result<Self, TrustRootError> {
        let mut map: BTreeMap<KeyId, (usize, TrustedPublisher)> = BTreeMap::new();
        for (index, publisher) in publishers.into_iter().enumerate() {
            if index >= MAX_PUBLISHERS {
                return Err(TrustRootError::TooManyPublishers {
                    count: index + 1,
                    max: MAX_PUBLISHERS,
                });
            }
            check_name(index, &publisher.name)?;
            let actual = KeyId::of(&publisher.key);
            if actual != publisher.key_id {
                return Err(TrustRootError::KeyIdMismatch {
                    index,
                    stated: publisher.key_id,
                    actual,
                });
            }
            if let Some((first, _)) = map.get(&actual) {
                return Err(TrustRootError::DuplicateKey {
                    key_id: actual,
                    first: *first,
                    second: index,
                });
            }
            map.insert(actual, (index, publisher));
        }
        if threshold == 0 || threshold > map.len() {
            return Err(TrustRootError::Threshold {
                threshold: threshold as u64,
                keys: map.len(),
            });
        }
        Ok(Self {
            threshold,
            publishers: map.into_iter().map(|(id, (_, p))| (id, p)).collect(),
        })
    }

    /// Parses and validates a trust root file.
    pub fn from_toml(text: &str) -> Result<Self, TrustRootError> {
        if text.len() > MAX_TRUST_ROOT_FILE_LEN {
            return Err(TrustRootError::FileTooLarge {
                len: text.len(),
                max: MAX_TRUST_ROOT_FILE_LEN,
            });
        }
        let file: TrustRootFile =
            toml::from_str(text).map_err(|e| TrustRootError::Syntax(e.to_string()))?;
        if file.publisher.len() > MAX_PUBLISHERS {
            return Err(TrustRootError::TooManyPublishers {
                count: file.publisher.len(),
                max: MAX_PUBLISHERS,
            });
        }
        let mut publishers = Vec::with_capacity(file.publisher.len());
        for (index, entry) in file.publisher.into_iter().enumerate() {
            let stated: KeyId = entry
                .key_id
                .parse()
                .map_err(|source| TrustRootError::InvalidKeyId { index, source })?;
            let key = public_key_from_hex(&entry.public_key)
                .map_err(|source| TrustRootError::InvalidPublicKey { index, source })?;
            publishers.push(TrustedPublisher {
                name: entry.name,
                key_id: stated,
                key,
            });
        }
        // A threshold too large for usize cannot be met either.
        let threshold = usize::try_from(file.threshold).unwrap_or(usize::MAX);
        Self::new(threshold, publishers).map_err(|e| match e {
            TrustRootError::Threshold { keys, .. } => TrustRootError::Threshold {
                threshold: file.threshold,
                keys,
            },
            other => other,
        })
    }

    /// The file form, readable by [`TrustRoot::from_toml`]; publishers in key
    /// id order.
    pub fn to_toml(&self) -> String {
        let mut out = format!("threshold = {}\n", self.threshold);
        for publisher in self.publishers.values() {
            // toml::Value's Display quotes and escapes the free-text name.
            out.push_str(&format!(
                "\n[[publisher]]\nname = {}\nkey_id = \"{}\"\npublic_key = \"{}\"\n",
                toml::Value::String(publisher.name.clone()),
                publisher.key_id,
                hex::encode(publisher.key.as_bytes()),
            ));
        }
        out
    }

    /// Number of distinct trusted keys that must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Whether `key_id` is a trusted key.
    pub fn contains(&self, key_id: &KeyId) -> bool {
        self.publishers.contains_key(key_id)
    }

    /// The trusted publisher with this key id.
    pub fn publisher(&self, key_id: &KeyId) -> Option<&TrustedPublisher> {
        self.publishers.get(key_id)
    }

    /// All trusted publishers, in key id order.
    pub fn publishers(&self) -> impl Iterator<Item = &TrustedPublisher> {
        self.publishers.values()
    }

    /// Checks that `envelope` carries an `expected` payload signed by at least
    /// the threshold of distinct trusted keys, and returns those keys (sorted).
    ///
    /// Refused before any signature is checked: an unknown or unexpected kind,
    /// a payload over [`MAX_PAYLOAD_BYTES`], more than [`MAX_SIGNATURES`]
    /// signatures. The payload itself is not decoded here.
    pub fn verify(
        &self,
        envelope: &SignedEnvelope,
        expected: PayloadKind,
    ) -> Result<Vec<KeyId>, VerifyError> {
        let found = PayloadKind::try_from(envelope.kind).map_err(|_| {
            VerifyError::Malformed(format!("unknown payload kind {}", envelope.kind))
        })?;
        if found != expected {
            return Err(VerifyError::WrongKind { expected, found });
        }
        if envelope.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(VerifyError::Malformed(format!(
                "payload is {} bytes, at most {MAX_PAYLOAD_BYTES} allowed",
                envelope.payload.len()
            )));
        }
        if envelope.signatures.len() > MAX_SIGNATURES {
            return Err(VerifyError::Malformed(format!(
                "{} signatures, at most {MAX_SIGNATURES} allowed",
                envelope.signatures.len()
            )));
        }

        let message = signing_message(expected, &envelope.payload);
        let mut valid: BTreeSet<KeyId> = BTreeSet::new();
        let mut first_bad: Option<KeyId> = None;
        let mut first_unknown: Option<KeyId> = None;
        let mut first_unreadable: Option<String> = None;
        for (index, signature) in envelope.signatures.iter().enumerate() {
            let key_id: KeyId = match signature.key_id.parse() {
                Ok(id) => id,
                Err(e) => {
                    first_unreadable
                        .get_or_insert_with(|| format!("signatures[{index}].key_id: {e}"));
                    continue;
                }
            };
            let Some(publisher) = self.publishers.get(&key_id) else {
                first_unknown.get_or_insert(key_id);
                continue;
            };
            if valid.contains(&key_id) {
                continue;
            }
            let verified = <[u8; SIGNATURE_BYTES]>::try_from(signature.signature.as_slice())
                .ok()
                .map(|bytes| ed25519_dalek::Signature::from_bytes(&bytes))
                .is_some_and(|sig| publisher.key.verify_strict(&message, &sig).is_ok());
            if verified {
                valid.insert(key_id);
            } else {
                first_bad.get_or_insert(key_id);
            }
        }

        if valid.len() >= self.threshold {
            return Ok(valid.into_iter().collect());
        }
        if let Some(key_id) = first_bad {
            return Err(VerifyError::BadSignature { key_id });
        }
        if !valid.is_empty() {
            return Err(VerifyError::BelowThreshold {
                valid: valid.len(),
                needed: self.threshold,
            });
        }
        if let Some(key_id) = first_unknown {
            return Err(VerifyError::UnknownKey(key_id));
        }
        Err(VerifyError::Malformed(
            first_unreadable.unwrap_or_else(|| "envelope has no signatures".to_owned()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Signature;
    use crate::signing::{KEY_BYTES, PublisherKey, sign_envelope};

    fn key(n: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes(&[n; KEY_BYTES])
    }

    fn root(threshold: usize, keys: &[&PublisherKey]) -> TrustRoot {
        TrustRoot::new(
            threshold,
            keys.iter()
                .enumerate()
                .map(|(i, k)| TrustedPublisher::new(format!("p{i}"), k.verifying_key())),
        )
        .unwrap()
    }

    fn entry(name: &str, key_id: &str, public: &str) -> String {
        format!(
            "\n[[publisher]]\nname = \"{name}\"\nkey_id = \"{key_id}\"\npublic_key = \"{public}\"\n"
        )
    }

    #[test]
    fn toml_round_trips() {
        let (a, b) = (key(1), key(2));
        let mut r = root(2, &[&a, &b]);
        r.publishers.values_mut().next().unwrap().name = "Ärger \"quoted\"\\".to_owned();
        let text = r.to_toml();
        let back = TrustRoot::from_toml(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.threshold(), 2);
        assert!(back.contains(a.key_id()));
        assert!(!back.contains(key(3).key_id()));
    }

    #[test]
    fn from_toml_refusals_name_the_entry() {
        let a = key(1);
        let good = entry("alice", a.key_id().as_str(), &a.public_hex());

        let zero = format!("threshold = 0\n{good}");
        assert!(matches!(
            TrustRoot::from_toml(&zero),
            Err(TrustRootError::Threshold {
                threshold: 0,
                keys: 1
            })
        ));
        let two = format!("threshold = 2\n{good}");
        assert!(matches!(
            TrustRoot::from_toml(&two),
            Err(TrustRootError::Threshold {
                threshold: 2,
                keys: 1
            })
        ));
        assert!(matches!(
            TrustRoot::from_toml("threshold = 1\n"),
            Err(TrustRootError::Threshold { keys: 0, .. })
        ));

        let dup = format!("threshold = 1\n{good}{good}");
        assert!(matches!(
            TrustRoot::from_toml(&dup),
            Err(TrustRootError::DuplicateKey {
                first: 0,
                second: 1,
                ..
            })
        ));

        let b = key(2);
        let mismatch = format!(
            "threshold = 1\n{good}{}",
            entry("bob", a.key_id().as_str(), &b.public_hex())
        );
        let err = TrustRoot::from_toml(&mismatch).unwrap_err();
        assert!(matches!(
            err,
            TrustRootError::KeyIdMismatch { index: 1, .. }
        ));
        assert!(err.to_string().starts_with("publisher[1].key_id"));

        let bad_pub = format!("threshold = 1\n{}", entry("x", a.key_id().as_str(), "abcd"));
        assert!(matches!(
            TrustRoot::from_toml(&bad_pub),
            Err(TrustRootError::InvalidPublicKey { index: 0, .. })
        ));
        let bad_id = format!("threshold = 1\n{}", entry("x", "nope", &a.public_hex()));
        assert!(matches!(
            TrustRoot::from_toml(&bad_id),
            Err(TrustRootError::InvalidKeyId { index: 0, .. })
        ));
        let no_name = format!(
            "threshold = 1\n{}",
            entry(" ", a.key_id().as_str(), &a.public_hex())
        );
        assert!(matches!(
            TrustRoot::from_toml(&no_name),
            Err(TrustRootError::InvalidName { index: 0, .. })
        ));
        let unknown_field = format!("threshold = 1\nextra = true\n{good}");
        assert!(matches!(
            TrustRoot::from_toml(&unknown_field),
            Err(TrustRootError::Syntax(_))
        ));
        assert!(matches!(
            TrustRoot::from_toml(&" ".repeat(MAX_TRUST_ROOT_FILE_LEN + 1)),
            Err(TrustRootError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn verify_accepts_threshold_of_distinct_trusted_signers() {
        let (a, b, c) = (key(1), key(2), key(3));
        let r = root(2, &[&a, &b, &c]);
        let env = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&c, &a]);
        let mut signers = vec![a.key_id().clone(), c.key_id().clone()];
        signers.sort();
        assert_eq!(r.verify(&env, PayloadKind::SkillPackage).unwrap(), signers);
    }

    #[test]
    fn duplicate_signatures_by_one_key_count_once() {
        let (a, b) = (key(1), key(2));
        let r = root(2, &[&a, &b]);
        let mut env = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&a]);
        env.signatures.push(env.signatures[0].clone());
        assert_eq!(
            r.verify(&env, PayloadKind::SkillPackage),
            Err(VerifyError::BelowThreshold {
                valid: 1,
                needed: 2
            })
        );
    }

    #[test]
    fn wrong_kind_is_refused_even_with_valid_signatures() {
        let a = key(1);
        let r = root(1, &[&a]);
        let env = sign_envelope(PayloadKind::ReleaseIntent, b"m".to_vec(), &[&a]);
        assert_eq!(
            r.verify(&env, PayloadKind::SkillPackage),
            Err(VerifyError::WrongKind {
                expected: PayloadKind::SkillPackage,
                found: PayloadKind::ReleaseIntent
            })
        );
        // Relabelling the kind breaks the signature: the kind is signed.
        let mut relabelled = env.clone();
        relabelled.kind = PayloadKind::SkillPackage as i32;
        assert_eq!(
            r.verify(&relabelled, PayloadKind::SkillPackage),
            Err(VerifyError::BadSignature {
                key_id: a.key_id().clone()
            })
        );
    }

    #[test]
    fn unknown_key_only_when_no_trusted_signer() {
        let (a, stranger) = (key(1), key(9));
        let r = root(1, &[&a]);
        let env = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&stranger]);
        assert_eq!(
            r.verify(&env, PayloadKind::SkillPackage),
            Err(VerifyError::UnknownKey(stranger.key_id().clone()))
        );
        let both = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&stranger, &a]);
        assert_eq!(
            r.verify(&both, PayloadKind::SkillPackage).unwrap(),
            vec![a.key_id().clone()]
        );
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let a = key(1);
        let r = root(1, &[&a]);
        let mut env = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&a]);
        env.payload = b"n".to_vec();
        assert_eq!(
            r.verify(&env, PayloadKind::SkillPackage),
            Err(VerifyError::BadSignature {
                key_id: a.key_id().clone()
            })
        );
        let mut short = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&a]);
        short.signatures[0].signature.truncate(10);
        assert_eq!(
            r.verify(&short, PayloadKind::SkillPackage),
            Err(VerifyError::BadSignature {
                key_id: a.key_id().clone()
            })
        );
    }

    #[test]
    fn junk_appended_to_a_valid_envelope_does_not_spoil_it() {
        let a = key(1);
        let r = root(1, &[&a]);
        let mut env = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&a]);
        env.signatures.push(Signature {
            key_id: a.key_id().to_string(),
            signature: vec![0; 64],
        });
        env.signatures.push(Signature {
            key_id: "junk".to_owned(),
            signature: vec![],
        });
        assert_eq!(
            r.verify(&env, PayloadKind::SkillPackage).unwrap(),
            vec![a.key_id().clone()]
        );
    }

    #[test]
    fn envelope_caps_and_malformations() {
        let a = key(1);
        let r = root(1, &[&a]);
        let big = sign_envelope(
            PayloadKind::SkillPackage,
            vec![0; MAX_PAYLOAD_BYTES + 1],
            &[&a],
        );
        assert!(matches!(
            r.verify(&big, PayloadKind::SkillPackage),
            Err(VerifyError::Malformed(_))
        ));

        let mut many = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&a]);
        many.signatures = vec![many.signatures[0].clone(); MAX_SIGNATURES + 1];
        assert!(matches!(
            r.verify(&many, PayloadKind::SkillPackage),
            Err(VerifyError::Malformed(_))
        ));

        let mut unknown_kind = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[&a]);
        unknown_kind.kind = 77;
        assert!(matches!(
            r.verify(&unknown_kind, PayloadKind::SkillPackage),
            Err(VerifyError::Malformed(m)) if m.contains("77")
        ));

        let unsigned = sign_envelope(PayloadKind::SkillPackage, b"m".to_vec(), &[]);
        assert!(matches!(
            r.verify(&unsigned, PayloadKind::SkillPackage),
            Err(VerifyError::Malformed(_))
        ));
    }
}
