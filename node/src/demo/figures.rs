//! The numbers the demo measures, for its summary, `--json` and the HTML
//! report. `None` means the act did not get that far.

use serde::Serialize;

use super::load::Sample;

/// Everything measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Act 2: start to every node seeing every other, ms.
    pub mesh_joined_ms: Option<f64>,
    /// Act 3: per node, release to blob held, ms.
    pub blob_held_ms: Vec<Option<f64>>,
    /// Act 3: per node, release to Active on v1, ms.
    pub active_ms: Vec<Option<f64>>,
    /// Act 4: the load during the v2 release.
    pub load: Option<LoadFigures>,
    /// Act 4: per node, the swap's pause (route paused), ms, as the node
    /// reported it.
    pub swap_pause_ms: Vec<Option<f64>>,
    /// Act 5: release of the broken version to quarantine on every node, ms.
    pub quarantine_ms: Option<f64>,
    /// Act 5: nodes that reported the broken version Failed.
    pub failed_nodes: Option<usize>,
    /// Act 6: the version every node converged to after the heal.
    pub converged_to: Option<String>,
    /// Act 6: per node, heal to targeting the winner, ms.
    pub heal_target_ms: Vec<Option<f64>>,
    /// Act 6: per node, heal to Active on the winner, ms.
    pub heal_active_ms: Vec<Option<f64>>,
}

/// What the load of act 4 saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadFigures {
    /// Requests answered 200 (acknowledged adds), all nodes.
    pub served: u64,
    /// Requests that failed, all nodes.
    pub errors: u64,
    /// Acknowledged adds per node.
    pub acked: Vec<u64>,
    /// Errors per node.
    pub errors_per_node: Vec<u64>,
    /// The counter's value per node after the release.
    pub counter_after: Vec<Option<u64>>,
    /// Per node: counter after == acknowledged adds.
    pub state_kept: Vec<bool>,
    /// When the release was submitted, ms after the load started.
    pub release_at_ms: f64,
    /// When every node was Active on v2, ms after the load started.
    pub all_active_at_ms: Option<f64>,
    /// Median request latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// A few error messages.
    pub error_messages: Vec<String>,
    /// The first requests (for the report's plot; not in `--json`).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}
