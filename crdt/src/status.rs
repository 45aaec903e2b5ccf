//! What one node reports about one package (`PackageStatus`), and the
//! failure reports the quarantine is derived from. The statuses travel on
//! the [`crate::status_board`]; they are not signed (see docs/MESH.md,
//! "Limits").

use std::collections::BTreeMap;

use semver::Version;

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

    pub(crate) fn to_wire(&self) -> wire::PackageStatus {
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

    pub(crate) fn from_wire(status: wire::PackageStatus) -> Result<Self, String> {
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

/// Node id → package → status.
pub type StatusTable = BTreeMap<String, BTreeMap<PackageName, PackageStatus>>;

/// Whether `node_id` can name a node: non-empty, at most
/// [`MAX_NODE_ID_BYTES`], no '/'.
pub(crate) fn valid_node_id(node_id: &str) -> bool {
    !node_id.is_empty() && node_id.len() <= MAX_NODE_ID_BYTES && !node_id.contains('/')
}

/// Every failure the statuses report, for [`crate::arbitration::derive_quarantine`].
pub fn failure_reports<'a>(
    statuses: impl Iterator<Item = (&'a String, &'a BTreeMap<PackageName, PackageStatus>)>,
) -> impl Iterator<Item = FailureReport<'a, PackageName>> {
    statuses.flat_map(|(node, packages)| {
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
    use crate::proto::v1 as wire;

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

    #[test]
    fn status_round_trips_truncated_and_feeds_failure_reports() {
        let package: PackageName = "com.example.app".parse().unwrap();
        let read = PackageStatus::from_wire(status(ReleaseState::Failed, None).to_wire()).unwrap();
        assert_eq!(read.state, ReleaseState::Failed);
        assert_eq!(read.detail.len(), MAX_DETAIL_BYTES);
        let mut table = StatusTable::new();
        table
            .entry("node-a".to_string())
            .or_default()
            .insert(package.clone(), read);
        table.entry("node-b".to_string()).or_default().insert(
            package,
            status(ReleaseState::Active, Some(Version::new(0, 9, 0))),
        );
        let reports: Vec<_> = failure_reports(table.iter()).collect();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].version, &Version::new(1, 0, 0));
        assert_eq!(reports[0].known_intent_clock, 4);
        assert_eq!(reports[1].version, &Version::new(0, 9, 0));
    }

    #[test]
    fn malformed_statuses_are_refused() {
        let good = status(ReleaseState::Active, None).to_wire();
        let unknown_state = wire::PackageStatus {
            state: "sleeping".into(),
            ..good.clone()
        };
        assert!(PackageStatus::from_wire(unknown_state).is_err());
        let short_blob = wire::PackageStatus {
            blobs_held: vec![vec![1; 31]],
            ..good.clone()
        };
        assert!(PackageStatus::from_wire(short_blob).is_err());
        let many_blobs = wire::PackageStatus {
            blobs_held: vec![vec![1; 32]; MAX_BLOBS_HELD + 1],
            ..good.clone()
        };
        assert!(PackageStatus::from_wire(many_blobs).is_err());
        let long_detail = wire::PackageStatus {
            detail: "y".repeat(MAX_DETAIL_BYTES + 1),
            ..good
        };
        assert!(PackageStatus::from_wire(long_detail).is_err());
    }
}
