//! The invariants a run must keep, the ground truth they are checked
//! against, and the record of what was checked and what failed.

use std::collections::{BTreeMap, BTreeSet};

use crate::network::NodeIndex;
use crate::report::{InvariantResult, Violation};
use crate::sim_peer::{Fact, PeerView};
use crate::trace::Trace;

/// Violations kept per run; later ones are only counted.
pub const MAX_VIOLATIONS: usize = 20;

/// After quiescence every live node has identical document heads.
pub const CONVERGED_HEADS: &str = "converged_heads";
/// After quiescence every live node has the same target for every package.
pub const CONVERGED_TARGETS: &str = "converged_targets";
/// Every valid intent submitted anywhere is held by every live node at the end.
pub const NO_INTENT_LOST: &str = "no_intent_lost";
/// No node ever targets a quarantined, unsigned or unknown version.
pub const TARGETS_VALID: &str = "targets_valid";
/// Only legal release state transitions.
pub const LEGAL_TRANSITIONS: &str = "legal_transitions";
/// Messages and documents stay within their bounds.
pub const BOUNDED_SIZES: &str = "bounded_sizes";

const ALL: [&str; 6] = [
    CONVERGED_HEADS,
    CONVERGED_TARGETS,
    NO_INTENT_LOST,
    TARGETS_VALID,
    LEGAL_TRANSITIONS,
    BOUNDED_SIZES,
];

/// Size bounds a run checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeBounds {
    /// Largest message a node may send.
    pub max_message_bytes: usize,
    /// Largest document a node may hold.
    pub max_document_bytes: usize,
}

/// What the checker knows to be true, learned from [`Fact`]s.
#[derive(Debug, Default)]
pub struct Oracle {
    /// `(package, version)` with a manifest signed by a trusted key.
    pub published: BTreeSet<(String, String)>,
    /// `(package, version)` named by an intent signed by a trusted key.
    pub released: BTreeSet<(String, String)>,
    /// Valid intents by id, with the node they were submitted on.
    pub intents: BTreeMap<String, NodeIndex>,
    /// Valid intents lost with their only holder's disk.
    pub lost_with_disk: BTreeSet<String>,
}

/// Records checks and violations of one run.
#[derive(Debug)]
pub struct Checker {
    seed: u64,
    bounds: SizeBounds,
    counts: BTreeMap<&'static str, (u64, u64)>,
    violations: Vec<Violation>,
    reported: BTreeSet<(&'static str, Vec<NodeIndex>)>,
    /// Ground truth.
    pub oracle: Oracle,
}

impl Checker {
    /// A checker for the run with `seed`.
    pub fn new(seed: u64, bounds: SizeBounds) -> Self {
        Checker {
            seed,
            bounds,
            counts: ALL.iter().map(|name| (*name, (0, 0))).collect(),
            violations: Vec::new(),
            reported: BTreeSet::new(),
            oracle: Oracle::default(),
        }
    }

    /// The size bounds.
    pub fn bounds(&self) -> SizeBounds {
        self.bounds
    }

    /// Counts one check of `invariant`; on failure records a violation (once
    /// per invariant and node set) with a trace excerpt.
    pub fn check(
        &mut self,
        invariant: &'static str,
        ok: bool,
        at_ms: u64,
        nodes: &[NodeIndex],
        detail: impl FnOnce() -> String,
        trace: &Trace,
    ) {
        let count = self.counts.entry(invariant).or_default();
        count.0 += 1;
        if ok {
            return;
        }
        count.1 += 1;
        if self.violations.len() >= MAX_VIOLATIONS
            || !self.reported.insert((invariant, nodes.to_vec()))
        {
            return;
        }
        self.violations.push(Violation {
            invariant: invariant.to_string(),
            seed: self.seed,
            at_ms,
            nodes: nodes.to_vec(),
            detail: detail(),
            trace: trace.excerpt(nodes),
        });
    }

    /// Learns a fact from `node`, checking those that are checks.
    pub fn learn(&mut self, at_ms: u64, node: NodeIndex, fact: Fact, trace: &Trace) {
        match fact {
            Fact::Published {
                package,
                version,
                trusted,
            } => {
                if trusted {
                    self.oracle.published.insert((package, version));
                }
            }
            Fact::IntentSubmitted {
                id,
                package,
                version,
                trusted,
            } => {
                if trusted {
                    self.oracle.released.insert((package, version));
                    self.oracle.intents.entry(id).or_insert(node);
                }
            }
            Fact::Transition {
                package,
                description,
                legal,
            } => self.check(
                LEGAL_TRANSITIONS,
                legal,
                at_ms,
                &[node],
                || format!("illegal transition of {package}: {description}"),
                trace,
            ),
            Fact::OverBound { description } => {
                self.check(BOUNDED_SIZES, false, at_ms, &[node], || description, trace);
            }
        }
    }

    /// Checks one message size.
    pub fn check_message(&mut self, at_ms: u64, node: NodeIndex, bytes: usize, trace: &Trace) {
        let max = self.bounds.max_message_bytes;
        self.check(
            BOUNDED_SIZES,
            bytes <= max,
            at_ms,
            &[node],
            || format!("node {node} sent a {bytes} B message (bound {max} B)"),
            trace,
        );
    }

