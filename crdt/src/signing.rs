//! Publisher keys, key ids and envelope signing.
//!
//! Everything a publisher signs travels as a [`SignedEnvelope`]: the exact
//! encoded payload plus ed25519 signatures over a domain-separated message
//! ([`signing_message`]). The domain prefix and the payload kind are part of the
//! signed bytes so a signature over a manifest can never be replayed as an
//! intent, nor a clawmesh signature as anyone else's.
//!
//! Verification against the trust root lives in [`crate::trust`].

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proto::{PayloadKind, Signature, SignedEnvelope};

/// Prefix of every signed message: separates clawmesh signatures from any other
/// use of the same key.
pub const SIGNING_DOMAIN: &[u8] = b"clawmesh.v1";
/// Number of sha256 bytes of the public key that form a key id.
pub const KEY_ID_BYTES: usize = 8;
/// Length of a key id in hex characters.
pub const KEY_ID_HEX_LEN: usize = KEY_ID_BYTES * 2;
/// Length of an ed25519 public key or secret seed in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of an ed25519 signature in bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// The `kind` line of a secret key file.
pub const KEY_FILE_KIND: &str = "clawmesh-ed25519-secret";
/// Largest key file accepted; a real one is about 150 bytes.
pub const MAX_KEY_FILE_LEN: usize = 4 * 1024;

/// sha256 of `bytes`: the one hash clawmesh uses for content addresses, key ids
/// and intent digests.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Identifies a publisher key: lowercase hex of the first 8 bytes of
/// sha256(public key bytes).
///
/// Always valid once constructed (16 lowercase hex characters).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// The key id of an ed25519 public key.
    pub fn of(public: &VerifyingKey) -> Self {
        Self::from_public_bytes(public.as_bytes())
    }

    /// The key id of raw public key bytes.
    pub fn from_public_bytes(public: &[u8; KEY_BYTES]) -> Self {
        let hash = digest(public);
        Self(hex::encode(&hash[..KEY_ID_BYTES]))
    }

    /// The id as its 16 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// Why a string is not a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyIdError {
    /// Not exactly 16 characters.
    #[error("key id must be {KEY_ID_HEX_LEN} hex characters, got {len}")]
    WrongLength {
        /// Length found, in bytes.
        len: usize,
    },
    /// Contains something other than `0-9a-f`.
    #[error("key id must be lowercase hex (0-9, a-f)")]
    NotLowercaseHex,
}

impl FromStr for KeyId {
    type Err = KeyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != KEY_ID_HEX_LEN {
            return Err(KeyIdError::WrongLength { len: s.len() });
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(KeyIdError::NotLowercaseHex);
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for KeyId {
    type Error = KeyIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> Self {
        id.0
    }
}

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// Not hex.
    #[error("public key is not hex: {0}")]
    NotHex(String),
    /// Not 32 bytes.
    #[error("public key must be {KEY_BYTES} bytes ({} hex characters), got {len} bytes", KEY_BYTES * 2)]
    WrongLength {
        /// Length found, in bytes.
        len: usize,
    },
    /// 32 bytes that are not a valid ed25519 point.
    #[error("public key is not a valid ed25519 point")]
    NotAPoint,
}

/// Parses a hex-encoded ed25519 public key.
pub fn public_key_from_hex(text: &str) -> Result<VerifyingKey, PublicKeyError> {
    let bytes = hex::decode(text).map_err(|e| PublicKeyError::NotHex(e.to_string()))?;
    let bytes: [u8; KEY_BYTES] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| PublicKeyError::WrongLength { len: bytes.len() })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| PublicKeyError::NotAPoint)
}

/// Why a secret key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("no randomness available for a new key: {0}")]
    Random(getrandom::Error),
    /// The key file is larger than any real key file.
    #[error("key file is {len} bytes, more than the {max} a key file can be")]
    FileTooLarge {
        /// Length found.
        len: usize,
        /// [`MAX_KEY_FILE_LEN`].
        max: usize,
    },
    /// The key file is not the expected TOML table.
    #[error("key file is not valid: {0}")]
    Syntax(String),
    /// The `kind` line names something else.
    #[error("key file kind is {found:?}, expected {KEY_FILE_KIND:?}")]
    WrongKind {
        /// The kind found.
        found: String,
    },
    /// The `key_id` line is not a key id.
    #[error("key file key_id: {0}")]
    InvalidKeyId(KeyIdError),
    /// The `secret` line is not hex.
    #[error("key file secret is not hex")]
    SecretNotHex,
    /// The `secret` line is not 32 bytes.
    #[error("key file secret must be {KEY_BYTES} bytes, got {len}")]
    SecretLength {
        /// Length found, in bytes.
        len: usize,
    },
    /// The `key_id` line does not belong to the secret: the file was edited or
    /// mixed up with another.
    #[error("key file says key id {stated} but its secret is key {actual}")]
    KeyIdMismatch {
        /// The id written in the file.
        stated: KeyId,
        /// The id of the secret's public key.
        actual: KeyId,
    },
}

