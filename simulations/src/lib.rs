//! Deterministic, seeded simulator of a clawmesh mesh.
//!
//! Runs N instances of the crdt peer core (the code real nodes run) over a
//! simulated network with latency, loss, duplication, reordering, partitions,
//! crashes and clock skew, along a scenario written as TOML; checks the
//! mesh's invariants continuously and at the end; reports convergence,
//! traffic and violations as JSON, a table and an SVG plot. One seed
//! reproduces a run exactly. See docs/SIMULATION.md.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod config;
pub mod engine;
pub mod invariants;
pub mod latency;
pub mod mesh_peer;
pub mod network;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod scheduler;
pub mod sim_peer;
pub mod svg;
pub mod trace;

pub use api::{run, run_observed, sweep};
pub use config::{SimConfig, SimError};
pub use engine::{simulate, simulate_observed};
pub use invariants::SizeBounds;
pub use latency::LatencyDist;
pub use mesh_peer::{MeshPeer, MeshSetup};
pub use network::{NetworkParams, NodeIndex};
pub use report::{SimReport, SweepReport};
pub use rng::SimRng;
pub use scenario::{Scenario, ScenarioError, scenario_by_name};
pub use sim_peer::{PeerEffect, PeerEvent, PeerView, SimPeer};
pub use svg::render_svg;
