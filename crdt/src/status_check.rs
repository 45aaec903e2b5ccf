//! A status record checked without decoding it: the fast path for records
//! new to a board.
//!
//! Every node receives every node's new records (docs/MESH.md, "Status
//! board"), and decoding one with prost into the domain types cost ~15
//! allocations (every string, every blob hash, the package map) to keep
//! only (node id, seq, failures). [`check_record`] walks the encoded record
//! once, checks what [`NodeStatus::decode`] checks, and returns those
//! three, allocating only for a failure it reports. It answers only for
//! records in the shape the core writes (each field at most once, no
//! unknown fields, no pre-release or build labels); anything else gets
//! `None` and goes through [`NodeStatus::decode`], which accepts or refuses
//! it as before. So the walk never accepts a record `decode` would refuse
//! and never reads one differently (proptests below).
//!
//! [`NodeStatus::decode`]: crate::status_board::NodeStatus::decode

use semver::Version;

use crate::manifest::PackageName;
use crate::release_state::{Health, ReleaseState};
use crate::status::{MAX_BLOBS_HELD, MAX_DETAIL_BYTES, valid_node_id};
use crate::status_board::{MAX_NODE_STATUS_BYTES, MAX_PACKAGES_PER_NODE};
use crate::status_frame::{Field, next_field};

/// (package, failed version, intent clock) of one failure a record reports.
pub type Failure = (PackageName, Version, u64);

/// What the board keeps of a valid record, read in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedRecord<'a> {
    /// The node.
    pub node_id: &'a str,
    /// Its seq.
    pub seq: u64,
    /// The failures it reports, in package order.
    pub failures: Vec<Failure>,
}

/// Marks field `number` (1..=63) seen; `None` if it was already.
fn once(seen: &mut u64, number: u32) -> Option<()> {
    let bit = 1u64.checked_shl(number)?;
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    Some(())
}

/// (node id, seq, failures) of a record that [`NodeStatus::decode`] accepts,
/// read without decoding it; `None` when the record is not in the plain
/// shape the walk answers for (the caller decodes it then).
///
/// [`NodeStatus::decode`]: crate::status_board::NodeStatus::decode
pub fn check_record(bytes: &[u8]) -> Option<CheckedRecord<'_>> {
    if bytes.len() > MAX_NODE_STATUS_BYTES {
        return None;
    }
    let mut buf = bytes;
    let mut seen = 0u64;
    let mut node_id = "";
    let mut seq = 0;
    // Package names in record order, to refuse one listed twice (a record
    // lists a handful; a quadratic check is cheapest).
    let mut packages: Vec<&str> = Vec::new();
    let mut failures = Vec::new();
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            Field::Bytes(1, id) => {
                once(&mut seen, 1)?;
                node_id = std::str::from_utf8(id).ok()?;
            }
            Field::Varint(2, value) => {
                once(&mut seen, 2)?;
                seq = value;
            }
            Field::Bytes(3, entry) => {
                if packages.len() >= MAX_PACKAGES_PER_NODE {
                    return None;
                }
                let (package, failure) = check_entry(entry)?;
                if packages.contains(&package) {
                    return None;
                }
                packages.push(package);
                failures.extend(failure);
            }
            _ => return None,
        }
    }
    if !valid_node_id(node_id) {
        return None;
    }
    // `decode` keeps packages in a map: failures come in package order.
    failures.sort_by(|a: &Failure, b: &Failure| a.0.cmp(&b.0));
    Some(CheckedRecord {
        node_id,
        seq,
        failures,
    })
}

/// One `PackageStatusEntry`: its package name and the failure it reports.
fn check_entry(mut buf: &[u8]) -> Option<(&str, Option<Failure>)> {
    let mut seen = 0u64;
    let mut package = "";
    let mut status = None;
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            Field::Bytes(1, name) => {
                once(&mut seen, 1)?;
                package = std::str::from_utf8(name).ok()?;
            }
            Field::Bytes(2, body) => {
                once(&mut seen, 2)?;
                status = Some(body);
            }
            _ => return None,
        }
    }
    let name = PackageName::parse(package).ok()?;
    let failed = check_status(status?)?;
    Some((
        package,
        failed.map(|(version, clock)| (name, version, clock)),
    ))
}

