//! What the mesh acts of `clawmesh demo` share: the running nodes, the
//! publisher, the figures collected for the summary, and small readers of
//! node status.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clawmesh_crdt::manifest::{Capabilities, Manifest, SignedManifest};
use clawmesh_crdt::signing::PublisherKey;
use clawmesh_crdt::trust::TrustRoot;

use super::figures::Figures;
use super::interrupt;
use super::live_table::LiveTable;
use super::local_mesh::MeshNode;
use crate::blob_store::{BlobId, BlobStore};
use crate::daemon::mesh_admin::MeshRequest;
use crate::package_file::{encode_package, write_file_atomically};

/// The package every act releases.
pub const COUNTER: &str = "dev.clawmesh.counter";
/// Nodes in the demo mesh.
pub const NODES: usize = 5;
/// Distinct nodes reporting a version Failed that quarantine it.
pub const QUARANTINE_THRESHOLD: usize = 3;
/// Longest any act waits for the mesh to get somewhere.
pub const ACT_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between status polls while an act watches the mesh.
pub const WATCH_POLL: Duration = Duration::from_millis(50);

/// How the mesh acts run.
#[derive(Debug, Clone)]
pub struct MeshDemoConfig {
    /// The clawmesh binary nodes run.
    pub exe: PathBuf,
    /// Where node data dirs, packages and the report go.
    pub root: PathBuf,
    /// The built sample skills.
    pub skills: PathBuf,
    /// Print progress (off for `--json`).
    pub verbose: bool,
    /// Redraw tables in place (stdout is a terminal).
    pub in_place: bool,
    /// Leave the nodes running at the end (`--keep`).
    pub keep: bool,
}

/// The running mesh and what the acts measured.
pub struct MeshDemo {
    /// Settings.
    pub config: MeshDemoConfig,
    /// The publisher key every node trusts.
    pub key: PublisherKey,
    /// The trust root every node has.
    pub trust: TrustRoot,
    /// The nodes, node 1 first (the bootstrap peer).
    pub nodes: Vec<MeshNode>,
    /// Blob stores of the nodes (read from here to see blobs spread).
    pub blobs: Vec<BlobStore>,
    /// Figures for the summary and report.
    pub figures: Figures,
    /// The live table.
    pub table: LiveTable,
}

/// This node's own view of a package, from `mesh_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalView {
    /// Release state (`active`, `pending`, …).
    pub state: String,
    /// The version it runs.
    pub running: String,
    /// The version it works towards.
    pub version: String,
    /// The target the mesh decided, as this node sees it.
    pub target: String,
    /// The version its last failure was about.
    pub failed_version: String,
    /// Why, in the controller's words.
    pub detail: String,
    /// Quarantined versions it knows.
    pub quarantine: Vec<String>,
    /// Peers it is connected to.
    pub peers: usize,
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

impl MeshDemo {
    /// Prints a progress line (not with `--json`).
    pub fn say(&self, line: &str) {
        if self.config.verbose {
            println!("    {line}");
        }
    }

    /// Node `i`'s view of the counter.
    pub fn view(&self, i: usize) -> anyhow::Result<LocalView> {
        let node = &self.nodes[i];
        let st = node.mesh(MeshRequest::MeshStatus)?;
        let local = &st["local"][COUNTER];
        let own = &st["nodes"][node.peer_id()?][COUNTER];
        Ok(LocalView {
            state: text(&local["state"]),
            running: text(&local["running"]),
            version: text(&local["version"]),
            target: text(&st["targets"][COUNTER]["version"]),
            failed_version: text(&own["failed_version"]),
            detail: local["detail"].as_str().unwrap_or("").to_string(),
            quarantine: st["quarantine"]
                .as_array()
                .map(|q| {
                    q.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            peers: st["peers"].as_array().map_or(0, Vec::len),
        })
    }

    /// Every node's view.
    pub fn views(&self) -> anyhow::Result<Vec<LocalView>> {
        (0..self.nodes.len()).map(|i| self.view(i)).collect()
    }

    /// Packs `file` as the counter at `version`, signs it, publishes it
    /// into node `on`'s store, announces it to the mesh from there, and
    /// waits until every node's catalog has it. (A release whose intent
    /// reaches a node before the manifest does waits at Pending on that
    /// node today, so the demo releases only what every node knows.)
    pub fn publish(
        &mut self,
        on: usize,
        file: &str,
        version: &str,
        schema: u32,
    ) -> anyhow::Result<BlobId> {
        let path = self.config.skills.join(file);
        let wasm = std::fs::read(&path).with_context(|| {
            format!(
                "reading sample skill {} (build them with scripts/build-skills)",
                path.display()
            )
        })?;
        let manifest = Manifest::for_blob(
            COUNTER.parse()?,
            semver::Version::parse(version)?,
            vec![],
            &wasm,
            crate::cli::DEFAULT_ABI_WORLD,
            schema,
            Capabilities::default(),
        )?;
        let signed = SignedManifest::sign(manifest, &[&self.key])?;
        let pkg = self.config.root.join(format!("{COUNTER}-{version}.pkg"));
        let id = BlobId::of(&wasm);
        write_file_atomically(&pkg, &encode_package(signed.envelope, wasm), 0o644)?;
        let node = &self.nodes[on];
        crate::publish::publish_file(
            &pkg,
            None,
            &self.trust,
            &self.blobs[on],
            &node.dir.package_store()?,
        )?;
        node.mesh(MeshRequest::Announce {
            package: COUNTER.into(),
            version: version.into(),
        })?;
        self.watch(
            &format!("{COUNTER}@{version} in every node's catalog"),
            |d, _| {
                for (i, node) in d.nodes.iter().enumerate() {
                    let c = node.mesh(MeshRequest::Catalog {
                        package: COUNTER.into(),
                    })?;
                    let has = c["versions"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == version));
                    if !has {
                        return Ok(Err(format!("node {} has {}", i + 1, c["versions"])));
                    }
                }
                Ok(Ok(()))
            },
        )?;
        Ok(id)
    }

    /// The counter's value on node `i` (`get` over HTTP).
    pub fn counter_value(&self, i: usize) -> anyhow::Result<u64> {
        let url = format!("{}/v1/skills/{COUNTER}/get", self.nodes[i].info.http);
        let (status, body) = super::http_client::post(&url, b"")?;
        let body = String::from_utf8_lossy(&body).trim().to_string();
        if status != 200 {
            anyhow::bail!("node {}: get answered HTTP {status}: {body}", i + 1);
        }
        body.parse()
            .with_context(|| format!("node {}: get answered {body:?}", i + 1))
    }

    /// The add URL of every node.
    pub fn add_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("{}/v1/skills/{COUNTER}/add", n.info.http))
            .collect()
    }

    /// Polls `probe` every `WATCH_POLL` until it returns `Some`, for at most
    /// `ACT_TIMEOUT`; on timeout the error names `what` and `last` (what the
    /// probe last saw, which it updates).
    pub fn watch<T>(
        &mut self,
        what: &str,
        mut probe: impl FnMut(&mut Self, Duration) -> anyhow::Result<Result<T, String>>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        loop {
            interrupt::check()?;
            match probe(self, start.elapsed())? {
                Ok(v) => return Ok(v),
                Err(last) if start.elapsed() >= ACT_TIMEOUT => {
                    anyhow::bail!("{what}: not reached within {ACT_TIMEOUT:?}; last seen: {last}")
                }
                Err(_) => std::thread::sleep(WATCH_POLL),
            }
        }
    }
}

/// Milliseconds of a duration, for figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
