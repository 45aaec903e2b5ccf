//! `DocStore`: the mesh documents' files in the data dir.
//!
//! One file per document, `<dir>/<name>.automerge`: incremental saves are
//! appended (automerge loads concatenated saves), compacted saves replace
//! the file atomically (temp file, fsync, rename, fsync of the directory).
//! The status board is `<dir>/status-board.pb`, always replaced whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use clawmesh_crdt::DocumentId;

/// Largest document file loaded at start-up.
pub const MAX_DOC_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// A document file operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DocStoreError {
    /// A file or the directory could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A document file is larger than `MAX_DOC_FILE_BYTES`.
    #[error("document file {path} is {len} bytes, more than {MAX_DOC_FILE_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
}

/// The directory holding the mesh documents.
#[derive(Clone, Debug)]
pub struct DocStore {
    dir: PathBuf,
}

impl DocStore {
    /// Opens (creating if needed) the document directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, DocStoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(Self { dir })
    }

    /// The file of `doc`.
    pub fn path(&self, doc: DocumentId) -> PathBuf {
        self.dir.join(format!("{}.automerge", doc.name()))
    }

    /// The file of the status board.
    pub fn status_board_path(&self) -> PathBuf {
        self.dir.join("status-board.pb")
    }

    /// The saved bytes of every document that has a file.
    pub fn load_all(&self) -> Result<Vec<(DocumentId, Vec<u8>)>, DocStoreError> {
        let mut docs = Vec::new();
        for doc in DocumentId::all() {
            if let Some(bytes) = read_bounded(&self.path(doc))? {
                docs.push((doc, bytes));
            }
        }
        Ok(docs)
    }

    /// The saved status board, if there is one.
    pub fn load_status_board(&self) -> Result<Option<Vec<u8>>, DocStoreError> {
        read_bounded(&self.status_board_path())
    }

    /// Replaces the status board's file, atomically.
    pub fn replace_status_board(&self, bytes: &[u8]) -> Result<(), DocStoreError> {
        self.replace_file(&self.status_board_path(), bytes)
    }

    /// Appends an incremental save and syncs it to disk.
    pub fn append(&self, doc: DocumentId, bytes: &[u8]) -> Result<(), DocStoreError> {
        let path = self.path(doc);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        file.write_all(bytes)
            .map_err(io_err("appending to", &path))?;
        file.sync_data().map_err(io_err("syncing", &path))
    }

    /// Replaces the document's file with a compacted save, atomically.
    pub fn replace(&self, doc: DocumentId, bytes: &[u8]) -> Result<(), DocStoreError> {
        self.replace_file(&self.path(doc), bytes)
    }

    /// Temp file, fsync, rename over `path`, fsync of the directory.
    fn replace_file(&self, path: &Path, bytes: &[u8]) -> Result<(), DocStoreError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        file.write_all(bytes).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err("renaming into", path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &self.dir))
    }
}

/// The file's bytes (`None` if it does not exist), refusing a file over
/// [`MAX_DOC_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, DocStoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let len = file.metadata().map_err(io_err("inspecting", path))?.len();
    if len > MAX_DOC_FILE_BYTES {
        return Err(DocStoreError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_DOC_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    Ok(Some(bytes))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DocStoreError + use<> {
    let path = path.to_path_buf();
    move |source| DocStoreError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_accumulate_and_replace_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::open(dir.path().join("docs")).unwrap();
        assert!(store.load_all().unwrap().is_empty());
        store.append(DocumentId::Catalog, b"ab").unwrap();
        store.append(DocumentId::Catalog, b"cd").unwrap();
        assert_eq!(
            store.load_all().unwrap(),
            vec![(DocumentId::Catalog, b"abcd".to_vec())]
        );
        store.replace(DocumentId::Catalog, b"X").unwrap();
        assert_eq!(
            store.load_all().unwrap(),
            vec![(DocumentId::Catalog, b"X".to_vec())]
        );
    }

    #[test]
    fn the_status_board_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::open(dir.path()).unwrap();
        assert_eq!(store.load_status_board().unwrap(), None);
        store.replace_status_board(b"one").unwrap();
        store.replace_status_board(b"two").unwrap();
        assert_eq!(store.load_status_board().unwrap(), Some(b"two".to_vec()));
        assert!(store.load_all().unwrap().is_empty());
    }
}
