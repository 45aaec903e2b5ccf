//! Shared set-up of the runtime tests: a supervisor whose workers are the
//! real `clawmesh worker`, and the sample skills.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use clawmesh_node::runtime::supervisor::Lifecycle;
use clawmesh_node::runtime::{
    CgroupManager, DeployError, SkillLimits, SkillSpec, Supervisor, SupervisorConfig,
    WorkerCommand, WorkerState,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Where `scripts/build-skills` puts the sample components
/// (`CLAWMESH_SKILLS_DIR` overrides it).
pub fn skills_dir() -> PathBuf {
    std::env::var_os("CLAWMESH_SKILLS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../skills/target/wasm32-wasip2/release"),
        PathBuf::from,
    )
}

/// A supervisor on this host's cgroups with a throwaway runtime dir.
pub struct Harness {
    pub supervisor: Supervisor,
    pub node: String,
    _runtime: tempfile::TempDir,
}

impl Harness {
    pub fn new(label: &str) -> Self {
        let node = format!("test-{label}-{}", std::process::id());
        let runtime = tempfile::tempdir().unwrap();
        // Shared by every test so each skill is compiled once per build.
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("runtime-skill-cache");
        let mut config = SupervisorConfig::new(
            node.clone(),
            WorkerCommand::new(env!("CARGO_BIN_EXE_clawmesh").into()),
            runtime.path().join("run"),
            cache,
        );
        config.restart.initial_backoff = Duration::from_millis(20);
        let supervisor = Supervisor::new(config, CgroupManager::detect(&node)).unwrap();
        Self {
            supervisor,
            node,
            _runtime: runtime,
        }
    }

    /// A spec for `skills_dir()/<file>.wasm`, packaged as `file`.
    pub fn skill(&self, file: &str) -> SkillSpec {
        let wasm_path = skills_dir().join(format!("{file}.wasm"));
        let bytes = std::fs::read(&wasm_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build the sample skills with scripts/build-skills)",
                wasm_path.display()
            )
        });
        SkillSpec {
            package: file.to_string(),
            version: "0.1.0".into(),
            wasm_path,
            sha256: Sha256::digest(&bytes).into(),
            limits: SkillLimits::default(),
        }
    }

    pub async fn deploy(
        &self,
        package: &str,
        file: &str,
        limits: SkillLimits,
    ) -> Result<(), DeployError> {
        let spec = SkillSpec {
            package: package.to_string(),
            limits,
            ..self.skill(file)
        };
        self.supervisor.deploy(spec).await
    }

    /// No worker directory is left under this node's cgroups.
    pub fn assert_no_worker_cgroups(&self) {
        let support = serde_json::to_value(self.supervisor.cgroup_support()).unwrap();
        for (key, dir) in support.as_object().unwrap() {
            if key.ends_with("dir") {
                let dir = PathBuf::from(dir.as_str().unwrap());
                let children: Vec<_> = std::fs::read_dir(&dir)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_type().unwrap().is_dir())
                    .map(|e| e.path())
                    .collect();
                assert!(children.is_empty(), "left behind: {children:?}");
            }
        }
    }

    pub async fn shutdown(self) {
        self.supervisor.shutdown().await;
    }
}

/// Waits until the worker has restarted `restarts` times and is ready again.
pub async fn wait_for_restart(mut lifecycle: watch::Receiver<Lifecycle>, restarts: u32) {
    let reached = lifecycle.wait_for(|l| l.restarts >= restarts && l.state == WorkerState::Ready);
    let outcome = tokio::time::timeout(Duration::from_secs(60), reached)
        .await
        .map(|r| r.map(|_| ()));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("worker dropped while waiting for a restart"),
        Err(_) => panic!("no restart within 60 s: {:?}", *lifecycle.borrow()),
    }
}

/// One HTTP/1.1 exchange with `Connection: close`: (status, body).
pub async fn http_exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    http_exchange_declaring(addr, method, path, body.len(), body).await
}

/// Like [`http_exchange`], with a Content-Length of `declared` whatever the
/// body sent.
pub async fn http_exchange_declaring(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    declared: usize,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}
