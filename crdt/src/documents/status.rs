//! The status documents: node id → package → what that node reports.
//!
//! Key `<node id>/<package>`, value an encoded `PackageStatus` (mesh.proto).
//! Only the node itself writes its keys, so a key never sees concurrent
//! writers; statuses are not signed (see docs/MESH.md, "Limits").

use std::collections::BTreeMap;

use prost::Message as _;
use semver::Version;

use super::{
    DocumentId, MeshDocument, RejectedEntry, WriteError, best_value, read_entries, status_shard,
};
use crate::arbitration::FailureReport;
use crate::manifest::{PackageName, version_from_proto, version_to_proto};
use crate::proto::v1 as wire;
use crate::release_state::{Health, ReleaseState};

/// Bound on the bytes of a node id.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Bound on the blobs one status entry lists.
pub const MAX_BLOBS_HELD: usize = 64;
/// Bound on the bytes of a status detail.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// One node's report on one package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageStatus {
    /// Release state.
    pub state: ReleaseState,
    /// The version the state is about.
    pub version: Option<Version>,
    /// The version serving requests.
    pub running: Option<Version>,
    /// The version whose last attempt failed here.
    pub failed_version: Option<Version>,
    /// Health of `running`.
    pub health: Health,
    /// The node's clock when it reported (informative only).
    pub updated_at_ms: u64,
    /// sha256 of this package's blobs the node holds.
    pub blobs_held: Vec<[u8; 32]>,
    /// Highest intent clock for the package the node knew when it reported.
    pub known_intent_clock: u64,
    /// Why, for people.
    pub detail: String,
}

impl PackageStatus {
    /// The version this report says failed, if any: the `failed_version`, or
    /// the `version` of a Failed state.
    pub fn failed(&self) -> Option<&Version> {
        self.failed_version.as_ref().or(match self.state {
            ReleaseState::Failed => self.version.as_ref(),
            _ => None,
        })
    }

    fn to_wire(&self) -> wire::PackageStatus {
        let mut detail = self.detail.clone();
        truncate_utf8(&mut detail, MAX_DETAIL_BYTES);
        wire::PackageStatus {
            state: self.state.as_str().to_string(),
            version: self.version.as_ref().map(version_to_proto),
            running: self.running.as_ref().map(version_to_proto),
            failed_version: self.failed_version.as_ref().map(version_to_proto),
            health: self.health.as_str().to_string(),
            updated_at_ms: self.updated_at_ms,
            blobs_held: self
                .blobs_held
                .iter()
                .take(MAX_BLOBS_HELD)
                .map(|b| b.to_vec())
                .collect(),
            known_intent_clock: self.known_intent_clock,
            detail,
        }
    }

