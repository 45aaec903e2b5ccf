//! Mesh requests on the admin socket: put a published package into the
//! mesh catalog, submit a signed intent, read the clock an intent must
//! exceed, and the mesh-wide status table.

use std::collections::BTreeMap;

use clawmesh_crdt::manifest::PackageName;
use clawmesh_crdt::proto::v1::SignedEnvelope;
use clawmesh_crdt::{PeerInput, SignedIntent};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::NodeContext;
use super::release::SharedReleaseView;
use crate::mesh::{DriverHandle, MeshHandle};

/// Mesh requests (the `op` tag continues the admin protocol's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MeshRequest {
    /// Add `package@version`, published in this node's store, to the mesh catalog.
    Announce {
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// The highest intent clock this node knows for `package`.
    IntentClock {
        /// Package.
        package: String,
    },
    /// Submit a signed intent (hex of the encoded `SignedEnvelope`).
    SubmitIntent {
        /// Hex of the envelope bytes.
        envelope_hex: String,
    },
    /// The version a rollback of `package` goes to: the highest published
    /// version below the current target that is not quarantined.
    RollbackTarget {
        /// Package.
        package: String,
    },
    /// Nodes × packages, targets, quarantine, refusals.
    MeshStatus,
    /// The versions of `package` in this node's mesh catalog (the demo
    /// waits on it before it splits the mesh).
    Catalog {
        /// Package.
        package: String,
    },
    /// Cut this node off from `peers` (libp2p peer ids) in both directions
    /// until `unblock_peers`: the demo's partition.
    BlockPeers {
        /// Peer ids.
        peers: Vec<String>,
    },
    /// Lift a `block_peers` and redial those peers.
    UnblockPeers {
        /// Peer ids.
        peers: Vec<String>,
    },
}

/// The mesh side of a node, present when the mesh runs.
#[derive(Clone)]
pub struct MeshSide {
    /// The peer core's driver.
    pub driver: DriverHandle,
    /// The release loop's view.
    pub releases: SharedReleaseView,
    /// This node's peer id.
    pub peer_id: String,
    /// The swarm (block lists).
    pub network: MeshHandle,
}

