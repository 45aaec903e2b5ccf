//! Validated skill package manifests and their signed form.
//!
//! A [`Manifest`] is a [`SkillPackage`] protobuf that passed every check:
//! reverse-DNS names, semver versions, parseable dependency ranges, hash
//! lengths, sizes and chunking, the ABI world and the capabilities asked for.
//! Every refusal names the field (`dependencies[2].version_range: ...`).
//!
//! Manifests travel only inside a [`SignedEnvelope`]; [`SignedManifest::verify`]
//! checks the signatures against the trust root before decoding anything.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use prost::Message;
use semver::{BuildMetadata, Prerelease, Version};
use serde::{Deserialize, Serialize};

use crate::proto::{self, PayloadKind, SemVer, SignedEnvelope, SkillPackage};
use crate::range::{RangeError, VersionRange};
use crate::signing::{KeyId, PublisherKey, digest, sign_envelope};
use crate::trust::{MAX_PAYLOAD_BYTES, TrustRoot, VerifyError, decode_envelope};

/// Largest blob a manifest may name.
pub const MAX_BLOB_SIZE: u64 = 256 * 1024 * 1024;
/// Smallest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Chunk size [`Manifest::for_blob`] uses.
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Most chunks a manifest may list (keeps the manifest well under
/// [`MAX_MANIFEST_BYTES`]); a larger blob needs a larger chunk size.
pub const MAX_CHUNKS: usize = 1024;
/// Largest encoded manifest: the most an envelope may carry.
pub const MAX_MANIFEST_BYTES: usize = MAX_PAYLOAD_BYTES;
/// Most dependencies of one package.
pub const MAX_DEPENDENCIES: usize = 64;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 4 * 1024;
/// Longest ABI world or capability import name, in bytes.
pub const MAX_ABI_WORLD_LEN: usize = 128;
/// Most extra host imports a skill may ask for.
pub const MAX_IMPORTS: usize = 32;
/// Most linear memory a skill may ask for: all a 32-bit wasm memory can address.
pub const MAX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Longest per-call deadline a skill may ask for (10 minutes).
pub const MAX_CALL_DEADLINE_MS: u32 = 600_000;
/// Largest cgroup CPU weight.
pub const MAX_CPU_WEIGHT: u32 = 10_000;
/// Longest pre-release or build-metadata string of a version, in bytes.
pub const MAX_VERSION_LABEL_LEN: usize = 64;
/// Longest package name, in bytes.
pub const MAX_PACKAGE_NAME_LEN: usize = 200;
/// Fewest and most dot-separated labels in a package name.
pub const PACKAGE_NAME_LABELS: std::ops::RangeInclusive<usize> = 2..=8;
/// Longest label of a package name.
pub const MAX_PACKAGE_LABEL_LEN: usize = 63;

/// A reverse-DNS package name such as `com.clawhub.image-process`: 2 to 8
/// dot-separated labels of `a-z`, `0-9` and `-` (not at either end of a label),
/// each 1 to 63 characters, the first label starting with a letter, at most
/// 200 characters in all.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PackageName(String);

/// Why a string is not a package name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a package name: {reason}")]
pub struct PackageNameError {
    /// The text given (cut to [`MAX_PACKAGE_NAME_LEN`] bytes when longer).
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PackageName {
    /// Parses and checks a package name.
    pub fn parse(text: &str) -> Result<Self, PackageNameError> {
        let fail = |reason: String| {
            let mut cut = text.len().min(MAX_PACKAGE_NAME_LEN);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            Err(PackageNameError {
                name: text[..cut].to_owned(),
                reason,
            })
        };
        if text.len() > MAX_PACKAGE_NAME_LEN {
            return fail(format!(
                "{} bytes long, at most {MAX_PACKAGE_NAME_LEN} allowed",
                text.len()
            ));
        }
        let labels: Vec<&str> = text.split('.').collect();
        if !PACKAGE_NAME_LABELS.contains(&labels.len()) {
            return fail(format!(
                "has {} dot-separated labels, needs {} to {} (reverse-DNS, e.g. com.example.skill)",
                labels.len(),
                PACKAGE_NAME_LABELS.start(),
                PACKAGE_NAME_LABELS.end()
            ));
        }
        for (index, label) in labels.iter().enumerate() {
            if label.is_empty() {
                return fail(format!("label {} is empty", index + 1));
            }
            if label.len() > MAX_PACKAGE_LABEL_LEN {
                return fail(format!(
                    "label {label:?} is {} characters, at most {MAX_PACKAGE_LABEL_LEN} allowed",
                    label.len()
                ));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
            {
                return fail(format!(
                    "label {label:?} contains {bad:?}; only a-z, 0-9 and '-' are allowed"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return fail(format!("label {label:?} starts or ends with '-'"));
            }
        }
        if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
            return fail("must start with a letter".to_owned());
        }
        Ok(Self(text.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageName({})", self.0)
    }
}

impl FromStr for PackageName {
    type Err = PackageNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for PackageName {
    type Error = PackageNameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PackageName> for String {
    fn from(name: PackageName) -> Self {
        name.0
    }
}

/// Why a manifest was refused. Every variant names the field at fault, in
/// protobuf field names (`dependencies[2].version_range`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The encoded manifest is larger than [`MAX_MANIFEST_BYTES`]; refused
    /// before decoding.
    #[error("manifest is {len} bytes, at most {max} allowed")]
    Oversized {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a `SkillPackage` protobuf.
    #[error("manifest is not a valid SkillPackage protobuf: {0}")]
    Decode(String),
    /// A required field is absent or empty.
    #[error("{field}: missing")]
    Missing {
        /// The field.
        field: String,
    },
    /// A package name is not reverse-DNS.
    #[error("{field}: {source}")]
    Name {
        /// The field.
        field: String,
        /// What is wrong.
        source: PackageNameError,
    },
    /// A dependency's range does not parse.
    #[error("{field}: {source}")]
    Range {
        /// The field.
        field: String,
        /// What is wrong.
        source: RangeError,
    },
    /// A hash is not 32 bytes.
    #[error("{field}: a sha256 is 32 bytes, got {len}")]
    HashLength {
        /// The field.
        field: String,
        /// Length found.
        len: usize,
    },
    /// The chunk list does not cover the blob.
    #[error(
        "chunk_sha256: a {size}-byte blob in {chunk_size}-byte chunks has {expected} chunks, the manifest lists {found}"
    )]
    ChunkCount {
        /// Blob size.
        size: u64,
        /// Chunk size.
        chunk_size: u32,
        /// Chunks the blob has.
        expected: u64,
        /// Chunk hashes listed.
        found: usize,
    },
    /// The package depends on itself.
    #[error("{field}: a package cannot depend on itself ({package})")]
    SelfDependency {
        /// The field.
        field: String,
        /// The package.
        package: PackageName,
    },
    /// Two dependencies name the same package.
    #[error("{field}: {package} is already a dependency")]
    DuplicateDependency {
        /// The field of the repeat.
        field: String,
        /// The package.
        package: PackageName,
    },
    /// Any other field that is out of bounds or badly formed.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Converts a protobuf [`SemVer`] into a [`Version`]; the error says what is
/// wrong, for the caller to prefix with the field name.
pub fn version_from_proto(semver: &SemVer) -> Result<Version, String> {
    for (part, text) in [("pre", &semver.pre), ("build", &semver.build)] {
        if text.len() > MAX_VERSION_LABEL_LEN {
            return Err(format!(
                "{part} is {} bytes, at most {MAX_VERSION_LABEL_LEN} allowed",
                text.len()
            ));
        }
    }
    let pre = Prerelease::new(&semver.pre)
        .map_err(|e| format!("pre {:?} is not a semver pre-release: {e}", semver.pre))?;
    let build = BuildMetadata::new(&semver.build)
        .map_err(|e| format!("build {:?} is not semver build metadata: {e}", semver.build))?;
    Ok(Version {
        major: semver.major,
        minor: semver.minor,
        patch: semver.patch,
        pre,
        build,
    })
}

/// Converts a [`Version`] into its protobuf form.
pub fn version_to_proto(version: &Version) -> SemVer {
    SemVer {
        major: version.major,
        minor: version.minor,
        patch: version.patch,
        pre: version.pre.as_str().to_owned(),
        build: version.build.as_str().to_owned(),
    }
}

/// One dependency of a package.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DependencySpec {
    /// The package depended on.
    pub package: PackageName,
    /// The versions accepted.
    pub range: VersionRange,
    /// `true`: one version per node for every skill that shares it;
    /// `false`: private to the depending skill.
    pub shared: bool,
}

/// Resources a skill asks the host for (validated copy of
/// [`proto::Capabilities`]; 0 means "node default").
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Upper bound on linear memory, bytes, at most [`MAX_MEMORY_BYTES`].
    pub max_memory_bytes: u64,
    /// Per-call deadline, ms, at most [`MAX_CALL_DEADLINE_MS`].
    pub call_deadline_ms: u32,
    /// Extra host interfaces (`ns:pkg/interface[@version]`), sorted, no repeats.
    pub imports: Vec<String>,
    /// cgroup CPU weight, at most [`MAX_CPU_WEIGHT`].
    pub cpu_weight: u32,
}

impl Capabilities {
    fn from_proto(caps: proto::Capabilities) -> Result<Self, ManifestError> {
        if caps.max_memory_bytes > MAX_MEMORY_BYTES {
            return Err(invalid(
                "capabilities.max_memory_bytes",
                format!(
                    "{} is more than the {MAX_MEMORY_BYTES} a 32-bit wasm memory can address",
                    caps.max_memory_bytes
                ),
            ));
        }
        if caps.call_deadline_ms > MAX_CALL_DEADLINE_MS {
            return Err(invalid(
                "capabilities.call_deadline_ms",
                format!(
                    "{} is more than {MAX_CALL_DEADLINE_MS}",
                    caps.call_deadline_ms
                ),
            ));
        }
        if caps.cpu_weight > MAX_CPU_WEIGHT {
            return Err(invalid(
                "capabilities.cpu_weight",
                format!(
                    "{} is outside 1..={MAX_CPU_WEIGHT} (0 = node default)",
                    caps.cpu_weight
                ),
            ));
        }
        if caps.imports.len() > MAX_IMPORTS {
            return Err(invalid(
                "capabilities.imports",
                format!(
                    "{} imports, at most {MAX_IMPORTS} allowed",
                    caps.imports.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (index, import) in caps.imports.iter().enumerate() {
            let field = format!("capabilities.imports[{index}]");
            check_wit_path(import, false).map_err(|reason| invalid(&field, reason))?;
            if !seen.insert(import.clone()) {
                return Err(invalid(field, format!("{import:?} is listed twice")));
            }
        }
        Ok(Self {
            max_memory_bytes: caps.max_memory_bytes,
            call_deadline_ms: caps.call_deadline_ms,
            imports: seen.into_iter().collect(),
            cpu_weight: caps.cpu_weight,
        })
    }

    fn to_proto(&self) -> proto::Capabilities {
        proto::Capabilities {
            max_memory_bytes: self.max_memory_bytes,
            call_deadline_ms: self.call_deadline_ms,
            imports: self.imports.clone(),
            cpu_weight: self.cpu_weight,
        }
    }
}

/// Checks a WIT identifier: lowercase kebab-case words, each starting with a
/// letter (`image-codec`).
fn check_wit_ident(ident: &str) -> Result<(), String> {
    let ok = !ident.is_empty()
        && ident.split('-').all(|word| {
            word.starts_with(|c: char| c.is_ascii_lowercase())
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{ident:?} is not a WIT identifier (lowercase kebab-case words starting with a letter)"
        ))
    }
}

/// Checks `ns:pkg/item@semver` (the version optional unless `version_required`).
fn check_wit_path(text: &str, version_required: bool) -> Result<(), String> {
    const FORM: &str = "expected the form \"namespace:package/name@version\"";
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.len() > MAX_ABI_WORLD_LEN {
        return Err(format!(
            "{} bytes, at most {MAX_ABI_WORLD_LEN} allowed",
            text.len()
        ));
    }
    let (path, version) = match text.split_once('@') {
        Some((path, version)) => (path, Some(version)),
        None => (text, None),
    };
    match version {
        Some(version) => {
            Version::parse(version)
                .map_err(|e| format!("{text:?}: version {version:?} is not semver: {e}"))?;
        }
        None if version_required => return Err(format!("{text:?} has no @version; {FORM}")),
        None => {}
    }
    let (namespace, rest) = path
        .split_once(':')
        .ok_or_else(|| format!("{text:?} has no namespace; {FORM}"))?;
    let (package, item) = rest
        .split_once('/')
        .ok_or_else(|| format!("{text:?} has no /name; {FORM}"))?;
    for ident in [namespace, package, item] {
        check_wit_ident(ident).map_err(|e| format!("{text:?}: {e}"))?;
    }
    Ok(())
}

/// sha256 of each `chunk_size` piece of a blob, in order.
pub struct ChunkHashes;

impl ChunkHashes {
    /// The hash of each `chunk_size`-byte chunk of `blob` (the last may be
    /// short). A valid chunk size is never 0; 0 is treated as 1.
    pub fn compute(blob: &[u8], chunk_size: u32) -> Vec<[u8; 32]> {
        let size = usize::try_from(chunk_size).unwrap_or(usize::MAX).max(1);
        blob.chunks(size).map(digest).collect()
    }
}

/// A validated skill package manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// Reverse-DNS package name.
    pub name: PackageName,
    /// The version.
    pub version: Version,
    /// What it depends on, in the order published.
    pub dependencies: Vec<DependencySpec>,
    /// sha256 of the whole blob: its content address.
    pub sha256: [u8; 32],
    /// Blob size, bytes (1..=[`MAX_BLOB_SIZE`]).
    pub size: u64,
    /// Chunk size of `chunk_sha256`.
    pub chunk_size: u32,
    /// sha256 of each chunk, in order.
    pub chunk_sha256: Vec<[u8; 32]>,
    /// The WIT world the component targets (`ns:pkg/world@version`).
    pub abi_world: String,
    /// Version of the state schema the skill's snapshot writes.
    pub state_schema: u32,
    /// Resources asked for.
    pub capabilities: Capabilities,
    /// Free text for people.
    pub description: String,
}

fn hash32(field: impl Into<String>, bytes: &[u8]) -> Result<[u8; 32], ManifestError> {
    bytes.try_into().map_err(|_| ManifestError::HashLength {
        field: field.into(),
        len: bytes.len(),
    })
}

impl Manifest {
    /// Validates a decoded `SkillPackage`.
    pub fn from_proto(package: SkillPackage) -> Result<Self, ManifestError> {
        let len = package.encoded_len();
        if len > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Oversized {
                len,
                max: MAX_MANIFEST_BYTES,
            });
        }
        if package.package_name.is_empty() {
            return Err(ManifestError::Missing {
                field: "package_name".to_owned(),
            });
        }
        let name =
            PackageName::parse(&package.package_name).map_err(|source| ManifestError::Name {
                field: "package_name".to_owned(),
                source,
            })?;
        let version = package.version.as_ref().ok_or(ManifestError::Missing {
            field: "version".to_owned(),
        })?;
        let version = version_from_proto(version).map_err(|reason| invalid("version", reason))?;

        if package.dependencies.len() > MAX_DEPENDENCIES {
            return Err(invalid(
                "dependencies",
                format!(
                    "{} dependencies, at most {MAX_DEPENDENCIES} allowed",
                    package.dependencies.len()
                ),
            ));
        }
        let mut dependencies: Vec<DependencySpec> = Vec::with_capacity(package.dependencies.len());
        for (index, dep) in package.dependencies.iter().enumerate() {
            let field = |sub: &str| format!("dependencies[{index}].{sub}");
            if dep.package.is_empty() {
                return Err(ManifestError::Missing {
                    field: field("package"),
                });
            }
            let dep_name =
                PackageName::parse(&dep.package).map_err(|source| ManifestError::Name {
                    field: field("package"),
                    source,
                })?;
            if dep_name == name {
                return Err(ManifestError::SelfDependency {
                    field: field("package"),
                    package: dep_name,
                });
            }
            if dependencies.iter().any(|d| d.package == dep_name) {
                return Err(ManifestError::DuplicateDependency {
                    field: field("package"),
                    package: dep_name,
                });
            }
            let range =
                VersionRange::parse(&dep.version_range).map_err(|source| ManifestError::Range {
                    field: field("version_range"),
                    source,
                })?;
            dependencies.push(DependencySpec {
                package: dep_name,
                range,
                shared: dep.is_shared,
            });
        }

        let sha256 = hash32("sha256", &package.sha256)?;
        if package.size == 0 {
            return Err(invalid("size", "0: an empty blob is not a skill"));
        }
        if package.size > MAX_BLOB_SIZE {
            return Err(invalid(
                "size",
                format!("{} bytes, at most {MAX_BLOB_SIZE} allowed", package.size),
            ));
        }
        let chunk_size = package.chunk_size;
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(invalid(
                "chunk_size",
                format!(
                    "{chunk_size} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
                ),
            ));
        }
        let expected = package.size.div_ceil(u64::from(chunk_size));
        if expected != package.chunk_sha256.len() as u64 {
            return Err(ManifestError::ChunkCount {
                size: package.size,
                chunk_size,
                expected,
                found: package.chunk_sha256.len(),
            });
        }
        if package.chunk_sha256.len() > MAX_CHUNKS {
            return Err(invalid(
                "chunk_sha256",
                format!(
                    "{} chunks, at most {MAX_CHUNKS} allowed (use a larger chunk_size)",
                    package.chunk_sha256.len()
                ),
            ));
        }
        let chunk_sha256 = package
            .chunk_sha256
            .iter()
            .enumerate()
            .map(|(index, hash)| hash32(format!("chunk_sha256[{index}]"), hash))
            .collect::<Result<Vec<_>, _>>()?;

        check_wit_path(&package.abi_world, true).map_err(|reason| invalid("abi_world", reason))?;
        let capabilities = Capabilities::from_proto(package.capabilities.unwrap_or_default())?;
        if package.description.len() > MAX_DESCRIPTION_LEN {
            return Err(invalid(
                "description",
                format!(
                    "{} bytes, at most {MAX_DESCRIPTION_LEN} allowed",
                    package.description.len()
                ),
            ));
        }

        Ok(Self {
            name,
            version,
            dependencies,
            sha256,
            size: package.size,
            chunk_size,
            chunk_sha256,
            abi_world: package.abi_world,
            state_schema: package.state_schema,
            capabilities,
            description: package.description,
        })
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> SkillPackage {
        SkillPackage {
            package_name: self.name.to_string(),
            version: Some(version_to_proto(&self.version)),
            dependencies: self
                .dependencies
                .iter()
                .map(|d| proto::Dependency {
                    package: d.package.to_string(),
                    version_range: d.range.to_string(),
                    is_shared: d.shared,
                })
                .collect(),
            sha256: self.sha256.to_vec(),
            size: self.size,
            chunk_size: self.chunk_size,
            chunk_sha256: self.chunk_sha256.iter().map(|h| h.to_vec()).collect(),
            abi_world: self.abi_world.clone(),
            state_schema: self.state_schema,
            capabilities: Some(self.capabilities.to_proto()),
            description: self.description.clone(),
        }
    }

    /// Decodes and validates an encoded `SkillPackage`, refusing more than
    /// [`MAX_MANIFEST_BYTES`] before decoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Oversized {
                len: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let package =
            SkillPackage::decode(bytes).map_err(|e| ManifestError::Decode(e.to_string()))?;
        Self::from_proto(package)
    }

    /// The encoded `SkillPackage`.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Checks this manifest as a receiver would (fields are public, so it may
    /// have been changed since it was validated).
    pub fn validate(&self) -> Result<(), ManifestError> {
        Self::from_proto(self.to_proto()).map(|_| ())
    }

    /// A manifest for `blob`: its sha256, size and chunk hashes in
    /// [`DEFAULT_CHUNK_SIZE`] chunks (or larger ones when the blob would need
    /// more than [`MAX_CHUNKS`]), with an empty description; validated.
    pub fn for_blob(
        name: PackageName,
        version: Version,
        dependencies: Vec<DependencySpec>,
        blob: &[u8],
        abi_world: impl Into<String>,
        state_schema: u32,
        capabilities: Capabilities,
    ) -> Result<Self, ManifestError> {
        let size = blob.len() as u64;
        let mut chunk_size = DEFAULT_CHUNK_SIZE;
        while size.div_ceil(u64::from(chunk_size)) > MAX_CHUNKS as u64
            && chunk_size < MAX_CHUNK_SIZE
        {
            chunk_size *= 2;
        }
        let manifest = Self {
            name,
            version,
            dependencies,
            sha256: digest(blob),
            size,
            chunk_size,
            chunk_sha256: ChunkHashes::compute(blob, chunk_size),
            abi_world: abi_world.into(),
            state_schema,
            capabilities,
            description: String::new(),
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// `name@version`, as people and error messages write it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The byte range of chunk `index` within the blob, if there is such a chunk.
    pub fn chunk_range(&self, index: usize) -> Option<std::ops::Range<u64>> {
        if index >= self.chunk_sha256.len() {
            return None;
        }
        let start = index as u64 * u64::from(self.chunk_size);
        let end = (start + u64::from(self.chunk_size)).min(self.size);
        Some(start..end)
    }
}

/// Why a signed manifest was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestVerifyError {
    /// The envelope's signatures or shape: nothing was decoded.
    #[error("manifest signature: {0}")]
    Signature(#[from] VerifyError),
    /// Signed by the trust root, but not a valid manifest.
    #[error("signed manifest is invalid: {0}")]
    Invalid(#[from] ManifestError),
}

/// A manifest together with the envelope that carried it and the trusted keys
/// that signed it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedManifest {
    /// The validated manifest (decoded from `envelope.payload`).
    pub manifest: Manifest,
    /// The envelope as signed; keep and forward this, not a re-encoding.
    pub envelope: SignedEnvelope,
    /// Keys whose signatures verified (sorted); empty for a freshly signed
    /// manifest that was not checked against a trust root.
    pub signers: Vec<KeyId>,
}

impl SignedManifest {
    /// Validates `manifest` and signs its encoding with each of `keys`.
    pub fn sign(manifest: Manifest, keys: &[&PublisherKey]) -> Result<Self, ManifestError> {
        manifest.validate()?;
        let envelope = sign_envelope(PayloadKind::SkillPackage, manifest.encode(), keys);
        let signers: BTreeSet<KeyId> = keys.iter().map(|k| k.key_id().clone()).collect();
        Ok(Self {
            manifest,
            envelope,
            signers: signers.into_iter().collect(),
        })
    }

    /// Checks the envelope's signatures against `trust` first, then decodes
    /// and validates the manifest.
    pub fn verify(
        envelope: SignedEnvelope,
        trust: &TrustRoot,
    ) -> Result<Self, ManifestVerifyError> {
        let signers = trust.verify(&envelope, PayloadKind::SkillPackage)?;
        let manifest = Manifest::decode(&envelope.payload)?;
        Ok(Self {
            manifest,
            envelope,
            signers,
        })
    }

    /// [`SignedManifest::verify`] of an encoded envelope (at most
    /// [`crate::trust::MAX_ENVELOPE_BYTES`]).
    pub fn verify_bytes(bytes: &[u8], trust: &TrustRoot) -> Result<Self, ManifestVerifyError> {
        Self::verify(decode_envelope(bytes)?, trust)
    }

    /// The encoded envelope.
    pub fn envelope_bytes(&self) -> Vec<u8> {
        self.envelope.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::KEY_BYTES;
    use crate::trust::MAX_ENVELOPE_BYTES;
    use crate::trust::TrustedPublisher;
    use proptest::prelude::*;

    fn name(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    fn sample() -> Manifest {
        Manifest::for_blob(
            name("com.example.counter"),
            Version::parse("1.2.3-rc.1+sha.5114f85").unwrap(),
            vec![
                DependencySpec {
                    package: name("com.example.codec"),
                    range: VersionRange::parse("^1.2").unwrap(),
                    shared: true,
                },
                DependencySpec {
                    package: name("com.example.util"),
                    range: VersionRange::parse(">=0.3 <0.5").unwrap(),
                    shared: false,
                },
            ],
            &vec![7u8; 3 * DEFAULT_CHUNK_SIZE as usize + 10],
            "clawmesh:skill/skill@0.1.0",
            2,
            Capabilities {
                max_memory_bytes: 64 << 20,
                call_deadline_ms: 500,
                imports: vec!["clawmesh:skill/log".to_owned()],
                cpu_weight: 100,
            },
        )
        .unwrap()
    }

    fn expect_err(mutate: impl FnOnce(&mut SkillPackage)) -> ManifestError {
        let mut p = sample().to_proto();
        mutate(&mut p);
        Manifest::from_proto(p).unwrap_err()
    }

    #[test]
    fn package_names() {
        for good in [
            "com.clawhub.image-process",
            "io.x",
            "a1.b-2.c",
            "org.example.a.b.c.d.e",
        ] {
            assert!(PackageName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "single",
            "Com.example.x",
            "com..x",
            "com.-x",
            "com.x-",
            "com.ex_ample",
            "1com.example",
            "a.b.c.d.e.f.g.h.i",
            "com.example.ünï",
        ] {
            let err = PackageName::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("is not a package name"),
                "{bad}: {err}"
            );
        }
        let long_label = format!("com.{}", "a".repeat(64));
        assert!(PackageName::parse(&long_label).is_err());
        let long = format!("com.{}", vec!["a".repeat(60); 4].join("."));
        assert!(long.len() > MAX_PACKAGE_NAME_LEN && PackageName::parse(&long).is_err());
    }

    #[test]
    fn round_trips_through_bytes() {
        let m = sample();
        assert_eq!(m.chunk_sha256.len(), 4);
        assert_eq!(m.chunk_range(3), Some(3 * 1024 * 1024..m.size));
        assert_eq!(m.chunk_range(4), None);
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.id(), "com.example.counter@1.2.3-rc.1+sha.5114f85");
    }

    #[test]
    fn chunk_hashes_cover_the_blob() {
        let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let hashes = ChunkHashes::compute(&blob, MIN_CHUNK_SIZE);
        assert_eq!(hashes.len(), 4);
        assert_eq!(hashes[3], digest(&blob[3 * 65536..]));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(ManifestError, &str)> = vec![
            (
                expect_err(|p| p.package_name.clear()),
                "package_name: missing",
            ),
            (
                expect_err(|p| p.package_name = "Bad".into()),
                "package_name: \"Bad\" is not a package name",
            ),
            (expect_err(|p| p.version = None), "version: missing"),
            (
                expect_err(|p| p.version.as_mut().unwrap().pre = "a..b".into()),
                "version: pre \"a..b\"",
            ),
            (
                expect_err(|p| p.dependencies[1].version_range = "^1.x.y".into()),
                "dependencies[1].version_range: \"^1.x.y\" is not a semver range: ",
            ),
            (
                expect_err(|p| p.dependencies[0].package = "nope".into()),
                "dependencies[0].package: ",
            ),
            (
                expect_err(|p| p.dependencies[0].package.clear()),
                "dependencies[0].package: missing",
            ),
            (
                expect_err(|p| p.dependencies[0].package = "com.example.counter".into()),
                "dependencies[0].package: a package cannot depend on itself",
            ),
            (
                expect_err(|p| p.dependencies[1].package = "com.example.codec".into()),
                "dependencies[1].package: com.example.codec is already a dependency",
            ),
            (
                expect_err(|p| p.sha256.pop().map(drop).unwrap_or(())),
                "sha256: a sha256 is 32 bytes, got 31",
            ),
            (
                expect_err(|p| p.chunk_sha256[2] = vec![1; 33]),
                "chunk_sha256[2]: a sha256 is 32 bytes, got 33",
            ),
            (expect_err(|p| p.size = 0), "size: 0: an empty blob"),
            (expect_err(|p| p.size = MAX_BLOB_SIZE + 1), "size: "),
            (expect_err(|p| p.chunk_size = 3 << 20), "chunk_size: "),
            (expect_err(|p| p.chunk_size = 32 * 1024), "chunk_size: "),
            (
                expect_err(|p| {
                    p.chunk_sha256.pop();
                }),
                "chunk_sha256: a 3145738-byte blob in 1048576-byte chunks has 4 chunks, the manifest lists 3",
            ),
            (
                expect_err(|p| p.abi_world = "clawmesh:skill/skill".into()),
                "abi_world: \"clawmesh:skill/skill\" has no @version",
            ),
            (
                expect_err(|p| p.abi_world = "skill@0.1.0".into()),
                "abi_world: \"skill@0.1.0\" has no namespace",
            ),
            (
                expect_err(|p| p.abi_world = "a:B/c@1.0.0".into()),
                "abi_world: ",
            ),
            (
                expect_err(|p| p.abi_world.clear()),
                "abi_world: must not be empty",
            ),
            (
                expect_err(|p| p.description = "x".repeat(MAX_DESCRIPTION_LEN + 1)),
                "description: ",
            ),
            (
                expect_err(|p| p.capabilities.as_mut().unwrap().cpu_weight = 10_001),
                "capabilities.cpu_weight: ",
            ),
            (
                expect_err(|p| {
                    p.capabilities.as_mut().unwrap().max_memory_bytes = MAX_MEMORY_BYTES + 1
                }),
                "capabilities.max_memory_bytes: ",
            ),
            (
                expect_err(|p| {
                    p.capabilities.as_mut().unwrap().call_deadline_ms = MAX_CALL_DEADLINE_MS + 1
                }),
                "capabilities.call_deadline_ms: ",
            ),
            (
                expect_err(|p| {
                    p.capabilities
                        .as_mut()
                        .unwrap()
                        .imports
                        .push("clawmesh:skill/log".into())
                }),
                "capabilities.imports[1]: \"clawmesh:skill/log\" is listed twice",
            ),
            (
                expect_err(|p| p.capabilities.as_mut().unwrap().imports[0] = "log".into()),
                "capabilities.imports[0]: ",
            ),
            (
                expect_err(|p| {
                    p.dependencies = (0..=MAX_DEPENDENCIES)
                        .map(|i| proto::Dependency {
                            package: format!("com.dep.d{i}"),
                            version_range: "*".into(),
                            is_shared: false,
                        })
                        .collect()
                }),
                "dependencies: 65 dependencies",
            ),
        ];
        for (err, prefix) in cases {
            assert!(
                err.to_string().starts_with(prefix),
                "expected {prefix:?}, got {err}"
            );
        }
    }

    #[test]
    fn oversized_bytes_are_refused_before_decoding() {
        let bytes = vec![0u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Oversized { .. })
        ));
        assert!(matches!(
            Manifest::decode(&[0xff, 0xff]),
            Err(ManifestError::Decode(_))
        ));
    }

    #[test]
    fn for_blob_refuses_an_empty_blob() {
        let err = Manifest::for_blob(
            name("com.example.x"),
            Version::new(1, 0, 0),
            vec![],
            &[],
            "clawmesh:skill/skill@0.1.0",
            1,
            Capabilities::default(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("size: 0"), "{err}");
    }

    #[test]
    fn signed_manifest_verifies_and_refuses_forgeries() {
        let key = PublisherKey::from_secret_bytes(&[1; KEY_BYTES]);
        let stranger = PublisherKey::from_secret_bytes(&[2; KEY_BYTES]);
        let trust = TrustRoot::new(1, [TrustedPublisher::new("a", key.verifying_key())]).unwrap();
        let signed = SignedManifest::sign(sample(), &[&key]).unwrap();

        let ok = SignedManifest::verify_bytes(&signed.envelope_bytes(), &trust).unwrap();
        assert_eq!(ok.manifest, sample());
        assert_eq!(ok.signers, vec![key.key_id().clone()]);

        let forged = SignedManifest::sign(sample(), &[&stranger]).unwrap();
        assert!(matches!(
            SignedManifest::verify(forged.envelope, &trust),
            Err(ManifestVerifyError::Signature(VerifyError::UnknownKey(_)))
        ));

        let mut tampered = signed.envelope.clone();
        tampered.payload[3] ^= 1;
        assert!(matches!(
            SignedManifest::verify(tampered, &trust),
            Err(ManifestVerifyError::Signature(
                VerifyError::BadSignature { .. }
            ))
        ));

        // Signed by a trusted key but invalid: refused as invalid, not as a forgery.
        let mut bad = sample().to_proto();
        bad.size = 0;
        let env = sign_envelope(PayloadKind::SkillPackage, bad.encode_to_vec(), &[&key]);
        assert!(matches!(
            SignedManifest::verify(env, &trust),
            Err(ManifestVerifyError::Invalid(
                ManifestError::InvalidField { .. }
            ))
        ));

        assert!(SignedManifest::verify_bytes(&[0xff; 3], &trust).is_err());
        assert!(SignedManifest::verify_bytes(&vec![0; MAX_ENVELOPE_BYTES + 1], &trust).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Manifest::decode(&bytes);
        }

        #[test]
        fn mutated_valid_manifests_never_panic(
            index in 0usize..4096,
            byte in any::<u8>(),
        ) {
            let mut bytes = sample().encode();
            let i = index % bytes.len();
            bytes[i] = byte;
            if let Ok(m) = Manifest::decode(&bytes) {
                // Whatever is accepted re-encodes to something accepted.
                prop_assert_eq!(Manifest::decode(&m.encode()), Ok(m));
            }
        }

        #[test]
        fn package_name_parse_never_panics(text in ".{0,80}") {
            let _ = PackageName::parse(&text);
        }
    }
}