    /// The invariants checked on every fresh view of a live node.
    pub fn check_view(&mut self, at_ms: u64, node: NodeIndex, view: &PeerView, trace: &Trace) {
        let max = self.bounds.max_document_bytes;
        self.check(
            BOUNDED_SIZES,
            view.largest_document_bytes <= max,
            at_ms,
            &[node],
            || {
                format!(
                    "node {node} holds a {} B document (bound {max} B)",
                    view.largest_document_bytes
                )
            },
            trace,
        );
        for (package, target) in &view.targets {
            let Some(version) = target else { continue };
            let key = (package.clone(), version.clone());
            let problem = if view.quarantined.contains(&key) {
                Some("quarantined on this node")
            } else if !self.oracle.published.contains(&key) {
                Some("never published with a trusted signature")
            } else if !self.oracle.released.contains(&key) {
                Some("named by no trusted intent")
            } else {
                None
            };
            self.check(
                TARGETS_VALID,
                problem.is_none(),
                at_ms,
                &[node],
                || {
                    format!(
                        "node {node} targets {package}@{version}: {}",
                        problem.unwrap_or("")
                    )
                },
                trace,
            );
        }
    }

    /// The invariants checked at the end over every live node's view.
    pub fn check_end(&mut self, at_ms: u64, views: &[(NodeIndex, PeerView)], trace: &Trace) {
        let Some((first_node, first)) = views.first() else {
            return;
        };
        for (node, view) in views.iter().skip(1) {
            let nodes = [*first_node, *node];
            self.check(
                CONVERGED_HEADS,
                view.heads == first.heads,
                at_ms,
                &nodes,
                || {
                    format!(
                        "nodes {first_node} and {node} hold different document heads at the end"
                    )
                },
                trace,
            );
            self.check(CONVERGED_TARGETS, view.targets == first.targets, at_ms, &nodes, || {
                format!(
                    "nodes {first_node} and {node} disagree on targets at the end: {:?} vs {:?}",
                    first.targets, view.targets
                )
            }, trace);
        }
        for (node, view) in views {
            let missing: Vec<&String> = self
                .oracle
                .intents
                .keys()
                .filter(|id| {
                    !self.oracle.lost_with_disk.contains(*id) && !view.intents.contains(*id)
                })
                .collect();
            let detail = || {
                format!(
                    "node {node} lacks {} valid intents, e.g. {:?}",
                    missing.len(),
                    missing.first()
                )
            };
            let ok = missing.is_empty();
            let detail = detail();
            self.check(NO_INTENT_LOST, ok, at_ms, &[*node], || detail, trace);
        }
    }

    /// Per-invariant counts and the violations, ending the run.
    pub fn finish(self) -> (Vec<InvariantResult>, Vec<Violation>) {
        let results = self
            .counts
            .into_iter()
            .map(|(name, (checks, violations))| InvariantResult {
                name: name.to_string(),
                checks,
                violations,
            })
            .collect();
        (results, self.violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        Checker::new(
            42,
            SizeBounds {
                max_message_bytes: 10,
                max_document_bytes: 100,
            },
        )
    }

    #[test]
    fn targets_must_be_published_released_and_not_quarantined() {
        let trace = Trace::default();
        let mut c = checker();
        let mut view = PeerView::default();
        view.targets.insert("p".into(), Some("1.0.0".into()));
        c.check_view(1, 0, &view, &trace);
        c.learn(
            2,
            0,
            Fact::Published {
                package: "p".into(),
                version: "1.0.0".into(),
                trusted: true,
            },
            &trace,
        );
        c.learn(
            2,
            0,
            Fact::IntentSubmitted {
                id: "i".into(),
                package: "p".into(),
                version: "1.0.0".into(),
                trusted: true,
            },
            &trace,
        );
        c.check_view(3, 1, &view, &trace);
        view.quarantined.insert(("p".into(), "1.0.0".into()));
        c.check_view(4, 2, &view, &trace);
        let (results, violations) = c.finish();
        assert_eq!(violations.len(), 2);
        assert!(violations[0].detail.contains("never published"));
        assert!(violations[1].detail.contains("quarantined"));
        assert_eq!(violations[0].seed, 42);
        let targets = results.iter().find(|r| r.name == TARGETS_VALID).unwrap();
        assert_eq!((targets.checks, targets.violations), (3, 2));
    }

    #[test]
    fn end_check_finds_divergence_and_missing_intents() {
        let trace = Trace::default();
        let mut c = checker();
        c.learn(
            0,
            3,
            Fact::IntentSubmitted {
                id: "i".into(),
                package: "p".into(),
                version: "1.0.0".into(),
                trusted: true,
            },
            &trace,
        );
        let mut a = PeerView {
            heads: vec![1],
            ..PeerView::default()
        };
        a.intents.insert("i".into());
        let b = PeerView {
            heads: vec![2],
            ..PeerView::default()
        };
        c.check_end(9, &[(0, a), (1, b)], &trace);
        let (_, violations) = c.finish();
        let names: Vec<&str> = violations.iter().map(|v| v.invariant.as_str()).collect();
        assert_eq!(names, vec![CONVERGED_HEADS, NO_INTENT_LOST]);
    }

    #[test]
    fn oversize_messages_and_illegal_transitions_are_violations() {
        let trace = Trace::default();
        let mut c = checker();
        c.check_message(0, 1, 10, &trace);
        c.check_message(0, 1, 11, &trace);
        c.learn(
            0,
            1,
            Fact::Transition {
                package: "p".into(),
                description: "a -> b".into(),
                legal: false,
            },
            &trace,
        );
        let (_, violations) = c.finish();
        assert_eq!(violations.len(), 2);
    }
}
