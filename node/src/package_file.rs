//! The package file `clawmesh pack` writes: a signed manifest and the blob it
//! names, in one protobuf message (`clawmesh.v1.PackageFile`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clawmesh_crdt::proto::v1::{PackageFile, SignedEnvelope};
use prost::Message;

/// First bytes of every package file's `magic` field.
pub const PACKAGE_MAGIC: &[u8; 8] = b"CLAWPKG1";
/// Largest package file read: the largest blob plus room for the manifest.
pub const MAX_PACKAGE_FILE_BYTES: u64 = clawmesh_crdt::manifest::MAX_BLOB_SIZE + (1 << 20);

/// Why a package file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackageFileError {
    /// Could not read it at all.
    #[error("cannot read package file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Bigger than any valid package.
    #[error("package file {path} is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// Not protobuf, or cut short.
    #[error("package file {path} is truncated or not a clawmesh package: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A protobuf, but not ours.
    #[error(
        "package file {path} has no clawmesh package magic (is it a .wasm? pack it with `clawmesh pack` first)"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// No manifest inside.
    #[error("package file {path} holds no signed manifest")]
    NoManifest {
        /// The file.
        path: PathBuf,
    },
}

/// A decoded package file; nothing in it is verified yet.
#[derive(Debug, Clone)]
pub struct UnverifiedPackage {
    /// The signed manifest, as found.
    pub manifest: SignedEnvelope,
    /// The blob, as found.
    pub blob: Vec<u8>,
}

/// Reads and decodes a package file, refusing oversized files before reading.
pub fn read_package_file(path: &Path) -> Result<UnverifiedPackage, PackageFileError> {
    let read_err = |source| PackageFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_PACKAGE_FILE_BYTES {
        return Err(PackageFileError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_PACKAGE_FILE_BYTES,
        });
    }
    let bytes = fs::read(path).map_err(read_err)?;
    decode_package(&bytes).map_err(|e| e.at(path))
}

/// What is wrong with package bytes, before a path is attached.
#[derive(Debug)]
pub enum DecodeProblem {
    /// protobuf decode failed.
    Malformed(String),
    /// magic missing.
    BadMagic,
    /// manifest missing.
    NoManifest,
}

impl DecodeProblem {
    fn at(self, path: &Path) -> PackageFileError {
        let path = path.to_path_buf();
        match self {
            Self::Malformed(reason) => PackageFileError::Malformed { path, reason },
            Self::BadMagic => PackageFileError::BadMagic { path },
            Self::NoManifest => PackageFileError::NoManifest { path },
        }
    }
}

/// Decodes package bytes (already bounded by the caller).
pub fn decode_package(bytes: &[u8]) -> Result<UnverifiedPackage, DecodeProblem> {
    let file = PackageFile::decode(bytes).map_err(|e| DecodeProblem::Malformed(e.to_string()))?;
    if file.magic != PACKAGE_MAGIC {
        return Err(DecodeProblem::BadMagic);
    }
    let manifest = file.manifest.ok_or(DecodeProblem::NoManifest)?;
    Ok(UnverifiedPackage {
        manifest,
        blob: file.blob,
    })
}

/// Encodes a package.
pub fn encode_package(manifest: SignedEnvelope, blob: Vec<u8>) -> Vec<u8> {
    PackageFile {
        magic: PACKAGE_MAGIC.to_vec(),
        manifest: Some(manifest),
        blob,
    }
    .encode_to_vec()
}

/// Writes a file atomically (temp file beside it, fsync, rename) with `mode`.
pub fn write_file_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pkg");
        fs::write(&p, b"\0asm\x0d\0\x01\0garbage").unwrap();
        let e = read_package_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("truncated or not a clawmesh package")
                || e.contains("no clawmesh package magic"),
            "{e}"
        );

        let full = encode_package(SignedEnvelope::default(), vec![1, 2, 3]);
        fs::write(&p, &full[..full.len() - 2]).unwrap();
        let e = read_package_file(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");

        let no_magic = PackageFile {
            magic: b"nope".to_vec(),
            manifest: None,
            blob: vec![],
        }
        .encode_to_vec();
        fs::write(&p, no_magic).unwrap();
        assert!(matches!(
            read_package_file(&p),
            Err(PackageFileError::BadMagic { .. })
        ));

        fs::write(&p, encode_package(SignedEnvelope::default(), vec![9; 10])).unwrap();
        let pkg = read_package_file(&p).unwrap();
        assert_eq!(pkg.blob, vec![9; 10]);
    }
}