/// The on-disk form of a secret key (a small TOML table).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kind: String,
    key_id: String,
    secret: String,
}

/// A publisher's ed25519 secret key.
///
/// `Debug` shows only the key id; the secret is zeroed when dropped (by
/// `ed25519-dalek`).
#[derive(Clone)]
pub struct PublisherKey {
    signing: SigningKey,
    key_id: KeyId,
}

impl PublisherKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; KEY_BYTES];
        getrandom::fill(&mut seed).map_err(KeyError::Random)?;
        let key = Self::from_secret_bytes(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The key with this 32-byte secret seed (deterministic; for tests and
    /// simulations).
    pub fn from_secret_bytes(seed: &[u8; KEY_BYTES]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let key_id = KeyId::of(&signing.verifying_key());
        Self { signing, key_id }
    }

    /// This key's id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as 64 lowercase hex characters (the trust root's form).
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// The key file text: `kind`, `key_id` and `secret` (hex). Whoever writes
    /// it to disk must make the file private to its owner.
    pub fn to_key_file(&self) -> String {
        // Written by hand: every value is hex, so no TOML escaping is needed.
        format!(
            "# clawmesh publisher secret key: keep it private.\nkind = \"{KEY_FILE_KIND}\"\nkey_id = \"{}\"\nsecret = \"{}\"\n",
            self.key_id,
            hex::encode(self.signing.to_bytes()),
        )
    }

    /// Loads a key file written by [`PublisherKey::to_key_file`], checking its
    /// kind, the secret's length and that the stated key id is the secret's.
    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::FileTooLarge {
                len: text.len(),
                max: MAX_KEY_FILE_LEN,
            });
        }
        let file: KeyFile = toml::from_str(text).map_err(|e| KeyError::Syntax(e.to_string()))?;
        if file.kind != KEY_FILE_KIND {
            return Err(KeyError::WrongKind { found: file.kind });
        }
        let stated: KeyId = file.key_id.parse().map_err(KeyError::InvalidKeyId)?;
        let mut secret = hex::decode(&file.secret).map_err(|_| KeyError::SecretNotHex)?;
        let seed: Result<[u8; KEY_BYTES], _> = secret.as_slice().try_into();
        let len = secret.len();
        secret.fill(0);
        let mut seed = seed.map_err(|_| KeyError::SecretLength { len })?;
        let key = Self::from_secret_bytes(&seed);
        seed.fill(0);
        if key.key_id != stated {
            return Err(KeyError::KeyIdMismatch {
                stated,
                actual: key.key_id,
            });
        }
        Ok(key)
    }

    /// This key's signature over `payload` as a `kind` envelope would carry it.
    pub fn sign(&self, kind: PayloadKind, payload: &[u8]) -> Signature {
        let signature = self.signing.sign(&signing_message(kind, payload));
        Signature {
            key_id: self.key_id.to_string(),
            signature: signature.to_bytes().to_vec(),
        }
    }
}

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The bytes a signature covers: `"clawmesh.v1" || kind (u32 LE) || payload`.
pub fn signing_message(kind: PayloadKind, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + 4 + payload.len());
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(&(kind as u32).to_le_bytes());
    message.extend_from_slice(payload);
    message
}

