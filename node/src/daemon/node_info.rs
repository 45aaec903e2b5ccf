//! `<data_dir>/node.json`: where a running node listens, for scripts and
//! for the CLI commands that talk to it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::package_file::write_file_atomically;

/// Addresses of a running node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Base URL of the HTTP API.
    pub http: String,
    /// Path of the admin Unix socket.
    pub admin_socket: String,
    /// Cgroup support workers get (`v1`, `v2` or `unavailable`).
    pub cgroups: String,
    /// libp2p peer id, when the mesh is on.
    pub peer_id: Option<String>,
    /// libp2p listen addresses (with `/p2p/<id>`), when the mesh is on.
    pub p2p: Vec<String>,
}

impl NodeInfo {
    /// Writes it atomically, so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_file_atomically(path, &json, 0o644)
    }

    /// Reads a running node's addresses.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading {} (is the node running?)", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a node.json", path.display()))
    }
}