impl std::fmt::Debug for MeshSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSide")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// A refusal: (stable code, message).
pub type Refusal = (&'static str, String);

/// Most peers one `block_peers` / `unblock_peers` request may name.
pub const MAX_BLOCK_PEERS: usize = 256;

fn parse_peers(peers: &[String]) -> Result<Vec<libp2p::PeerId>, Refusal> {
    peers
        .iter()
        .map(|p| {
            p.parse()
                .map_err(|e| ("bad_request", format!("peer id {p:?}: {e}")))
        })
        .collect()
}

/// Carries out one mesh request.
pub async fn handle_mesh(
    ctx: &NodeContext,
    mesh: &MeshSide,
    request: MeshRequest,
) -> Result<serde_json::Value, Refusal> {
    let stopped = || ("mesh_stopped", "the mesh driver has stopped".to_string());
    match request {
        MeshRequest::Catalog { package } => {
            let name: PackageName = package
                .parse()
                .map_err(|e| ("bad_request", format!("package {package:?}: {e}")))?;
            let versions = mesh
                .driver
                .inspect(move |core| {
                    core.catalog()
                        .get(&name)
                        .map(|versions| {
                            versions.keys().map(ToString::to_string).collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                })
                .await
                .map_err(|_| stopped())?;
            Ok(serde_json::json!({ "versions": versions }))
        }
        MeshRequest::BlockPeers { peers } | MeshRequest::UnblockPeers { peers }
            if peers.len() > MAX_BLOCK_PEERS =>
        {
            Err((
                "bad_request",
                format!(
                    "{} peers named; at most {MAX_BLOCK_PEERS} per request",
                    peers.len()
                ),
            ))
        }
        MeshRequest::BlockPeers { peers } => {
            for peer in parse_peers(&peers)? {
                mesh.network.block(peer).await.map_err(|_| stopped())?;
            }
            Ok(serde_json::json!({ "blocked": peers }))
        }
        MeshRequest::UnblockPeers { peers } => {
            for peer in parse_peers(&peers)? {
                mesh.network.unblock(peer).await.map_err(|_| stopped())?;
            }
            Ok(serde_json::json!({ "unblocked": peers }))
        }
        MeshRequest::Announce { package, version } => {
            let name: PackageName = package
                .parse()
                .map_err(|e| ("bad_request", format!("package {package:?}: {e}")))?;
            let v = semver::Version::parse(&version)
                .map_err(|e| ("bad_request", format!("version {version:?}: {e}")))?;
            let signed = ctx
                .packages
                .get(&name, &v, &ctx.trust)
                .map_err(|e| ("invalid_manifest", e.to_string()))?
                .ok_or_else(|| {
                    (
                        "not_published",
                        format!("{package}@{version} is not published on this node"),
                    )
                })?;
            // Its blob is in the store: announce it as a DHT provider record too.
            if let Err(e) = mesh.network.start_providing(signed.manifest.sha256).await {
                tracing::warn!(error = %e, "published blob not provided on the DHT");
            }
            mesh.driver
                .submit(PeerInput::PublishManifest(signed))
                .await
                .map_err(|_| stopped())?;
            Ok(serde_json::json!({ "announced": format!("{package}@{version}") }))
        }
        MeshRequest::IntentClock { package } => {
            let name: PackageName = package
                .parse()
                .map_err(|e| ("bad_request", format!("package {package:?}: {e}")))?;
            let clock = mesh
                .driver
                .inspect(move |core| {
                    core.intents()
                        .iter()
                        .filter(|i| i.intent.package == name)
                        .map(|i| i.intent.clock)
                        .max()
                        .unwrap_or(0)
                })
                .await
                .map_err(|_| stopped())?;
            Ok(serde_json::json!({ "clock": clock }))
        }
        MeshRequest::SubmitIntent { envelope_hex } => {
            let bytes = hex::decode(envelope_hex.trim())
                .map_err(|e| ("bad_request", format!("envelope_hex: {e}")))?;
            let envelope = SignedEnvelope::decode(bytes.as_slice())
                .map_err(|e| ("bad_request", format!("envelope: {e}")))?;
            let intent = SignedIntent::verify(envelope, &ctx.trust)
                .map_err(|e| ("intent_refused", e.to_string()))?;
            let summary = serde_json::json!({
                "package": intent.intent.package.to_string(),
                "version": intent.intent.version.to_string(),
                "action": format!("{:?}", intent.intent.action),
                "clock": intent.intent.clock,
                "digest": intent.digest_hex(),
            });
            mesh.driver
                .submit(PeerInput::SubmitIntent(intent))
                .await
                .map_err(|_| stopped())?;
            Ok(summary)
        }
        MeshRequest::RollbackTarget { package } => {
            let name: PackageName = package
                .parse()
                .map_err(|e| ("bad_request", format!("package {package:?}: {e}")))?;
            let found = mesh
                .driver
                .inspect(move |core| {
                    let current = core.targets().get(&name).map(|t| t.version.clone())?;
                    let versions = core.catalog().get(&name)?;
                    let candidate = versions
                        .keys()
                        .rev()
                        .find(|v| **v < current && core.quarantine().get(&name, v).is_none())
                        .cloned();
                    Some((current, candidate))
                })
                .await
                .map_err(|_| stopped())?;
            match found {
                None => Err((
                    "no_target",
                    format!("{package} has no target on the mesh yet"),
                )),
                Some((current, None)) => Err((
                    "no_previous",
                    format!(
                        "{package} targets {current} and no earlier version is published; name one with --to"
                    ),
                )),
                Some((current, Some(previous))) => Ok(serde_json::json!({
                    "current": current.to_string(),
                    "version": previous.to_string(),
                })),
            }
        }
        MeshRequest::MeshStatus => {
            let view = mesh.releases.lock().await.clone();
            let (table, targets, quarantine, peers, rejected, heads, intents, status_board) = mesh
                .driver
                .inspect(|core| {
                    let table = core.status_table();
                    let targets = core.targets().clone();
                    let quarantine: Vec<String> = core
                        .quarantine()
                        .iter()
                        .map(|(p, v, q)| format!("{p}@{v} ({} nodes failed)", q.failed_nodes))
                        .collect();
                    let peers: Vec<String> = core.peers().map(ToString::to_string).collect();
                    let rejected: Vec<String> =
                        core.rejected().iter().map(|r| format!("{r:?}")).collect();
                    // Heads and intent digests let a user (and the tests)
                    // check that a refused frame changed no document.
                    let heads: BTreeMap<String, Vec<String>> = core
                        .heads()
                        .into_iter()
                        .map(|(doc, hs)| {
                            (doc.name(), hs.iter().map(|h| hex::encode(h.0)).collect())
                        })
                        .collect();
                    let intents: Vec<serde_json::Value> = core
                        .intents()
                        .iter()
                        .map(|i| {
                            serde_json::json!({
                                "digest": i.digest_hex(),
                                "package": i.intent.package.to_string(),
                                "version": i.intent.version.to_string(),
                                "action": i.intent.action.to_string(),
                                "clock": i.intent.clock,
                            })
                        })
                        .collect();
                    let board = core.status_board();
                    let status_board = serde_json::json!({
                        "digest": hex::encode(board.digest()),
                        "nodes": board.len(),
                        "bytes": board.bytes(),
                    });
                    (
                        table,
                        targets,
                        quarantine,
                        peers,
                        rejected,
                        heads,
                        intents,
                        status_board,
                    )
                })
                .await
                .map_err(|_| stopped())?;
            let mut nodes = BTreeMap::new();
            for (node, packages) in table {
                let mut row = BTreeMap::new();
                for (package, st) in packages {
                    row.insert(
                        package.to_string(),
                        serde_json::json!({
                            "state": st.state.as_str(),
                            "version": st.version.map(|v| v.to_string()),
                            "running": st.running.map(|v| v.to_string()),
                            "failed_version": st.failed_version.map(|v| v.to_string()),
                            "health": st.health.as_str(),
                            "updated_at_ms": st.updated_at_ms,
                            "detail": st.detail,
                        }),
                    );
                }
                nodes.insert(node, row);
            }
            let targets: BTreeMap<String, serde_json::Value> = targets
                .into_iter()
                .map(|(p, t)| {
                    (
                        p.to_string(),
                        serde_json::json!({ "version": t.version.to_string(), "paused": t.paused, "decided_by": hex::encode(t.decided_by) }),
                    )
                })
                .collect();
            Ok(serde_json::json!({
                "node": mesh.peer_id,
                "peers": peers,
                "targets": targets,
                "nodes": nodes,
                "quarantine": quarantine,
                "rejected": rejected,
                "refused": view.refused,
                "heads": heads,
                "status_board": status_board,
                "intents": intents,
                "local": view.packages.iter().map(|(p, s)| (p.to_string(), serde_json::json!({
                    "state": s.state.as_str(),
                    "version": s.version.as_ref().map(ToString::to_string),
                    "running": s.running.as_ref().map(ToString::to_string),
                    "detail": s.detail,
                }))).collect::<BTreeMap<_, _>>(),
            }))
        }
    }
}
