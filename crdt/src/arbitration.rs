//! Deterministic, leaderless release arbitration.
//!
//! The target version of each package is a pure function of two sets: the
//! valid signed intents and the quarantine set. Both are sets (no order, no
//! duplicates), so every node that has merged the same documents computes the
//! same targets, whatever order the merges happened in. The rules, in the
//! words the next engineer needs, are in `docs/MESH.md` ("Arbitration"):
//!
//! 1. Intents of a package are replayed in ascending `order_key()` order
//!    (clock, then author key id, then digest of the signed bytes); an intent
//!    seen twice (same digest) counts once.
//! 2. An intent naming a version that is quarantined is skipped, unless its
//!    clock is above the quarantine's `lift_above_clock`.
//! 3. Deploy sets the target when there is none or its version is higher
//!    than the current target's; a Deploy to a lower or equal version is
//!    ignored (no downgrade without an explicit Rollback). Deploy ends a pause.
//! 4. Rollback sets the target to its version, whatever it is, and ends a pause.
//! 5. Pause keeps the target as it is and marks it paused.

use std::collections::{BTreeMap, BTreeSet};

use semver::Version;

use crate::intent::{IntentAction, SignedIntent};
use crate::manifest::PackageName;
use crate::signing::KeyId;

/// What arbitration needs of one intent: its package, version, action and
/// total-order key. Built from a verified [`SignedIntent`]; tests and the
/// simulator may build it directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentFacts<K> {
    /// Package the intent is about.
    pub package: K,
    /// Version it names.
    pub version: Version,
    /// What it asks for.
    pub action: IntentAction,
    /// The author's logical clock.
    pub clock: u64,
    /// The author's key id (second part of the order key).
    pub author: KeyId,
    /// sha256 of the signed bytes (identity and last part of the order key).
    pub digest: [u8; 32],
}

impl<K> IntentFacts<K> {
    /// The total order every node sorts intents by.
    pub fn order_key(&self) -> (u64, &KeyId, &[u8; 32]) {
        (self.clock, &self.author, &self.digest)
    }
}

impl From<&SignedIntent> for IntentFacts<PackageName> {
    fn from(signed: &SignedIntent) -> Self {
        IntentFacts {
            package: signed.intent.package.clone(),
            version: signed.intent.version.clone(),
            action: signed.intent.action,
            clock: signed.intent.clock,
            author: signed.intent.author.clone(),
            digest: signed.digest,
        }
    }
}

/// A package's decided target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The version nodes should run.
    pub version: Version,
    /// Digest of the Deploy or Rollback intent that set `version`.
    pub decided_by: [u8; 32],
    /// A later Pause intent froze the target: nodes keep what they run.
    pub paused: bool,
}

/// One quarantined version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// Distinct nodes that reported the version Failed.
    pub failed_nodes: usize,
    /// The highest intent clock for the package that any failing node knew
    /// when it reported; only an intent for the version with a clock above
    /// this lifts the quarantine.
    pub lift_above_clock: u64,
}

/// Quarantined (package, version) pairs, derived from the status board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineSet<K: Ord> {
    entries: BTreeMap<(K, Version), Quarantine>,
}

