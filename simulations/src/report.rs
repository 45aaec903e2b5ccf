//! What a run found: convergence, traffic, invariant results, samples over
//! time; as JSON (serde) and as a table for people.

use std::fmt::Write as _;

use serde::Serialize;

/// Traffic of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Messages the node sent (sync messages plus one per announcement copy).
    pub messages_sent: u64,
    /// Bytes the node sent.
    pub bytes_sent: u64,
    /// Messages delivered to the node.
    pub messages_received: u64,
    /// Bytes delivered to the node.
    pub bytes_received: u64,
    /// Messages to or from the node that the network lost.
    pub messages_dropped: u64,
    /// Bytes the node persisted.
    pub bytes_persisted: u64,
}

impl Traffic {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Traffic) {
        self.messages_sent += other.messages_sent;
        self.bytes_sent += other.bytes_sent;
        self.messages_received += other.messages_received;
        self.bytes_received += other.bytes_received;
        self.messages_dropped += other.messages_dropped;
        self.bytes_persisted += other.bytes_persisted;
    }
}

/// The mesh at one sampling instant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Virtual time.
    pub at_ms: u64,
    /// Live nodes.
    pub live: usize,
    /// Distinct document head sets among live nodes.
    pub distinct_heads: usize,
    /// Distinct target tables among live nodes.
    pub distinct_targets: usize,
    /// Fraction of live nodes whose targets equal the final targets.
    pub agreeing_fraction: f64,
}

/// One invariant and how it fared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvariantResult {
    /// Its name (see docs/SIMULATION.md).
    pub name: String,
    /// Number of times it was checked.
    pub checks: u64,
    /// Number of violations found.
    pub violations: u64,
}

/// One violation, with enough to reproduce and understand it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The invariant.
    pub invariant: String,
    /// The seed of the run (rerun with it to reproduce).
    pub seed: u64,
    /// Virtual time it was found.
    pub at_ms: u64,
    /// Nodes involved.
    pub nodes: Vec<usize>,
    /// What was wrong.
    pub detail: String,
    /// The last events touching the involved nodes.
    pub trace: Vec<String>,
}

/// Result of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Nodes simulated.
    pub nodes: usize,
    /// Virtual length of the run.
    pub duration_ms: u64,
    /// Time of the last timeline step.
    pub last_disruption_ms: u64,
    /// Whether all live nodes agreed (heads and targets) at the end.
    pub converged: bool,
    /// From the last timeline step to the moment from which all live nodes
    /// agreed until the end (`None`: they did not).
    pub convergence_ms: Option<u64>,
    /// Live nodes at the end.
    pub live_nodes: usize,
    /// Events the engine processed.
    pub events: u64,
    /// Traffic summed over nodes.
    pub total: Traffic,
    /// Traffic per node, by index.
    pub per_node: Vec<Traffic>,
    /// Largest message sent, bytes.
    pub largest_message_bytes: usize,
    /// Largest document seen on any node, bytes.
    pub largest_document_bytes: usize,
    /// Valid intents submitted during the run.
    pub intents_submitted: usize,
    /// Valid intents that were lost because the only node holding them lost
    /// its disk before sharing them (a scenario's doing, not a violation).
    pub intents_lost_with_disk: usize,
    /// The final target table (empty when nodes disagree).
    pub final_targets: Vec<(String, Option<String>)>,
    /// Each invariant's results.
    pub invariants: Vec<InvariantResult>,
    /// Violations (at most [`crate::invariants::MAX_VIOLATIONS`]).
    pub violations: Vec<Violation>,
    /// Convergence over time.
    pub samples: Vec<Sample>,
}

