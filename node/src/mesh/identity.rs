//! The node's persistent libp2p identity: one ed25519 keypair in the data dir.
//!
//! The key is what other nodes know us by (our `PeerId`), so it must survive
//! restarts and must never be replaced behind the operator's back: a file that
//! is unreadable, corrupt or readable by others is refused, not regenerated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::{DecodingError, KeyType, Keypair};

/// File name of the identity key inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Largest identity file we read; a protobuf ed25519 keypair is 68 bytes, so
/// anything near this size is not ours.
pub const MAX_IDENTITY_FILE_LEN: u64 = 1024;

/// Mode the identity file is created with: readable and writable by its owner only.
pub const IDENTITY_FILE_MODE: u32 = 0o600;

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data dir could not be created.
    #[error("creating data dir {path}: {source}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The identity file exists but could not be inspected or read.
    #[error("reading identity file {path}: {source}")]
    Read {
        /// The identity file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The identity path is a symlink, directory or other non-regular file.
    #[error("identity file {path} is not a regular file; refusing to use it")]
    NotAFile {
        /// The identity file.
        path: PathBuf,
    },
    /// Group or other users may access the identity file.
    #[error(
        "identity file {path} has mode {mode:04o}; group and others must have no access (chmod 600 it)"
    )]
    Permissions {
        /// The identity file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The identity file is far larger than any keypair.
    #[error(
        "identity file {path} is {len} bytes, more than {MAX_IDENTITY_FILE_LEN}; it is not a keypair"
    )]
    TooLarge {
        /// The identity file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The identity file does not hold a protobuf-encoded libp2p keypair.
    #[error(
        "identity file {path} is not a valid libp2p keypair ({source}); it was left untouched: move it away to generate a new identity"
    )]
    Corrupt {
        /// The identity file.
        path: PathBuf,
        /// The decoder's complaint.
        source: DecodingError,
    },
    /// The identity file holds a keypair of a type other than ed25519.
    #[error("identity file {path} holds a {key_type:?} key; clawmesh node identities are ed25519")]
    NotEd25519 {
        /// The identity file.
        path: PathBuf,
        /// The key type found.
        key_type: KeyType,
    },
    /// A freshly generated keypair could not be encoded.
    #[error("encoding the new identity keypair: {0}")]
    Encode(#[source] DecodingError),
    /// Writing the new identity file failed.
    #[error("writing identity file {path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Path of the identity file inside `data_dir`.
pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// Loads the node identity from `<data_dir>/identity.key`, generating and
/// storing a new ed25519 keypair only when no file exists there.
pub fn load_or_create_identity(data_dir: &Path) -> Result<Keypair, IdentityError> {
    fs::create_dir_all(data_dir).map_err(|source| IdentityError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = identity_path(data_dir);
    match fs::symlink_metadata(&path) {
        Ok(_) => load_identity(&path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_identity(&path),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Loads an existing identity file, refusing one that others can read, that
/// is not a regular file, or that does not decode to an ed25519 keypair.
pub fn load_identity(path: &Path) -> Result<Keypair, IdentityError> {
    let read_err = |source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(IdentityError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_IDENTITY_FILE_LEN {
        return Err(IdentityError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_IDENTITY_FILE_LEN).read_to_end(&mut bytes))
        .map_err(read_err)?;
    let keypair =
        Keypair::from_protobuf_encoding(&bytes).map_err(|source| IdentityError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
    match keypair.key_type() {
        KeyType::Ed25519 => Ok(keypair),
        key_type => Err(IdentityError::NotEd25519 {
            path: path.to_path_buf(),
            key_type,
        }),
    }
}

/// Generates an ed25519 keypair and stores it at `path` atomically: written
/// to a temporary file with mode 0600, synced, renamed into place, and the
/// directory synced, so a crash leaves either no file or a whole one.
fn create_identity(path: &Path) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(IdentityError::Encode)?;
    let tmp = path.with_extension("key.tmp");
    let write_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| IdentityError::Write { path: p, source }
    };
    // A temporary file left by a crash holds a key nobody ever used.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(&tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(IDENTITY_FILE_MODE)
        .open(&tmp)
        .map_err(write_err(&tmp))?;
    file.write_all(&bytes).map_err(write_err(&tmp))?;
    file.sync_all().map_err(write_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_err(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(dir))?;
    }
    tracing::info!(path = %path.display(), peer = %keypair.public().to_peer_id(), "generated new node identity");
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn identity_persists_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_identity(dir.path()).unwrap();
        let second = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        let mode = fs::metadata(identity_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, IDENTITY_FILE_MODE);
    }

    #[test]
    fn corrupt_identity_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        let garbage = b"not a keypair at all".to_vec();
        fs::write(&path, &garbage).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), garbage);
    }

    #[test]
    fn empty_identity_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        fs::write(&path, b"").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn world_readable_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_identity(dir.path()).unwrap();
        let path = identity_path(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn oversized_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        fs::write(&path, vec![0u8; MAX_IDENTITY_FILE_LEN as usize + 1]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn symlinked_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere.key");
        fs::write(&real, b"x").unwrap();
        std::os::unix::fs::symlink(&real, identity_path(dir.path())).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn stale_temporary_file_does_not_block_creation() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = identity_path(dir.path()).with_extension("key.tmp");
        fs::write(&tmp, b"half-written").unwrap();
        let key = load_or_create_identity(dir.path()).unwrap();
        assert!(!tmp.exists());
        let again = load_identity(&identity_path(dir.path())).unwrap();
        assert_eq!(key.public(), again.public());
    }
}