/// One `PackageStatus`: checked as `PackageStatus::from_wire` does; the
/// failed version it reports (`failed_version`, or `version` when the state
/// is failed) with its intent clock.
fn check_status(mut buf: &[u8]) -> Option<Option<(Version, u64)>> {
    let mut seen = 0u64;
    let mut state = "";
    let mut health = "";
    let mut version = None;
    let mut failed_version = None;
    let mut blobs = 0;
    let mut clock = 0;
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            Field::Bytes(1, text) => {
                once(&mut seen, 1)?;
                state = std::str::from_utf8(text).ok()?;
            }
            Field::Bytes(number @ 2..=4, body) => {
                once(&mut seen, number)?;
                let parsed = check_semver(body)?;
                match number {
                    2 => version = Some(parsed),
                    4 => failed_version = Some(parsed),
                    _ => {}
                }
            }
            Field::Bytes(5, text) => {
                once(&mut seen, 5)?;
                health = std::str::from_utf8(text).ok()?;
            }
            Field::Varint(6, _) => once(&mut seen, 6)?,
            Field::Bytes(7, blob) => {
                blobs += 1;
                if blob.len() != 32 || blobs > MAX_BLOBS_HELD {
                    return None;
                }
            }
            Field::Varint(8, value) => {
                once(&mut seen, 8)?;
                clock = value;
            }
            Field::Bytes(9, text) => {
                once(&mut seen, 9)?;
                if text.len() > MAX_DETAIL_BYTES {
                    return None;
                }
                std::str::from_utf8(text).ok()?;
            }
            _ => return None,
        }
    }
    let state = ReleaseState::parse(state)?;
    Health::parse(health)?;
    let failed = failed_version.or(match state {
        ReleaseState::Failed => version,
        _ => None,
    });
    Some(failed.map(|version| (version, clock)))
}

