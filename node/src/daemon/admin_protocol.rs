//! The admin protocol on the node's Unix socket (`<data_dir>/admin.sock`):
//! one JSON object per line each way. It is the sidecar's and the CLI's way
//! into a running node, so it speaks in package names and versions, never
//! in paths the caller would have to trust.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request or response line.
pub const MAX_ADMIN_LINE: usize = 1 << 20;
/// How long a client waits for an answer (a deploy compiles a component).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A request to the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Run `package@version` (published in this node's store) on this node.
    Deploy {
        /// Package name.
        package: String,
        /// Exact version.
        version: String,
    },
    /// Stop serving `package`.
    Stop {
        /// Package name.
        package: String,
    },
    /// What this node runs, with each package's swap state (checkpoint
    /// age, journal, warm window, last swap and failure).
    Status,
    /// Run a raw component file as a new version of `package` (the sidecar
    /// path): a swap when it runs already. The socket is owner-only, so the
    /// path is the owner's.
    DeployWasm {
        /// Package name.
        package: String,
        /// The component file.
        path: String,
        /// Version (default `0.0.0-dev+<sha256 prefix>`).
        #[serde(default)]
        version: Option<String>,
        /// Linear memory the skill may use, MiB (default: the node's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_memory_mib: Option<u64>,
    },
    /// Roll `package` back to the version it ran before its last swap.
    Rollback {
        /// Package name.
        package: String,
    },
    /// Take a checkpoint of `package` now (into its segment and to disk).
    Checkpoint {
        /// Package name.
        package: String,
    },
    /// Test-only: inject faults at swap steps (`step:action,...`, see
    /// `crate::swap::fault`); `None` clears them.
    InjectFault {
        /// The faults.
        #[serde(default)]
        spec: Option<String>,
    },
    /// Keep the connection open and write one JSON line per swap event
    /// (all packages, or one).
    Events {
        /// Only this package's events.
        #[serde(default)]
        package: Option<String>,
    },
    /// Fetch `package@version`'s blob from the mesh providers into this
    /// node's store. Streams `{"kind":"progress",...}` lines, then one
    /// `{"kind":"done",...}` line or an error (`no_providers`, ...):
    /// `mesh_fetch.rs`.
    Fetch {
        /// Package name.
        package: String,
        /// Exact version.
        version: String,
    },
    /// Mesh requests (catalog, intents, mesh status): `mesh_admin.rs`.
    #[serde(untagged)]
    Mesh(super::mesh_admin::MeshRequest),
}

/// A failure, with a stable code scripts can match on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminError {
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// The answer to one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResponse {
    /// It worked; the value depends on the request.
    Ok(serde_json::Value),
    /// It did not.
    Error(AdminError),
}

/// Why a client call failed before the node could answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// No node listens there.
    #[error(
        "cannot reach the node's admin socket {path}: {source} (is `clawmesh node --data-dir ...` running?)"
    )]
    Connect {
        /// The socket.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke.
    #[error("admin socket: {0}")]
    Io(#[from] std::io::Error),
    /// The node answered something that is not a response.
    #[error("admin socket: unreadable answer: {0}")]
    Protocol(String),
    /// The node refused the request.
    #[error("{}: {}", .0.code, .0.message)]
    Refused(AdminError),
}

/// Sends an `Events` request and calls `each` with every event line until
/// it returns `false` or the node closes the connection (no read timeout:
/// events come when swaps happen).
pub fn admin_events(
    socket: &Path,
    package: Option<String>,
    mut each: impl FnMut(serde_json::Value) -> bool,
) -> Result<(), AdminClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| AdminClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    let mut line = serde_json::to_vec(&AdminRequest::Events { package })
        .map_err(|e| AdminClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 || answer.len() > MAX_ADMIN_LINE {
            return Ok(());
        }
        match serde_json::from_str::<AdminResponse>(&answer)
            .map_err(|e| AdminClientError::Protocol(e.to_string()))?
        {
            AdminResponse::Ok(v) => {
                if !each(v) {
                    return Ok(());
                }
            }
            AdminResponse::Error(e) => return Err(AdminClientError::Refused(e)),
        }
    }
}

/// Sends one request and waits for its answer.
pub fn admin_call(
    socket: &Path,
    request: &AdminRequest,
) -> Result<serde_json::Value, AdminClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| AdminClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| AdminClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(std::io::Read::take(stream, MAX_ADMIN_LINE as u64));
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(AdminClientError::Protocol(
            "the node closed the connection without answering".into(),
        ));
    }
    match serde_json::from_str::<AdminResponse>(&answer)
        .map_err(|e| AdminClientError::Protocol(e.to_string()))?
    {
        AdminResponse::Ok(v) => Ok(v),
        AdminResponse::Error(e) => Err(AdminClientError::Refused(e)),
    }
}