    fn from_wire(status: wire::PackageStatus) -> Result<Self, String> {
        let state = ReleaseState::parse(&status.state)
            .ok_or_else(|| format!("unknown state {:?}", status.state))?;
        let health = Health::parse(&status.health)
            .ok_or_else(|| format!("unknown health {:?}", status.health))?;
        if status.blobs_held.len() > MAX_BLOBS_HELD {
            return Err(format!(
                "{} blobs listed, at most {MAX_BLOBS_HELD}",
                status.blobs_held.len()
            ));
        }
        let blobs_held = status
            .blobs_held
            .iter()
            .map(|b| <[u8; 32]>::try_from(b.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "a blob hash is not 32 bytes".to_string())?;
        if status.detail.len() > MAX_DETAIL_BYTES {
            return Err(format!("detail over {MAX_DETAIL_BYTES} bytes"));
        }
        Ok(PackageStatus {
            state,
            version: status
                .version
                .as_ref()
                .map(version_from_proto)
                .transpose()?,
            running: status
                .running
                .as_ref()
                .map(version_from_proto)
                .transpose()?,
            failed_version: status
                .failed_version
                .as_ref()
                .map(version_from_proto)
                .transpose()?,
            health,
            updated_at_ms: status.updated_at_ms,
            blobs_held,
            known_intent_clock: status.known_intent_clock,
            detail: status.detail,
        })
    }
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

/// Node id → package → status, as read from all status shards.
pub type StatusTable = BTreeMap<String, BTreeMap<PackageName, PackageStatus>>;

/// The status document key of `node_id`'s entry for `package`.
pub fn status_key(node_id: &str, package: &PackageName) -> String {
    format!("{node_id}/{}", package.as_str())
}

/// Why a status could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusWriteError {
    /// The node id is empty, too long or contains '/'.
    #[error("node id {0:?} is empty, over {MAX_NODE_ID_BYTES} bytes or contains '/'")]
    BadNodeId(String),
    /// `doc` is not the node's status shard.
    #[error("node {node_id} belongs in status shard {expected}, not {found}")]
    WrongShard {
        /// The node.
        node_id: String,
        /// Its shard.
        expected: u32,
        /// The document passed.
        found: DocumentId,
    },
    /// The document refused the write.
    #[error(transparent)]
    Document(#[from] WriteError),
}

fn valid_node_id(node_id: &str) -> bool {
    !node_id.is_empty() && node_id.len() <= MAX_NODE_ID_BYTES && !node_id.contains('/')
}

/// Writes `node_id`'s status of `package` into its shard `doc`.
pub fn write_status(
    doc: &mut MeshDocument,
    node_id: &str,
    package: &PackageName,
    status: &PackageStatus,
) -> Result<(), StatusWriteError> {
    if !valid_node_id(node_id) {
        return Err(StatusWriteError::BadNodeId(node_id.to_string()));
    }
    let expected = status_shard(node_id);
    if doc.id() != (DocumentId::Status { shard: expected }) {
        return Err(StatusWriteError::WrongShard {
            node_id: node_id.to_string(),
            expected,
            found: doc.id(),
        });
    }
    doc.put_bytes(
        &status_key(node_id, package),
        status.to_wire().encode_to_vec(),
    )?;
    Ok(())
}

/// Reads one status shard into `table`, rejecting malformed entries, entries
/// in the wrong shard and entries past `max_entries`.
pub fn read_status_into(
    doc: &MeshDocument,
    max_entries: usize,
    table: &mut StatusTable,
    rejected: &mut Vec<RejectedEntry>,
) {
    let id = doc.id();
    read_entries(doc, max_entries, rejected, |key, values| {
        let (node, package, status) = parse_status_entry(id, key, values)?;
        table.entry(node).or_default().insert(package, status);
        Ok(())
    });
}

fn parse_status_entry(
    id: DocumentId,
    key: &str,
    values: &[Option<Vec<u8>>],
) -> Result<(String, PackageName, PackageStatus), String> {
    let (node, package) = key
        .split_once('/')
        .ok_or_else(|| "key is not <node>/<package>".to_string())?;
    if !valid_node_id(node) {
        return Err("bad node id".to_string());
    }
    if id
        != (DocumentId::Status {
            shard: status_shard(node),
        })
    {
        return Err(format!(
            "node {node} belongs in shard {}",
            status_shard(node)
        ));
    }
    let package: PackageName = package
        .parse()
        .map_err(|err| format!("bad package name: {err}"))?;
    // Only the node writes its key, so conflicts mean a forgery or a reset
    // node: take the decodable value with the latest report, ties by bytes.
    let decode = |bytes: &[u8]| {
        wire::PackageStatus::decode(bytes)
            .map_err(|err| format!("malformed status: {err}"))
            .and_then(PackageStatus::from_wire)
    };
    let latest = |bytes: &[u8], status: &PackageStatus| {
        std::cmp::Reverse((status.updated_at_ms, bytes.to_vec()))
    };
    best_value(values, decode, latest).map(|status| (node.to_string(), package, status))
}

/// Every failure the table reports, for [`crate::arbitration::derive_quarantine`].
pub fn failure_reports(
    table: &StatusTable,
) -> impl Iterator<Item = FailureReport<'_, PackageName>> {
    table.iter().flat_map(|(node, packages)| {
        packages.iter().filter_map(move |(package, status)| {
            status.failed().map(|version| FailureReport {
                node,
                package,
                version,
                known_intent_clock: status.known_intent_clock,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::DocumentLimits;

    fn status(state: ReleaseState, failed: Option<Version>) -> PackageStatus {
        PackageStatus {
            state,
            version: Some(Version::new(1, 0, 0)),
            running: None,
            failed_version: failed,
            health: Health::Unknown,
            updated_at_ms: 1,
            blobs_held: vec![[3; 32]],
            known_intent_clock: 4,
            detail: "x".repeat(2 * MAX_DETAIL_BYTES),
        }
    }

    fn shard_of(node: &str) -> MeshDocument {
        let id = DocumentId::Status {
            shard: status_shard(node),
        };
        MeshDocument::new(id, &[1; 16], DocumentLimits::default())
    }

    #[test]
    fn status_round_trips_and_feeds_failure_reports() {
        let package: PackageName = "com.example.app".parse().unwrap();
        let mut doc = shard_of("node-a");
        write_status(
            &mut doc,
            "node-a",
            &package,
            &status(ReleaseState::Failed, None),
        )
        .unwrap();
        let mut table = StatusTable::new();
        let mut rejected = Vec::new();
        read_status_into(&doc, 10, &mut table, &mut rejected);
        assert!(rejected.is_empty(), "{rejected:?}");
        let read = &table["node-a"][&package];
        assert_eq!(read.state, ReleaseState::Failed);
        assert_eq!(read.detail.len(), MAX_DETAIL_BYTES);
        let reports: Vec<_> = failure_reports(&table).collect();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].version, &Version::new(1, 0, 0));
        assert_eq!(reports[0].known_intent_clock, 4);
    }

    #[test]
    fn wrong_shard_bad_node_and_malformed_entries_are_refused() {
        let package: PackageName = "com.example.app".parse().unwrap();
        let mut doc = shard_of("node-a");
        let other = (0..1000)
            .map(|n| format!("n{n}"))
            .find(|node| status_shard(node) != status_shard("node-a"))
            .unwrap();
        assert!(matches!(
            write_status(
                &mut doc,
                &other,
                &package,
                &status(ReleaseState::Active, None)
            ),
            Err(StatusWriteError::WrongShard { .. })
        ));
        assert!(matches!(
            write_status(
                &mut doc,
                "a/b",
                &package,
                &status(ReleaseState::Active, None)
            ),
            Err(StatusWriteError::BadNodeId(_))
        ));
        doc.put_bytes(&format!("{other}/com.example.app"), vec![])
            .unwrap();
        doc.put_bytes("node-a/com.example.app", vec![0x0a, 0x03, b'b', b'a', b'd'])
            .unwrap();
        doc.put_bytes("node-a/Not_A_Package", vec![]).unwrap();
        let mut table = StatusTable::new();
        let mut rejected = Vec::new();
        read_status_into(&doc, 10, &mut table, &mut rejected);
        assert!(table.is_empty());
        assert_eq!(rejected.len(), 3, "{rejected:?}");
    }
}
