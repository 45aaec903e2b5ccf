//! A throwaway node for the benchmark: a `clawmesh node` child process on a
//! temporary data dir, with the counter sample published (by a key made for
//! the run and never written to disk) and deployed through the admin
//! socket, exactly as an operator would. Stopped (SIGTERM, then SIGKILL)
//! and its directory removed when dropped, on every path out.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clawmesh_crdt::manifest::{Capabilities, Manifest, SignedManifest};
use clawmesh_crdt::signing::PublisherKey;
use clawmesh_crdt::trust::{TrustRoot, TrustedPublisher};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::daemon::{AdminRequest, NodeInfo, admin_call};
use crate::data_dir::DataDir;
use crate::package_file::{encode_package, write_file_atomically};
use crate::publish::publish_file;

/// The sample skill the throwaway node runs.
pub const COUNTER_PACKAGE: &str = "dev.clawmesh.counter";
/// Its version in the throwaway node's store.
pub const COUNTER_VERSION: &str = "1.0.0";
/// Its component, under the skills directory.
pub const COUNTER_FILE: &str = "counter.wasm";
/// The operation loaded: `add` with an empty body adds 1.
pub const COUNTER_OP: &str = "add";
/// How long the node may take to start serving.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the node may take to stop after SIGTERM before it is killed
/// (and again after SIGKILL before it is given up on).
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line of the node's stderr kept whole.
const MAX_STDERR_LINE: u64 = 64 * 1024;
/// Lines of the node's stderr queued while waiting for it to serve.
const STDERR_QUEUE: usize = 64;
/// Lines of the node's stderr quoted when it fails to start.
const STDERR_QUOTED: usize = 20;
/// What the node prints on stderr once `node.json` is written and it serves.
const SERVING_MARK: &str = " serving on ";

/// A running throwaway node with the counter deployed.
#[derive(Debug)]
pub struct ThrowawayNode {
    /// Where it listens.
    pub info: NodeInfo,
    /// Time the deploy took, as the node reported it (ms).
    pub deploy_millis: f64,
    process: NodeProcess,
}

impl ThrowawayNode {
    /// Publishes the counter from `skills_dir` into a new data dir, starts
    /// `exe node` on it, waits until it serves and deploys the counter.
    pub async fn start(exe: &Path, skills_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("clawmesh-bench-")
            .tempdir()
            .context("creating the throwaway node's directory")?;
        let data = DataDir::new(dir.path().join("node"));
        publish_counter(dir.path(), &data, skills_dir)?;

        let mut child = Command::new(exe)
            .arg("node")
            .arg("--data-dir")
            .arg(data.root())
            // wasmtime would capture a backtrace on every trap.
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} node", exe.display()))?;
        let stderr = child.stderr.take();
        // From here on, dropping `process` stops the child and removes the dir.
        let mut process = NodeProcess {
            child: Some(child),
            _dir: dir,
        };
        let (lines_tx, lines_rx) = mpsc::channel(STDERR_QUEUE);
        if let Some(stderr) = stderr {
            std::thread::Builder::new()
                .name("bench-node-stderr".into())
                .spawn(move || forward_stderr(stderr, lines_tx))
                .context("starting the node's stderr reader")?;
        }
        process.wait_until_serving(lines_rx).await?;
        let info = NodeInfo::read(&data.node_json())?;

        let socket = data.admin_socket();
        let request = AdminRequest::Deploy {
            package: COUNTER_PACKAGE.into(),
            version: COUNTER_VERSION.into(),
        };
        let deployed = tokio::task::spawn_blocking(move || admin_call(&socket, &request))
            .await
            .context("deploy task")?
            .with_context(|| {
                format!("deploying {COUNTER_PACKAGE}@{COUNTER_VERSION} on the throwaway node")
            })?;
        Ok(Self {
            info,
            deploy_millis: deployed["millis"].as_f64().unwrap_or_default(),
            process,
        })
    }

    /// Stops the node now (dropping it does the same).
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.process.stop()
    }
}