/// A `SemVer` without labels (one with labels goes the decoding way).
fn check_semver(mut buf: &[u8]) -> Option<Version> {
    let mut seen = 0u64;
    let mut parts = [0u64; 3];
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            Field::Varint(number @ 1..=3, value) => {
                once(&mut seen, number)?;
                parts[number as usize - 1] = value;
            }
            // An empty label is what proto3 writes for none; anything in
            // it goes the decoding way.
            Field::Bytes(4 | 5, []) => {}
            _ => return None,
        }
    }
    Some(Version::new(parts[0], parts[1], parts[2]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PackageStatus;
    use crate::status_board::NodeStatus;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn state() -> impl Strategy<Value = ReleaseState> {
        prop::sample::select(ReleaseState::ALL.to_vec())
    }

    fn version() -> impl Strategy<Value = Option<Version>> {
        prop::option::of((0u64..3, 0u64..3, 0u64..3).prop_map(|(a, b, c)| Version::new(a, b, c)))
    }

    fn status() -> impl Strategy<Value = PackageStatus> {
        (
            state(),
            version(),
            version(),
            version(),
            0u64..5,
            prop::collection::vec(any::<[u8; 32]>(), 0..3),
            "[a-z ]{0,12}",
        )
            .prop_map(
                |(state, version, running, failed_version, clock, blobs_held, detail)| {
                    PackageStatus {
                        state,
                        version,
                        running,
                        failed_version,
                        health: Health::Healthy,
                        updated_at_ms: clock * 7,
                        blobs_held,
                        known_intent_clock: clock,
                        detail,
                    }
                },
            )
    }

    fn record() -> impl Strategy<Value = NodeStatus> {
        (
            "node-[0-9]{1,4}",
            any::<u64>(),
            prop::collection::btree_map(
                "[a-z]{1,6}\\.[a-z]{1,6}".prop_map(|n| n.parse::<PackageName>().unwrap()),
                status(),
                0..4,
            ),
        )
            .prop_map(|(node_id, seq, packages)| NodeStatus {
                node_id,
                seq,
                packages,
            })
    }

    /// What `decode` makes of the same bytes, in the walk's terms.
    fn decoded(bytes: &[u8]) -> Option<(String, u64, Vec<Failure>)> {
        let record = NodeStatus::decode(bytes).ok()?;
        let failures = record
            .packages
            .iter()
            .filter_map(|(package, status)| {
                status
                    .failed()
                    .map(|v| (package.clone(), v.clone(), status.known_intent_clock))
            })
            .collect();
        Some((record.node_id, record.seq, failures))
    }

    #[test]
    fn unusual_shapes_go_the_decoding_way() {
        let mut packages = BTreeMap::new();
        let mut labelled = PackageStatus {
            state: ReleaseState::Failed,
            version: Some(Version::parse("1.0.0-rc.1").unwrap()),
            running: None,
            failed_version: None,
            health: Health::Unknown,
            updated_at_ms: 0,
            blobs_held: vec![],
            known_intent_clock: 3,
            detail: String::new(),
        };
        packages.insert("com.example.a".parse().unwrap(), labelled.clone());
        let record = NodeStatus {
            node_id: "n".into(),
            seq: 1,
            packages,
        };
        let bytes = record.encode();
        assert_eq!(check_record(&bytes), None);
        assert!(decoded(&bytes).is_some());
        // Without the label the walk answers, with the failure.
        labelled.version = Some(Version::new(1, 0, 0));
        let mut plain = record.clone();
        plain
            .packages
            .insert("com.example.a".parse().unwrap(), labelled);
        let bytes = plain.encode();
        let checked = check_record(&bytes).unwrap();
        assert_eq!(
            checked.failures,
            vec![("com.example.a".parse().unwrap(), Version::new(1, 0, 0), 3)]
        );
        // A field repeated, an unknown field, a bad node id: not answered.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&[0x10, 0x05]);
        assert_eq!(check_record(&twice), None);
        let mut unknown = bytes.clone();
        unknown.extend_from_slice(&[0x20, 0x01]);
        assert_eq!(check_record(&unknown), None);
        let bad_id = NodeStatus {
            node_id: "a/b".into(),
            ..plain
        };
        assert_eq!(check_record(&bad_id.encode()), None);
    }

    proptest! {
        /// Records the core writes take the walk, which reads them as
        /// `decode` does.
        #[test]
        fn written_records_take_the_walk(record in record()) {
            let bytes = record.encode();
            let checked = check_record(&bytes);
            prop_assert!(checked.is_some());
            let checked = checked.unwrap();
            prop_assert_eq!(
                Some((checked.node_id.to_string(), checked.seq, checked.failures)),
                decoded(&bytes)
            );
        }

        /// On a written record with any byte changed, cut or appended, the
        /// walk either declines or reads what `decode` reads (so it never
        /// accepts what `decode` refuses).
        #[test]
        fn the_walk_never_disagrees_with_decode(
            record in record(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
            tail in prop::collection::vec(any::<u8>(), 0..6),
        ) {
            let mut bytes = record.encode();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                if cut {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
            }
            bytes.extend_from_slice(&tail);
            if let Some(checked) = check_record(&bytes) {
                prop_assert_eq!(
                    Some((checked.node_id.to_string(), checked.seq, checked.failures)),
                    decoded(&bytes)
                );
            }
        }

        /// Random bytes: the same.
        #[test]
        fn random_bytes_never_disagree(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Some(checked) = check_record(&bytes) {
                prop_assert_eq!(
                    Some((checked.node_id.to_string(), checked.seq, checked.failures)),
                    decoded(&bytes)
                );
            }
        }
    }
}