impl<K: Ord> Default for QuarantineSet<K> {
    fn default() -> Self {
        QuarantineSet {
            entries: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> QuarantineSet<K> {
    /// An empty set.
    pub fn new() -> Self {
        QuarantineSet::default()
    }

    /// Quarantines `version` of `package` (replacing any previous entry).
    pub fn insert(&mut self, package: K, version: Version, quarantine: Quarantine) {
        self.entries.insert((package, version), quarantine);
    }

    /// The quarantine of `version` of `package`, if any.
    pub fn get(&self, package: &K, version: &Version) -> Option<&Quarantine> {
        // BTreeMap lookups need an owned tuple key; quarantines are few.
        self.entries
            .iter()
            .find(|((p, v), _)| p == package && v == version)
            .map(|(_, quarantine)| quarantine)
    }

    /// Every entry, in (package, version) order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Version, &Quarantine)> {
        self.entries.iter().map(|((p, v), q)| (p, v, q))
    }

    /// Number of quarantined versions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is quarantined.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `intent` is held back by a quarantine of the version it names.
    pub fn blocks(&self, intent: &IntentFacts<K>) -> bool {
        self.get(&intent.package, &intent.version)
            .is_some_and(|quarantine| intent.clock <= quarantine.lift_above_clock)
    }
}

/// One node's report that a version of a package failed on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureReport<'a, K> {
    /// The reporting node's id.
    pub node: &'a str,
    /// Package that failed.
    pub package: &'a K,
    /// Version that failed.
    pub version: &'a Version,
    /// The highest intent clock for the package the node knew when it reported.
    pub known_intent_clock: u64,
}

/// Derives the quarantine set: a version is quarantined when at least
/// `threshold` distinct nodes report it failed. `threshold == 0` disables
/// quarantine. A node reporting the same version twice counts once.
pub fn derive_quarantine<'a, K: Ord + Clone + 'a>(
    reports: impl IntoIterator<Item = FailureReport<'a, K>>,
    threshold: usize,
) -> QuarantineSet<K> {
    let mut by_version: BTreeMap<(&'a K, &'a Version), (BTreeSet<&'a str>, u64)> = BTreeMap::new();
    for report in reports {
        let (nodes, clock) = by_version
            .entry((report.package, report.version))
            .or_default();
        nodes.insert(report.node);
        *clock = (*clock).max(report.known_intent_clock);
    }
    let mut set = QuarantineSet::new();
    if threshold == 0 {
        return set;
    }
    for ((package, version), (nodes, clock)) in by_version {
        if nodes.len() >= threshold {
            set.insert(
                package.clone(),
                version.clone(),
                Quarantine {
                    failed_nodes: nodes.len(),
                    lift_above_clock: clock,
                },
            );
        }
    }
    set
}

/// The target of every package that has one, from the valid intents and the
/// quarantine set. Duplicates (same digest) count once; input order is
/// irrelevant.
pub fn arbitrate<K: Ord + Clone>(
    intents: impl IntoIterator<Item = IntentFacts<K>>,
    quarantine: &QuarantineSet<K>,
) -> BTreeMap<K, Target> {
    let mut by_package: BTreeMap<K, Vec<IntentFacts<K>>> = BTreeMap::new();
    for intent in intents {
        by_package
            .entry(intent.package.clone())
            .or_default()
            .push(intent);
    }
    let mut targets = BTreeMap::new();
    for (package, mut intents) in by_package {
        intents.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        intents.dedup_by(|a, b| a.digest == b.digest);
        if let Some(target) = arbitrate_package(&intents, quarantine) {
            targets.insert(package, target);
        }
    }
    targets
}

/// Arbitrates one package's intents, already sorted by order key and
/// free of duplicates.
fn arbitrate_package<K: Ord + Clone>(
    sorted: &[IntentFacts<K>],
    quarantine: &QuarantineSet<K>,
) -> Option<Target> {
    let mut target: Option<Target> = None;
    for intent in sorted {
        if quarantine.blocks(intent) {
            continue;
        }
        match intent.action {
            IntentAction::Deploy => {
                let upgrade = target
                    .as_ref()
                    .is_none_or(|current| intent.version > current.version);
                if upgrade {
                    target = Some(Target {
                        version: intent.version.clone(),
                        decided_by: intent.digest,
                        paused: false,
                    });
                }
            }
            IntentAction::Rollback => {
                target = Some(Target {
                    version: intent.version.clone(),
                    decided_by: intent.digest,
                    paused: false,
                });
            }
            IntentAction::Pause => {
                if let Some(current) = target.as_mut() {
                    current.paused = true;
                }
            }
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Pkg = u8;

    fn author(n: u8) -> KeyId {
        KeyId::from_public_bytes(&[n; 32])
    }

    fn intent(
        package: Pkg,
        version: (u64, u64),
        action: IntentAction,
        clock: u64,
        who: u8,
    ) -> IntentFacts<Pkg> {
        let mut digest = [0u8; 32];
        digest[0] = package;
        digest[1..9].copy_from_slice(&version.0.to_le_bytes());
        digest[9..17].copy_from_slice(&version.1.to_le_bytes());
        digest[17] = action as u8;
        digest[18..26].copy_from_slice(&clock.to_le_bytes());
        digest[26] = who;
        IntentFacts {
            package,
            version: Version::new(version.0, version.1, 0),
            action,
            clock,
            author: author(who),
            digest,
        }
    }

    fn target_version(targets: &BTreeMap<Pkg, Target>, package: Pkg) -> Option<Version> {
        targets.get(&package).map(|t| t.version.clone())
    }

    #[test]
    fn highest_ordered_deploy_wins() {
        let intents = vec![
            intent(1, (1, 0), IntentAction::Deploy, 1, 1),
            intent(1, (2, 0), IntentAction::Deploy, 2, 1),
        ];
        let targets = arbitrate(intents, &QuarantineSet::new());
        assert_eq!(target_version(&targets, 1), Some(Version::new(2, 0, 0)));
    }

    #[test]
    fn later_deploy_to_lower_version_is_ignored() {
        let intents = vec![
            intent(1, (2, 0), IntentAction::Deploy, 1, 1),
            intent(1, (1, 0), IntentAction::Deploy, 5, 2),
        ];
        let targets = arbitrate(intents, &QuarantineSet::new());
        assert_eq!(target_version(&targets, 1), Some(Version::new(2, 0, 0)));
    }

    #[test]
    fn rollback_downgrades_and_a_replayed_older_intent_does_not() {
        let old = intent(1, (1, 0), IntentAction::Deploy, 1, 1);
        let intents = vec![
            old.clone(),
            intent(1, (2, 0), IntentAction::Deploy, 2, 1),
            intent(1, (1, 0), IntentAction::Rollback, 3, 2),
            old,
        ];
        let targets = arbitrate(intents, &QuarantineSet::new());
        assert_eq!(target_version(&targets, 1), Some(Version::new(1, 0, 0)));
        assert_eq!(targets[&1].decided_by[17], IntentAction::Rollback as u8);
    }

    #[test]
    fn concurrent_conflicting_deploys_resolve_by_author_then_digest() {
        // Same clock: the higher author key id orders last; a higher version wins anyway.
        let a = intent(1, (3, 0), IntentAction::Deploy, 7, 1);
        let b = intent(1, (2, 0), IntentAction::Rollback, 7, 2);
        let first = arbitrate(vec![a.clone(), b.clone()], &QuarantineSet::new());
        let second = arbitrate(vec![b.clone(), a.clone()], &QuarantineSet::new());
        assert_eq!(first, second);
        let last = if a.order_key() > b.order_key() {
            &a
        } else {
            &b
        };
        assert_eq!(first[&1].decided_by, last.digest);
    }

    #[test]
    fn pause_freezes_and_a_later_deploy_resumes() {
        let paused = arbitrate(
            vec![
                intent(1, (1, 0), IntentAction::Deploy, 1, 1),
                intent(1, (0, 0), IntentAction::Pause, 2, 1),
                intent(1, (0, 5), IntentAction::Deploy, 3, 1),
            ],
            &QuarantineSet::new(),
        );
        assert_eq!(paused[&1].version, Version::new(1, 0, 0));
        assert!(paused[&1].paused);
        let resumed = arbitrate(
            vec![
                intent(1, (1, 0), IntentAction::Deploy, 1, 1),
                intent(1, (0, 0), IntentAction::Pause, 2, 1),
                intent(1, (2, 0), IntentAction::Deploy, 3, 1),
            ],
            &QuarantineSet::new(),
        );
        assert_eq!(resumed[&1].version, Version::new(2, 0, 0));
        assert!(!resumed[&1].paused);
    }

    #[test]
    fn pause_without_target_is_no_target() {
        let targets = arbitrate(
            vec![intent(1, (1, 0), IntentAction::Pause, 1, 1)],
            &QuarantineSet::new(),
        );
        assert!(targets.is_empty());
    }

    #[test]
    fn quarantine_falls_back_and_only_a_newer_intent_lifts_it() {
        let intents = vec![
            intent(1, (1, 0), IntentAction::Deploy, 1, 1),
            intent(1, (2, 0), IntentAction::Deploy, 2, 1),
        ];
        let reports = [
            ("n1", 2),
            ("n2", 2),
            ("n2", 2), // the same node twice counts once
            ("n3", 3),
        ];
        let package = 1u8;
        let bad = Version::new(2, 0, 0);
        let quarantine = derive_quarantine(
            reports.iter().map(|(node, clock)| FailureReport {
                node,
                package: &package,
                version: &bad,
                known_intent_clock: *clock,
            }),
            3,
        );
        assert_eq!(
            quarantine.get(&1, &bad),
            Some(&Quarantine {
                failed_nodes: 3,
                lift_above_clock: 3
            })
        );
        let targets = arbitrate(intents.clone(), &quarantine);
        assert_eq!(target_version(&targets, 1), Some(Version::new(1, 0, 0)));
        // An intent for 2.0 at clock 3 does not lift (not above 3); at clock 4 it does.
        let mut retry = intents.clone();
        retry.push(intent(1, (2, 0), IntentAction::Deploy, 3, 2));
        assert_eq!(
            target_version(&arbitrate(retry.clone(), &quarantine), 1),
            Some(Version::new(1, 0, 0))
        );
        retry.push(intent(1, (2, 0), IntentAction::Deploy, 4, 2));
        assert_eq!(
            target_version(&arbitrate(retry, &quarantine), 1),
            Some(Version::new(2, 0, 0))
        );
    }

    #[test]
    fn below_threshold_or_zero_threshold_is_no_quarantine() {
        let package = 1u8;
        let bad = Version::new(2, 0, 0);
        let reports = || {
            ["a", "b"].into_iter().map(|node| FailureReport {
                node,
                package: &package,
                version: &bad,
                known_intent_clock: 1,
            })
        };
        assert!(derive_quarantine(reports(), 3).is_empty());
        assert!(derive_quarantine(reports(), 0).is_empty());
        assert_eq!(derive_quarantine(reports(), 2).len(), 1);
    }

    fn arb_action() -> impl Strategy<Value = IntentAction> {
        prop_oneof![
            4 => Just(IntentAction::Deploy),
            2 => Just(IntentAction::Rollback),
            1 => Just(IntentAction::Pause),
        ]
    }

    fn arb_intent() -> impl Strategy<Value = IntentFacts<Pkg>> {
        (0u8..3, (0u64..3, 0u64..3), arb_action(), 0u64..8, 0u8..3)
            .prop_map(|(p, v, a, c, w)| intent(p, v, a, c, w))
    }

    fn arb_quarantine() -> impl Strategy<Value = QuarantineSet<Pkg>> {
        proptest::collection::vec((0u8..3, (0u64..3, 0u64..3), 0u64..8), 0..4).prop_map(|entries| {
            let mut set = QuarantineSet::new();
            for (p, (major, minor), clock) in entries {
                set.insert(
                    p,
                    Version::new(major, minor, 0),
                    Quarantine {
                        failed_nodes: 1,
                        lift_above_clock: clock,
                    },
                );
            }
            set
        })
    }

    proptest! {
        #[test]
        fn any_permutation_and_any_merge_split_gives_the_same_targets(
            intents in proptest::collection::vec(arb_intent(), 0..24),
            quarantine in arb_quarantine(),
            seed in any::<u64>(),
            split in 0usize..24,
        ) {
            let expected = arbitrate(intents.clone(), &quarantine);
            // A permutation: rotate and reverse by the seed.
            let mut permuted = intents.clone();
            if !permuted.is_empty() {
                let len = permuted.len();
                permuted.rotate_left((seed as usize) % len);
            }
            if seed % 2 == 0 {
                permuted.reverse();
            }
            prop_assert_eq!(&arbitrate(permuted.clone(), &quarantine), &expected);
            // Two merge batches, the second re-delivering some of the first (duplicates).
            let cut = split.min(permuted.len());
            let (first, second) = permuted.split_at(cut);
            let mut merged: Vec<IntentFacts<Pkg>> = second.to_vec();
            merged.extend(first.iter().cloned());
            merged.extend(first.iter().take(3).cloned());
            prop_assert_eq!(&arbitrate(merged, &quarantine), &expected);
        }

        #[test]
        fn a_later_lower_deploy_never_replaces_a_higher_target(
            intents in proptest::collection::vec(arb_intent(), 1..24),
            quarantine in arb_quarantine(),
            who in 0u8..3,
        ) {
            let before = arbitrate(intents.clone(), &quarantine);
            for (package, target) in &before {
                if target.version.major == 0 && target.version.minor == 0 {
                    continue;
                }
                let lower = if target.version.minor > 0 {
                    (target.version.major, target.version.minor - 1)
                } else {
                    (target.version.major - 1, 2)
                };
                let max_clock = intents.iter().map(|i| i.clock).max().unwrap_or(0);
                let mut more = intents.clone();
                more.push(intent(*package, lower, IntentAction::Deploy, max_clock + 1, who));
                let after = arbitrate(more, &quarantine);
                prop_assert_eq!(after.get(package), Some(target));
            }
        }

        #[test]
        fn a_newest_rollback_to_an_unquarantined_version_decides(
            intents in proptest::collection::vec(arb_intent(), 0..24),
            quarantine in arb_quarantine(),
            package in 0u8..3,
            version in (0u64..3, 0u64..3),
        ) {
            let max_clock = intents.iter().map(|i| i.clock).max().unwrap_or(0);
            let rollback = intent(package, version, IntentAction::Rollback, max_clock + 1, 9);
            let blocked = quarantine.blocks(&rollback);
            let mut more = intents.clone();
            more.push(rollback.clone());
            let after = arbitrate(more, &quarantine);
            if !blocked {
                prop_assert_eq!(after.get(&package).map(|t| t.decided_by), Some(rollback.digest));
            }
        }

        #[test]
        fn quarantined_versions_are_targets_only_through_a_lifting_intent(
            intents in proptest::collection::vec(arb_intent(), 0..24),
            quarantine in arb_quarantine(),
        ) {
            let targets = arbitrate(intents.clone(), &quarantine);
            for (package, target) in &targets {
                if let Some(q) = quarantine.get(package, &target.version) {
                    let decider = intents.iter().find(|i| i.digest == target.decided_by).unwrap();
                    prop_assert!(decider.clock > q.lift_above_clock);
                }
                let decider = intents.iter().find(|i| i.digest == target.decided_by).unwrap();
                prop_assert_eq!(&decider.version, &target.version);
                prop_assert_eq!(decider.package, *package);
            }
        }
    }
}