/// The child process and its directory, cleaned up on drop.
#[derive(Debug)]
struct NodeProcess {
    child: Option<Child>,
    // Dropped after `child` is reaped (see `Drop`).
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    async fn wait_until_serving(
        &mut self,
        mut lines: mpsc::Receiver<String>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + NODE_START_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(line)) if line.contains(SERVING_MARK) => return Ok(()),
                Ok(Some(line)) => {
                    if seen.len() == STDERR_QUOTED {
                        seen.remove(0);
                    }
                    seen.push(line);
                }
                Ok(None) => {
                    let status = self
                        .stop()
                        .map_or_else(|| "unknown status".to_string(), |s| s.to_string());
                    bail!(
                        "the throwaway node exited before serving ({status}):\n{}",
                        seen.join("\n")
                    );
                }
                Err(_) => bail!(
                    "the throwaway node did not start serving within {} s:\n{}",
                    NODE_START_TIMEOUT.as_secs(),
                    seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, wait up to [`NODE_STOP_TIMEOUT`], then SIGKILL.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let Ok(raw_pid) = i32::try_from(child.id()) else {
            let _ = child.kill();
            return child.wait().ok();
        };
        let pid = Pid::from_raw(raw_pid);
        // The child is not reaped until `wait` below, so the pid is still ours.
        let _ = kill(pid, Signal::SIGTERM);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = done_tx.send(child.wait());
        });
        let status = match done_rx.recv_timeout(NODE_STOP_TIMEOUT) {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!(
                    "bench: the throwaway node did not stop within {} s of SIGTERM; killing it",
                    NODE_STOP_TIMEOUT.as_secs()
                );
                let _ = kill(pid, Signal::SIGKILL);
                done_rx
                    .recv_timeout(NODE_STOP_TIMEOUT)
                    .ok()
                    .and_then(Result::ok)
            }
        };
        if status.is_some() {
            let _ = waiter.join();
        }
        status
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Echoes the node's stderr to ours (prefixed), and hands each line to the
/// waiter while it listens.
fn forward_stderr(stderr: impl Read, lines: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stderr);
    let mut listening = true;
    loop {
        let mut raw = Vec::new();
        match reader
            .by_ref()
            .take(MAX_STDERR_LINE)
            .read_until(b'\n', &mut raw)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        eprintln!("node: {line}");
        if listening && lines.blocking_send(line).is_err() {
            listening = false;
        }
    }
}

/// Writes a trust root with a fresh key into `data` and publishes the
/// counter sample there, signed by that key.
fn publish_counter(work: &Path, data: &DataDir, skills_dir: &Path) -> anyhow::Result<()> {
    let wasm = skills_dir.join(COUNTER_FILE);
    let blob = fs::read(&wasm).with_context(|| {
        format!(
            "reading the counter sample {} (build the samples with scripts/build-skills, or pass --skills-dir)",
            wasm.display()
        )
    })?;
    let key = PublisherKey::generate().context("generating the run's publisher key")?;
    let trust = TrustRoot::new(
        1,
        [TrustedPublisher::new(
            "bench publisher",
            key.verifying_key(),
        )],
    )?;
    fs::create_dir_all(data.root())
        .with_context(|| format!("creating {}", data.root().display()))?;
    write_file_atomically(&data.trust_file(), trust.to_toml().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", data.trust_file().display()))?;
    let manifest = Manifest::for_blob(
        COUNTER_PACKAGE.parse()?,
        semver::Version::parse(COUNTER_VERSION)?,
        Vec::new(),
        &blob,
        clawmesh_wasm_abi::WORLD,
        1,
        Capabilities::default(),
    )?;
    let signed = SignedManifest::sign(manifest, &[&key])?;
    let package_file = work.join("counter.pkg");
    write_file_atomically(&package_file, &encode_package(signed.envelope, blob), 0o644)
        .with_context(|| format!("writing {}", package_file.display()))?;
    publish_file(
        &package_file,
        None,
        &trust,
        &data.blob_store()?,
        &data.package_store()?,
    )
    .context("publishing the counter on the throwaway node")?;
    Ok(())
}
