//! Real `clawmesh node` processes on loopback, driven from this process
//! over their admin sockets: what `clawmesh demo` and `clawmesh bench
//! release` start. Each child gets SIGTERM from the kernel if this process
//! dies, and is stopped (SIGTERM, then SIGKILL) when its handle drops.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clawmesh_crdt::signing::PublisherKey;
use clawmesh_crdt::{Intent, IntentAction, SignedIntent};

use super::interrupt;
use crate::daemon::NodeInfo;
use crate::daemon::admin_call;
use crate::daemon::admin_protocol::AdminRequest;
use crate::daemon::mesh_admin::MeshRequest;
use crate::data_dir::DataDir;

/// Longest a node may take to say it serves.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a stopping node gets after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between checks of a stopping node.
const STOP_POLL: Duration = Duration::from_millis(10);
/// Pause between checks of a starting node.
const START_POLL: Duration = Duration::from_millis(20);

/// A running node process.
pub struct MeshNode {
    child: Child,
    /// Its data directory.
    pub dir: DataDir,
    /// Where it listens (its `node.json`).
    pub info: NodeInfo,
    detached: bool,
}

/// A node process that was spawned and has not yet said it serves.
pub struct StartingNode {
    child: Option<Child>,
    dir: DataDir,
}

/// How a node process is started.
#[derive(Debug, Clone, Default)]
pub struct NodeLaunch {
    /// `--bootstrap` address.
    pub bootstrap: Option<String>,
    /// Further `clawmesh node` arguments.
    pub extra: Vec<String>,
    /// Leave the node running when this process exits (no parent-death
    /// signal): `clawmesh demo --keep`.
    pub outlive_parent: bool,
}

/// The node's log, in its data dir (its stderr).
pub fn log_file(dir: &Path) -> std::path::PathBuf {
    dir.join("node.log")
}

/// Spawns `clawmesh node --data-dir dir …` without waiting for it;
/// `StartingNode::wait` does. Its stderr goes to `log_file(dir)`, so it
/// never depends on this process reading a pipe.
pub fn spawn_node(exe: &Path, dir: &Path, launch: &NodeLaunch) -> anyhow::Result<StartingNode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = std::fs::File::create(log_file(dir))
        .with_context(|| format!("creating {}", log_file(dir).display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg("--data-dir")
        .arg(dir)
        .args(&launch.extra)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(b) = &launch.bootstrap {
        cmd.arg("--bootstrap").arg(b);
    }
    if !launch.outlive_parent {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe; it allocates nothing
        // and takes no lock. The child then gets SIGTERM when the thread
        // that spawned it (the demo's main thread) dies.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    interrupt::register_child(child.id());
    Ok(StartingNode {
        child: Some(child),
        dir: DataDir::new(dir),
    })
}

impl StartingNode {
    /// Waits (bounded by `START_TIMEOUT`) until the node has written its
    /// `node.json` (it does so once it serves) and reads it.
    pub fn wait(mut self) -> anyhow::Result<MeshNode> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut child = self.child.take().context("node child already taken")?;
        let pid = child.id();
        let info = loop {
            if let Err(e) = interrupt::check() {
                stop_child(&mut child);
                return Err(e.into());
            }
            // A node.json left by an earlier run names another pid.
            if let Ok(info) = NodeInfo::read(&self.dir.node_json())
                && info.pid == pid
            {
                break info;
            }
            if let Ok(Some(status)) = child.try_wait() {
                interrupt::forget_child(pid);
                anyhow::bail!(
                    "node in {} exited ({status}) before serving; see {}",
                    self.dir.root().display(),
                    log_file(self.dir.root()).display()
                );
            }
            if Instant::now() >= deadline {
                stop_child(&mut child);
                anyhow::bail!(
                    "node in {} did not serve within {START_TIMEOUT:?}; see {}",
                    self.dir.root().display(),
                    log_file(self.dir.root()).display()
                );
            }
            std::thread::sleep(START_POLL);
        };
        Ok(MeshNode {
            child,
            dir: self.dir.clone(),
            info,
            detached: false,
        })
    }
}

impl Drop for StartingNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
    }
}

/// Spawns a node and waits until it serves.
pub fn start_node(exe: &Path, dir: &Path, launch: &NodeLaunch) -> anyhow::Result<MeshNode> {
    spawn_node(exe, dir, launch)?.wait()
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
        std::thread::sleep(STOP_POLL);
    }
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    interrupt::forget_child(child.id());
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        if !self.detached {
            stop_child(&mut self.child);
        }
    }
}

impl MeshNode {
    /// One mesh request on the admin socket.
    pub fn mesh(&self, request: MeshRequest) -> anyhow::Result<serde_json::Value> {
        Ok(admin_call(
            &self.dir.admin_socket(),
            &AdminRequest::Mesh(request),
        )?)
    }

    /// One admin request.
    pub fn admin(&self, request: &AdminRequest) -> anyhow::Result<serde_json::Value> {
        Ok(admin_call(&self.dir.admin_socket(), request)?)
    }

    /// Its libp2p peer id.
    pub fn peer_id(&self) -> anyhow::Result<&str> {
        self.info
            .peer_id
            .as_deref()
            .context("node runs without the mesh (no peer id)")
    }

    /// Leaves the process running when this handle drops (`--keep`).
    pub fn detach(&mut self) {
        self.detached = true;
        interrupt::forget_child(self.child.id());
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of peers it is connected to.
    pub fn peer_count(&self) -> anyhow::Result<usize> {
        Ok(self.mesh(MeshRequest::MeshStatus)?["peers"]
            .as_array()
            .map_or(0, Vec::len))
    }

    /// Signs a Deploy (or other) intent for `package@version` with a clock
    /// above every one this node knows, and submits it here.
    pub fn submit_intent(
        &self,
        key: &PublisherKey,
        package: &str,
        version: &str,
        action: IntentAction,
    ) -> anyhow::Result<serde_json::Value> {
        let known = self.mesh(MeshRequest::IntentClock {
            package: package.into(),
        })?["clock"]
            .as_u64()
            .unwrap_or(0);
        let intent = Intent {
            package: package.parse()?,
            version: semver::Version::parse(version)?,
            action,
            clock: known + 1,
            author: key.key_id().clone(),
            issued_at_ms: 0,
            rollout_max_parallel_percent: 100,
        };
        let signed = SignedIntent::sign(intent, key)?;
        self.mesh(MeshRequest::SubmitIntent {
            envelope_hex: hex::encode(signed.envelope_bytes()),
        })
    }
}
