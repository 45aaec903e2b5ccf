//! `clawmesh node`: composes the stores, the skill runtime, the HTTP server
//! and the admin socket into one running node, and tells scripts where it
//! listens (`<data_dir>/node.json`).

pub mod admin_protocol;
mod admin_server;
pub mod local_deploy;
pub mod mesh_admin;
mod mesh_fetch;
mod node_info;
mod node_mesh;
pub mod release;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use clap::Args;
use nix::fcntl::{Flock, FlockArg};

use crate::data_dir::DataDir;
use crate::runtime::{
    CgroupManager, RuntimeHttpState, Supervisor, SupervisorConfig, WorkerCommand,
};

pub use admin_protocol::{AdminClientError, AdminError, AdminRequest, AdminResponse, admin_call};
pub use node_info::NodeInfo;

/// `clawmesh node` options.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "CLAWMESH_DATA_DIR")]
    pub data_dir: PathBuf,
    /// HTTP address (invoke, status, metrics, probes); port 0 picks one.
    #[arg(long, env = "CLAWMESH_HTTP", default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// Trust root (default: `<data_dir>/trust.toml`).
    #[arg(long, env = "CLAWMESH_TRUST")]
    pub trust: Option<PathBuf>,
    /// Name of this node in cgroups and status (default: the data dir's name).
    #[arg(long)]
    pub name: Option<String>,
    /// libp2p listen address; repeat for several.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    pub listen: Vec<libp2p::Multiaddr>,
    /// A bootstrap peer (`/ip4/.../tcp/.../p2p/<peer id>`); repeat for several.
    #[arg(long)]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Distinct nodes reporting a version Failed that quarantine it mesh-wide.
    #[arg(long, default_value_t = 3)]
    pub quarantine_threshold: usize,
    /// Run without the mesh (local deploys only).
    #[arg(long)]
    pub no_mesh: bool,
}

/// Runs a node until SIGINT or SIGTERM.
pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("clawmesh-node")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

/// Everything a running node shares between its servers.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// Where the node keeps its state.
    pub data: DataDir,
    /// Trusted publisher keys.
    pub trust: Arc<clawmesh_crdt::trust::TrustRoot>,
    /// Verified blobs.
    pub blobs: crate::blob_store::BlobStore,
    /// Signed manifests.
    pub packages: crate::package_store::PackageStore,
    /// Skill workers.
    pub supervisor: Supervisor,
    /// The mesh side, once it is up.
    pub mesh: Arc<std::sync::OnceLock<mesh_admin::MeshSide>>,
    /// Blobs of running skills, kept from garbage collection.
    pub pins:
        Arc<std::sync::Mutex<std::collections::BTreeMap<String, crate::blob_store::PinGuard>>>,
}

impl NodeContext {
    /// Keeps `package`'s running blob from collection (replacing its old pin).
    pub fn pin(&self, package: &str, pin: crate::blob_store::PinGuard) {
        self.pins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(package.to_string(), pin);
    }

    /// Releases `package`'s pin.
    pub fn unpin(&self, package: &str) {
        self.pins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(package);
    }
}

async fn serve(args: NodeArgs) -> anyhow::Result<()> {
    let data = DataDir::new(&args.data_dir);
    std::fs::create_dir_all(data.root())
        .with_context(|| format!("creating {}", data.root().display()))?;
    let _lock = lock_data_dir(&data)?;
    let trust_path = args.trust.clone().unwrap_or_else(|| data.trust_file());
    let trust = crate::data_dir::read_trust(&trust_path)?;
    let name = args.name.clone().unwrap_or_else(|| {
        data.root()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "node".into())
    });

    // Worker sockets live in a short private directory: a Unix socket path
    // must fit in 108 bytes, and data dirs can be long.
    let runtime_dir = tempfile::Builder::new()
        .prefix("clawmesh-rt-")
        .tempdir()
        .context("creating the worker socket directory")?;
    let cgroup_name = format!(
        "{}-{}",
        crate::runtime::cgroup::sanitize_name(&name),
        std::process::id()
    );
    let cgroups = CgroupManager::detect(&cgroup_name);
    if let crate::runtime::CgroupSupport::Unavailable { reason } = cgroups.support() {
        tracing::warn!(%reason, "running skills WITHOUT cgroup limits");
        eprintln!("warning: cgroups unavailable, skills run without kernel limits: {reason}");
    }
    let supervisor = Supervisor::new(
        SupervisorConfig::new(
            cgroup_name,
            WorkerCommand::current_exe().context("locating the clawmesh binary")?,
            runtime_dir.path().to_path_buf(),
            data.cache_dir(),
        ),
        cgroups,
    )
    .context("starting the supervisor")?;

    let ctx = NodeContext {
        blobs: data.blob_store()?,
        packages: data.package_store()?,
        data: data.clone(),
        trust: Arc::new(trust),
        supervisor: supervisor.clone(),
        mesh: Arc::default(),
        pins: Arc::default(),
    };

    let http_state = RuntimeHttpState::new(supervisor.clone());
    let serving = http_state.serving.clone();
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding HTTP on {}", args.http))?;
    let http_addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(crate::runtime::http::serve(
        listener,
        http_state,
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));

    let admin_path = data.admin_socket();
    let admin_task = admin_server::spawn(&admin_path, ctx.clone(), stop_rx.clone())?;

    let mesh = if args.no_mesh {
        None
    } else {
        Some(node_mesh::start(&args, &ctx, stop_rx.clone()).await?)
    };
    let info = NodeInfo {
        name: name.clone(),
        pid: std::process::id(),
        http: format!("http://{http_addr}"),
        admin_socket: admin_path.display().to_string(),
        cgroups: supervisor.cgroup_support().label().to_string(),
        peer_id: mesh.as_ref().map(|m| m.peer_id.clone()),
        p2p: mesh.as_ref().map(|m| m.addrs.clone()).unwrap_or_default(),
    };
    info.write(&data.node_json()).context("writing node.json")?;
    tracing::info!(http = %http_addr, admin = %admin_path.display(), "node serving");
    eprintln!(
        "clawmesh node {name} serving on http://{http_addr} (admin socket {})",
        admin_path.display()
    );

    wait_for_signal().await?;
    eprintln!("clawmesh node {name} shutting down");
    serving.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    if let Some(mesh) = &mesh {
        mesh.network.shutdown().await;
    }
    supervisor.shutdown().await;
    let _ = std::fs::remove_file(data.node_json());
    let _ = std::fs::remove_file(&admin_path);
    let _ = admin_task.await;
    match http_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("HTTP server"),
        Err(e) => bail!("HTTP server task: {e}"),
    }
}

/// One node per data dir: a second one would corrupt stores and sockets.
fn lock_data_dir(data: &DataDir) -> anyhow::Result<Flock<std::fs::File>> {
    let path = data.root().join("node.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow::anyhow!(
            "another clawmesh node already runs with data dir {} ({errno})",
            data.root().display()
        )
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