impl SimReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let nodes = self.nodes.max(1) as u64;
        let _ = writeln!(
            out,
            "scenario {}  seed {}  nodes {}  duration {} ms",
            self.scenario, self.seed, self.nodes, self.duration_ms
        );
        let convergence = match self.convergence_ms {
            Some(ms) => format!(
                "{ms} ms after the last step (at {} ms)",
                self.last_disruption_ms
            ),
            None => "NOT CONVERGED".to_string(),
        };
        let _ = writeln!(out, "convergence      {convergence}");
        let _ = writeln!(out, "live nodes       {}", self.live_nodes);
        let _ = writeln!(out, "events           {}", self.events);
        let _ = writeln!(
            out,
            "messages/node    {} sent, {} received, {} dropped (mean)",
            self.total.messages_sent / nodes,
            self.total.messages_received / nodes,
            self.total.messages_dropped / nodes
        );
        let _ = writeln!(
            out,
            "bytes/node       {} sent, {} received, {} persisted (mean)",
            self.total.bytes_sent / nodes,
            self.total.bytes_received / nodes,
            self.total.bytes_persisted / nodes
        );
        let _ = writeln!(
            out,
            "largest message  {} B; largest document {} B",
            self.largest_message_bytes, self.largest_document_bytes
        );
        let _ = writeln!(
            out,
            "intents          {} submitted, {} lost with a disk",
            self.intents_submitted, self.intents_lost_with_disk
        );
        for (package, target) in &self.final_targets {
            let _ = writeln!(
                out,
                "target           {package} -> {}",
                target.as_deref().unwrap_or("(none)")
            );
        }
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>10}",
            "invariant", "checks", "violations"
        );
        for inv in &self.invariants {
            let _ = writeln!(
                out,
                "{:<28} {:>10} {:>10}",
                inv.name, inv.checks, inv.violations
            );
        }
        for v in &self.violations {
            let _ = writeln!(
                out,
                "VIOLATION {} at {} ms, nodes {:?} (seed {}): {}",
                v.invariant, v.at_ms, v.nodes, v.seed, v.detail
            );
            for line in &v.trace {
                let _ = writeln!(out, "    {line}");
            }
        }
        out
    }
}

/// Result of running one scenario over many seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepReport {
    /// Scenario name.
    pub scenario: String,
    /// Runs made.
    pub runs: u64,
    /// Seeds whose run violated an invariant, with the first violation.
    pub failing: Vec<FailingSeed>,
    /// Seeds whose run could not be made at all, with the error.
    pub errors: Vec<(u64, String)>,
    /// Convergence times of the converged runs, sorted.
    pub convergence_ms: Vec<u64>,
}

/// A seed that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailingSeed {
    /// The seed.
    pub seed: u64,
    /// Its first violation.
    pub first: Violation,
}

impl SweepReport {
    /// Whether every run passed.
    pub fn passed(&self) -> bool {
        self.failing.is_empty() && self.errors.is_empty()
    }

    /// The `q`-quantile (0..=1) of convergence time, if any run converged.
    pub fn convergence_quantile(&self, q: f64) -> Option<u64> {
        if self.convergence_ms.is_empty() {
            return None;
        }
        let last = self.convergence_ms.len() - 1;
        let index = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
        self.convergence_ms.get(index).copied()
    }

    /// A summary for people, failing seeds first.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}: {} runs, {} failing, {} errors",
            self.scenario,
            self.runs,
            self.failing.len(),
            self.errors.len()
        );
        if let (Some(p50), Some(p99), Some(max)) = (
            self.convergence_quantile(0.5),
            self.convergence_quantile(0.99),
            self.convergence_quantile(1.0),
        ) {
            let _ = writeln!(out, "convergence p50 {p50} ms, p99 {p99} ms, max {max} ms");
        }
        for f in &self.failing {
            let _ = writeln!(
                out,
                "FAILING SEED {}: {} at {} ms: {}",
                f.seed, f.first.invariant, f.first.at_ms, f.first.detail
            );
        }
        for (seed, error) in &self.errors {
            let _ = writeln!(out, "ERROR SEED {seed}: {error}");
        }
        out
    }
}
