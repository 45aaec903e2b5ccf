//! `clawmesh demo` beyond its first act: a five-node mesh of real node
//! processes on loopback, releases under load, a broken version
//! quarantined, a partition healed, and the report.

pub mod act_join;
pub mod act_load;
pub mod act_partition;
pub mod act_quarantine;
pub mod act_release;
pub mod figures;
pub mod http_client;
pub mod interrupt;
pub mod live_table;
pub mod load;
pub mod local_mesh;
pub mod mesh_demo;
pub mod report;

pub use figures::{Figures, LoadFigures};
pub use local_mesh::{MeshNode, NodeLaunch, spawn_node, start_node};
pub use mesh_demo::{MeshDemo, MeshDemoConfig};
pub use report::{ActRecord, render_html};
