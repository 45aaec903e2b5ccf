//! What one run is asked to do, and why it could not be done.

use crate::invariants::SizeBounds;
use crate::scenario::{Scenario, ScenarioError};

/// Largest message the simulator accepts from a node, unless a config says
/// otherwise: the crdt document limits' default sync message (8 MiB) plus
/// the sync frame's envelope (the core allows 64 bytes for it).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024 + 64;
/// Largest document a node may hold, unless a config says otherwise.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// One run: a scenario, a seed, and optional overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// The seed: every random choice of the run derives from it.
    pub seed: u64,
    /// Node count instead of the scenario's.
    pub nodes: Option<usize>,
    /// Size bounds the invariants check.
    pub bounds: SizeBounds,
}

impl SimConfig {
    /// `scenario` with `seed`, its own node count and the default bounds.
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        SimConfig {
            scenario,
            seed,
            nodes: None,
            bounds: SizeBounds {
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            },
        }
    }

    /// The same run with `nodes` nodes.
    pub fn with_nodes(mut self, nodes: usize) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// Nodes of the run.
    pub fn node_count(&self) -> usize {
        self.nodes.unwrap_or(self.scenario.nodes)
    }
}

/// Why a run could not be made (a run that breaks an invariant is not an
/// error: it returns a report with violations).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is unusable with this config.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A node could not be started (or restarted from its disk).
    #[error("node {node} could not start: {reason}")]
    PeerStart {
        /// The node.
        node: usize,
        /// Why.
        reason: String,
    },
    /// The run's shared set-up (keys, trust root) could not be made.
    #[error("simulation set-up failed: {0}")]
    Setup(String),
}