/// An envelope carrying `payload` signed by each of `signers` (a key listed
/// twice signs once). The trust root accepts at most
/// [`crate::trust::MAX_SIGNATURES`] signatures, so pass no more keys than that.
pub fn sign_envelope(
    kind: PayloadKind,
    payload: Vec<u8>,
    signers: &[&PublisherKey],
) -> SignedEnvelope {
    let mut signatures: Vec<Signature> = Vec::with_capacity(signers.len());
    for signer in signers {
        if signatures
            .iter()
            .any(|s| s.key_id == signer.key_id.as_str())
        {
            continue;
        }
        signatures.push(signer.sign(kind, &payload));
    }
    SignedEnvelope {
        kind: kind as i32,
        payload,
        signatures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    fn key(n: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes(&[n; KEY_BYTES])
    }

    #[test]
    fn key_id_is_first_8_bytes_of_sha256_of_public_key_in_lowercase_hex() {
        let k = key(1);
        let hash = digest(k.verifying_key().as_bytes());
        assert_eq!(k.key_id().as_str(), hex::encode(&hash[..8]));
        assert_eq!(k.key_id().as_str().len(), 16);
    }

    #[test]
    fn key_id_parse_refuses_wrong_length_and_uppercase() {
        assert_eq!(
            "abc".parse::<KeyId>(),
            Err(KeyIdError::WrongLength { len: 3 })
        );
        assert_eq!(
            "0123456789ABCDEF".parse::<KeyId>(),
            Err(KeyIdError::NotLowercaseHex)
        );
        assert_eq!(
            "0123456789abcdeg".parse::<KeyId>(),
            Err(KeyIdError::NotLowercaseHex)
        );
        let id: KeyId = "0123456789abcdef".parse().unwrap();
        assert_eq!(id.to_string(), "0123456789abcdef");
    }

    #[test]
    fn key_id_serde_goes_through_validation() {
        #[derive(Deserialize)]
        struct T {
            id: KeyId,
        }
        let ok: T = toml::from_str("id = \"0123456789abcdef\"").unwrap();
        assert_eq!(ok.id.as_str(), "0123456789abcdef");
        assert!(toml::from_str::<T>("id = \"xyz\"").is_err());
    }

    #[test]
    fn generated_keys_differ_and_round_trip_through_key_file() {
        let a = PublisherKey::generate().unwrap();
        let b = PublisherKey::generate().unwrap();
        assert_ne!(a.key_id(), b.key_id());
        let text = a.to_key_file();
        let back = PublisherKey::from_key_file(&text).unwrap();
        assert_eq!(back.key_id(), a.key_id());
        assert_eq!(back.public_hex(), a.public_hex());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let k = key(7);
        let secret_hex = hex::encode([7u8; KEY_BYTES]);
        assert!(!format!("{k:?}").contains(&secret_hex));
    }

    #[test]
    fn key_file_refusals_name_the_problem() {
        let k = key(2);
        let good = k.to_key_file();

        let wrong_kind = good.replace(KEY_FILE_KIND, "something-else");
        assert!(matches!(
            PublisherKey::from_key_file(&wrong_kind),
            Err(KeyError::WrongKind { found }) if found == "something-else"
        ));

        let other = key(3);
        let mixed = good.replace(k.key_id().as_str(), other.key_id().as_str());
        assert!(matches!(
            PublisherKey::from_key_file(&mixed),
            Err(KeyError::KeyIdMismatch { .. })
        ));

        let short = format!(
            "kind = \"{KEY_FILE_KIND}\"\nkey_id = \"{}\"\nsecret = \"abcd\"\n",
            k.key_id()
        );
        assert!(matches!(
            PublisherKey::from_key_file(&short),
            Err(KeyError::SecretLength { len: 2 })
        ));

        let not_hex = format!(
            "kind = \"{KEY_FILE_KIND}\"\nkey_id = \"{}\"\nsecret = \"zz\"\n",
            k.key_id()
        );
        assert!(matches!(
            PublisherKey::from_key_file(&not_hex),
            Err(KeyError::SecretNotHex)
        ));

        let bad_id = good.replace(k.key_id().as_str(), "nothex");
        assert!(matches!(
            PublisherKey::from_key_file(&bad_id),
            Err(KeyError::InvalidKeyId(_))
        ));

        let extra = format!("{good}extra = 1\n");
        assert!(matches!(
            PublisherKey::from_key_file(&extra),
            Err(KeyError::Syntax(_))
        ));

        assert!(matches!(
            PublisherKey::from_key_file("not toml ["),
            Err(KeyError::Syntax(_))
        ));

        let huge = " ".repeat(MAX_KEY_FILE_LEN + 1);
        assert!(matches!(
            PublisherKey::from_key_file(&huge),
            Err(KeyError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn signing_message_is_domain_kind_le_then_payload() {
        let m = signing_message(PayloadKind::ReleaseIntent, b"xy");
        assert_eq!(m, b"clawmesh.v1\x02\x00\x00\x00xy".to_vec());
    }

    #[test]
    fn envelope_signatures_verify_over_the_domain_separated_message() {
        let a = key(4);
        let b = key(5);
        let env = sign_envelope(
            PayloadKind::SkillPackage,
            b"payload".to_vec(),
            &[&a, &b, &a],
        );
        assert_eq!(env.kind, PayloadKind::SkillPackage as i32);
        assert_eq!(env.signatures.len(), 2, "a key listed twice signs once");
        let message = signing_message(PayloadKind::SkillPackage, b"payload");
        for (sig, k) in env.signatures.iter().zip([&a, &b]) {
            assert_eq!(sig.key_id, k.key_id().as_str());
            let bytes: [u8; SIGNATURE_BYTES] = sig.signature.as_slice().try_into().unwrap();
            let s = ed25519_dalek::Signature::from_bytes(&bytes);
            k.verifying_key().verify(&message, &s).unwrap();
            // Not valid for the other kind: no cross-kind replay.
            let other = signing_message(PayloadKind::ReleaseIntent, b"payload");
            assert!(k.verifying_key().verify(&other, &s).is_err());
        }
    }

    #[test]
    fn public_key_from_hex_checks_hex_length_and_point() {
        let k = key(6);
        assert_eq!(
            public_key_from_hex(&k.public_hex()).unwrap(),
            k.verifying_key()
        );
        assert!(matches!(
            public_key_from_hex("zz"),
            Err(PublicKeyError::NotHex(_))
        ));
        assert_eq!(
            public_key_from_hex("abcd"),
            Err(PublicKeyError::WrongLength { len: 2 })
        );
    }
}
