//! Starts, health-checks, routes to, restarts and stops skill workers.
//!
//! Each deployed package has a [`Route`] with an active worker (and room for
//! a standby one: the swap starts the new version beside the old and flips).
//! Each [`SupervisedWorker`] is one skill version whose process is kept
//! alive by a task of its own: when the process exits (crash, SIGKILL,
//! cgroup OOM kill) the task restarts it with exponential backoff, within a
//! bounded number of restarts per window, after which the worker is failed.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, broadcast, watch};

use super::cgroup::{self, CgroupLimits, CgroupManager, CgroupSupport, WorkerCgroup};
use super::connection::{CallLog, ConnectionLimits, OrderedCall, WorkerConnection, read_frame};
use super::errors::{DeployError, InvokeError};
use super::frame::{self, FailureCode, Request, Response};
use super::metrics::RuntimeMetrics;
use super::route::{PauseLimits, Route, WindowLimits};
use super::worker::WorkerArgs;

/// How the supervisor starts a worker process: `exe`, then `leading_args`
/// (normally just `worker`), then the [`WorkerArgs`].
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable (the node's own binary in production).
    pub exe: PathBuf,
    /// Arguments before the worker's own (the subcommand name).
    pub leading_args: Vec<OsString>,
}

impl WorkerCommand {
    /// `exe worker ...`.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            leading_args: vec!["worker".into()],
        }
    }

    /// The running binary's own `worker` subcommand.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?))
    }
}

/// Restart backoff and its bound.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Wait before the first restart.
    pub initial_backoff: Duration,
    /// Longest wait between restarts (the backoff doubles up to it).
    pub max_backoff: Duration,
    /// Most restarts within `window`; one more and the worker is failed.
    pub max_restarts: u32,
    /// The window `max_restarts` counts over.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Node-wide supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Names this node's cgroups.
    pub node_name: String,
    /// How to start a worker.
    pub worker_command: WorkerCommand,
    /// Directory for the workers' Unix sockets (short path: sun_path is 108 bytes).
    pub runtime_dir: PathBuf,
    /// Compile cache shared by workers.
    pub cache_dir: PathBuf,
    /// Longest a worker may take to connect, load and pass `health`.
    pub startup_timeout: Duration,
    /// Longest a stopping worker gets to exit after `Shutdown` before SIGKILL.
    pub stop_grace: Duration,
    /// In-flight bound and timeouts of each worker connection.
    pub connection: ConnectionLimits,
    /// Restart backoff.
    pub restart: RestartPolicy,
    /// Bounds on calls held by a paused route.
    pub pause: PauseLimits,
    /// Each route's in-flight window (calls at the worker at once) and its
    /// queue.
    pub window: WindowLimits,
}

impl SupervisorConfig {
    /// Defaults for everything but the paths and the command (the window's
    /// size may come from `CLAWMESH_ROUTE_WINDOW`).
    pub fn new(
        node_name: String,
        worker_command: WorkerCommand,
        runtime_dir: PathBuf,
        cache_dir: PathBuf,
    ) -> Self {
        Self {
            node_name,
            worker_command,
            runtime_dir,
            cache_dir,
            startup_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(2),
            connection: ConnectionLimits::default(),
            restart: RestartPolicy::default(),
            pause: PauseLimits::default(),
            window: WindowLimits::from_env(),
        }
    }
}

/// Limits of one skill version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SkillLimits {
    /// Linear memory bound of the wasm instance (trap, worker keeps serving).
    pub wasm_memory_bytes: u64,
    /// Deadline of one call.
    pub deadline: Duration,
    /// The worker process's cgroup limits (kernel-enforced).
    pub cgroup: CgroupLimits,
}

impl Default for SkillLimits {
    fn default() -> Self {
        Self {
            wasm_memory_bytes: clawmesh_wasm_abi::EngineConfig::DEFAULT_MAX_MEMORY_BYTES,
            deadline: clawmesh_wasm_abi::EngineConfig::DEFAULT_CALL_DEADLINE,
            cgroup: CgroupLimits::default(),
        }
    }
}

/// What to run: one version of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillSpec {
    /// Package name (the route key).
    pub package: String,
    /// Version.
    pub version: String,
    /// The component file.
    pub wasm_path: PathBuf,
    /// sha256 of the component file.
    pub sha256: [u8; 32],
    /// Limits.
    pub limits: SkillLimits,
}

/// Lifecycle state of a supervised worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Process starting, not yet healthy.
    Starting,
    /// Serving.
    Ready,
    /// Exited; waiting out the backoff or starting again.
    Restarting,
    /// Restarted too often within the window; no longer restarted.
    Failed,
    /// Stopped on request.
    Stopped,
}

/// State and restart count of a worker, as followed through
/// [`SupervisedWorker::lifecycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    /// Current state.
    pub state: WorkerState,
    /// Restarts since the worker was started.
    pub restarts: u32,
}

/// A worker's cgroup as shown in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupStatus {
    /// `v1` or `v2`.
    pub version: &'static str,
    /// The worker's directories.
    pub dirs: Vec<PathBuf>,
    /// The limits written.
    pub limits: CgroupLimits,
    /// OOM kills recorded in the cgroup.
    pub oom_kills: Option<u64>,
}

/// Status of one worker of one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkillStatus {
    /// Package name.
    pub package: String,
    /// Version.
    pub version: String,
    /// `active` or `standby`.
    pub role: &'static str,
    /// Process id of the live worker process.
    pub pid: Option<u32>,
    /// Lifecycle state.
    pub state: WorkerState,
    /// Restarts since deployment.
    pub restarts: u32,
    /// Why the last process exited.
    pub last_exit: Option<String>,
    /// The worker's cgroup (none when cgroups are unavailable).
    pub cgroup: Option<CgroupStatus>,
    /// Memory of the worker's cgroup, bytes.
    pub memory_bytes: Option<u64>,
    /// Calls in flight on the worker's connection.
    pub in_flight: usize,
    /// Whether the route holds new calls (a swap in progress).
    pub paused: bool,
}

/// One live worker process.
#[derive(Debug)]
struct WorkerProcess {
    pid: u32,
    connection: WorkerConnection,
    cgroup: Option<WorkerCgroup>,
    /// Which of its package's state segments this process has attached
    /// (`PackageState`'s epoch; 0: none).
    segment_epoch: AtomicU64,
}

/// One skill version kept running by the supervisor.
#[derive(Debug)]
pub struct SupervisedWorker {
    spec: SkillSpec,
    name: String,
    process: RwLock<Option<Arc<WorkerProcess>>>,
    lifecycle: watch::Sender<Lifecycle>,
    last_exit: Mutex<Option<String>>,
    stopping: AtomicBool,
    stop: Notify,
    stopped: Notify,
}

impl SupervisedWorker {
    /// What this worker runs.
    pub fn spec(&self) -> &SkillSpec {
        &self.spec
    }

    /// Lifecycle state.
    pub fn state(&self) -> WorkerState {
        self.lifecycle.borrow().state
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.lifecycle.borrow().restarts
    }

    /// Follows state changes (e.g. to wait for a restart to finish).
    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// Process id of the live process.
    pub fn pid(&self) -> Option<u32> {
        self.current().map(|process| process.pid)
    }

    /// Invokes `op` on this worker (the route-free path, e.g. for warming).
    pub async fn invoke(&self, op: String, input: Bytes) -> Result<Bytes, InvokeError> {
        self.invoke_then(op, input, || {}, None).await
    }

    /// Invokes `op`; `queued` runs once the request is queued on the
    /// worker's connection, and `log` records the call if the worker runs
    /// it `Ok` (see [`WorkerConnection::invoke_then`]).
    pub async fn invoke_then(
        &self,
        op: String,
        input: Bytes,
        queued: impl FnOnce(),
        log: Option<Arc<dyn CallLog>>,
    ) -> Result<Bytes, InvokeError> {
        let process = self.live()?;
        process
            .connection
            .invoke_then(op, input, queued, log)
            .await
            .map_err(|error| InvokeError::from_call(&self.spec.package, error))
    }

    /// The package state segment epoch the live process has attached (0: none).
    pub fn segment_epoch(&self) -> u64 {
        self.current()
            .map_or(0, |process| process.segment_epoch.load(Ordering::Acquire))
    }

    /// Hands the live process a state segment's fd (SCM_RIGHTS) and records
    /// its epoch once the worker attached it.
    pub async fn attach_segment(
        &self,
        fd: std::os::fd::OwnedFd,
        epoch: u64,
    ) -> Result<(), InvokeError> {
        let process = self.live()?;
        process
            .connection
            .request_with_fd(&Request::AttachSegment, fd)
            .await
            .map_err(|error| InvokeError::from_call(&self.spec.package, error))?;
        process.segment_epoch.store(epoch, Ordering::Release);
        Ok(())
    }

    /// Sends a control request (`Snapshot`, `Restore`, `Health`) to the live process.
    pub async fn request(&self, request: &Request<'_>) -> Result<Bytes, InvokeError> {
        let process = self.live()?;
        process
            .connection
            .request(request)
            .await
            .map_err(|error| InvokeError::from_call(&self.spec.package, error))
    }

    /// Sends `calls` to the live process in this order and returns their
    /// answers in it (see [`WorkerConnection::call_in_order`]).
    pub async fn call_in_order(
        &self,
        calls: &[OrderedCall<'_>],
    ) -> Vec<Result<Bytes, InvokeError>> {
        let process = match self.live() {
            Ok(process) => process,
            Err(error) => return vec![Err(error); calls.len()],
        };
        process
            .connection
            .call_in_order(calls)
            .await
            .into_iter()
            .map(|reply| reply.map_err(|error| InvokeError::from_call(&self.spec.package, error)))
            .collect()
    }

    fn current(&self) -> Option<Arc<WorkerProcess>> {
        self.process
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn live(&self) -> Result<Arc<WorkerProcess>, InvokeError> {
        self.current()
            .ok_or_else(|| InvokeError::WorkerUnavailable {
                package: self.spec.package.clone(),
                reason: format!("worker is {:?}", self.state()).to_lowercase(),
            })
    }

    fn set_state(&self, state: WorkerState) {
        self.lifecycle
            .send_modify(|lifecycle| lifecycle.state = state);
    }

    fn set_process(&self, process: Option<Arc<WorkerProcess>>) {
        *self.process.write().unwrap_or_else(PoisonError::into_inner) = process;
    }

    fn status(&self, role: &'static str, paused: bool) -> SkillStatus {
        let process = self.current();
        let cgroup = process.as_ref().and_then(|p| p.cgroup.as_ref());
        SkillStatus {
            package: self.spec.package.clone(),
            version: self.spec.version.clone(),
            role,
            pid: process.as_ref().map(|p| p.pid),
            state: self.state(),
            restarts: self.restarts(),
            last_exit: self
                .last_exit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            cgroup: cgroup.map(|c| CgroupStatus {
                version: c.version(),
                dirs: c.dirs().to_vec(),
                limits: *c.limits(),
                oom_kills: c.oom_kills(),
            }),
            memory_bytes: cgroup.and_then(WorkerCgroup::memory_bytes),
            in_flight: process.as_ref().map_or(0, |p| p.connection.in_flight()),
            paused,
        }
    }
}

/// Everything the supervisor shares with its tasks.
#[derive(Debug)]
struct Inner {
    config: SupervisorConfig,
    cgroups: CgroupManager,
    routes: RwLock<HashMap<String, Arc<Route<SupervisedWorker>>>>,
    metrics: Arc<RuntimeMetrics>,
    next_worker: AtomicU64,
    /// Serialises deploy/stop/swap/checkpoint so two of them never race on one route.
    control: tokio::sync::Mutex<()>,
    /// Per package: its state segment, checkpoints and swap history.
    packages: RwLock<HashMap<String, Arc<crate::swap::PackageState>>>,
    /// Swap, rollback, checkpoint and recovery events.
    events: broadcast::Sender<crate::swap::SwapEvent>,
}

/// Swap events kept for a slow subscriber before it starts missing some.
pub const EVENT_BACKLOG: usize = 1024;

/// The runtime's supervisor; cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// A supervisor using `cgroups` (from [`CgroupManager::detect`]).
    pub fn new(config: SupervisorConfig, cgroups: CgroupManager) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.runtime_dir)?;
        std::fs::create_dir_all(&config.cache_dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                cgroups,
                routes: RwLock::default(),
                metrics: Arc::new(RuntimeMetrics::new()),
                next_worker: AtomicU64::new(1),
                control: tokio::sync::Mutex::new(()),
                packages: RwLock::default(),
                events: broadcast::Sender::new(EVENT_BACKLOG),
            }),
        })
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.config.node_name
    }

    /// What cgroup support workers get (for `doctor`, status, `/readyz`).
    pub fn cgroup_support(&self) -> &CgroupSupport {
        self.inner.cgroups.support()
    }

    /// The metrics this supervisor records.
    pub fn metrics(&self) -> &Arc<RuntimeMetrics> {
        &self.inner.metrics
    }

    /// Starts a worker for `spec`, waits for it to load and pass `health`,
    /// then routes `spec.package` to it. A worker already serving the
    /// package is stopped after the route moved.
    pub async fn deploy(&self, spec: SkillSpec) -> Result<(), DeployError> {
        let control = self.inner.control.lock().await;
        self.deploy_locked(&control, spec).await
    }

    /// Holds the lock that serialises deploy, stop, swap and checkpoints.
    pub async fn lock_control(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.control.lock().await
    }

    /// [`Supervisor::deploy`] for a caller already holding [`Supervisor::lock_control`].
    pub async fn deploy_locked(
        &self,
        control: &tokio::sync::MutexGuard<'_, ()>,
        spec: SkillSpec,
    ) -> Result<(), DeployError> {
        let worker = self.start_worker(spec).await?;
        if let Some(previous) = self.install(control, worker) {
            self.stop_worker(&previous).await;
        }
        Ok(())
    }

    /// Routes `worker`'s package to it (a started, healthy worker), making
    /// the route if needed; returns the active worker it replaced, which the
    /// caller stops.
    pub fn install(
        &self,
        _control: &tokio::sync::MutexGuard<'_, ()>,
        worker: Arc<SupervisedWorker>,
    ) -> Option<Arc<SupervisedWorker>> {
        let package = worker.spec.package.clone();
        match self.route(&package) {
            Some(route) => Some(route.replace_active(worker)),
            None => {
                let metrics = self.inner.metrics.skill(&package);
                let route = Arc::new(Route::new(
                    package.clone(),
                    worker,
                    self.inner.config.pause,
                    self.inner.config.window,
                    metrics,
                ));
                self.inner
                    .routes
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(package, route);
                None
            }
        }
    }

    /// Starts and supervises a worker without routing to it (the swap's
    /// first step: warm the new version beside the old).
    pub async fn start_worker(
        &self,
        spec: SkillSpec,
    ) -> Result<Arc<SupervisedWorker>, DeployError> {
        validate_spec(&spec)?;
        let number = self.inner.next_worker.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{number}", spec.package, spec.version);
        let worker = Arc::new(SupervisedWorker {
            spec,
            name,
            process: RwLock::new(None),
            lifecycle: watch::Sender::new(Lifecycle {
                state: WorkerState::Starting,
                restarts: 0,
            }),
            last_exit: Mutex::new(None),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            stopped: Notify::new(),
        });
        let (child, process) = spawn_process(&self.inner, &worker).await?;
        worker.set_process(Some(process));
        worker.set_state(WorkerState::Ready);
        tokio::spawn(supervise(self.inner.clone(), worker.clone(), child));
        Ok(worker)
    }

    /// The route of `package`.
    pub fn route(&self, package: &str) -> Option<Arc<Route<SupervisedWorker>>> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(package)
            .cloned()
    }

    /// Calls `op` of `package`'s active worker with `input`.
    pub async fn invoke(
        &self,
        package: &str,
        op: String,
        input: Bytes,
    ) -> Result<Bytes, InvokeError> {
        let Some(route) = self.route(package) else {
            // Not counted: a label per unknown name from the network would
            // let any client grow the metrics without bound.
            return Err(InvokeError::NoSuchSkill {
                package: package.to_string(),
            });
        };
        let started = Instant::now();
        let result = match route.enter().await {
            Ok(call) => {
                // Marked sent once queued: a swap's snapshot queued after
                // that runs after this call at the worker. Journaled by the
                // connection in the order the worker ran the calls, before
                // the answer reaches this task.
                let result = route
                    .active()
                    .invoke_then(op, input, || call.sent(), Some(route.call_log()))
                    .await;
                drop(call);
                result
            }
            Err(error) => Err(error),
        };
        route.metrics().observe(started.elapsed());
        if let Err(error) = &result {
            self.inner.metrics.error(package, error.code());
        }
        result
    }

    /// The swap state of `package` (created on first use).
    pub fn package_state(&self, package: &str) -> Arc<crate::swap::PackageState> {
        if let Some(state) = self
            .inner
            .packages
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(package)
        {
            return state.clone();
        }
        self.inner
            .packages
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(package.to_string())
            .or_insert_with(|| Arc::new(crate::swap::PackageState::new(package.to_string())))
            .clone()
    }

    /// The swap state of `package` if it has one.
    pub fn existing_package_state(&self, package: &str) -> Option<Arc<crate::swap::PackageState>> {
        self.inner
            .packages
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(package)
            .cloned()
    }

    /// Publishes a swap event to every subscriber.
    pub fn emit(&self, event: crate::swap::SwapEvent) {
        tracing::info!(?event, "swap event");
        let _ = self.inner.events.send(event);
    }

    /// Follows swap events from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<crate::swap::SwapEvent> {
        self.inner.events.subscribe()
    }

    /// Packages with a route.
    pub fn packages(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Stops `package`'s workers and removes its route; `false` if it had none.
    pub async fn stop(&self, package: &str) -> bool {
        let _control = self.inner.control.lock().await;
        self.inner
            .packages
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(package);
        let Some(route) = self
            .inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(package)
        else {
            return false;
        };
        if let Some(standby) = route.set_standby(None) {
            self.stop_worker(&standby).await;
        }
        let active = route.active();
        self.stop_worker(&active).await;
        true
    }

    /// Stops every package and removes the node's cgroup directories.
    pub async fn shutdown(&self) {
        let packages: Vec<String> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for package in packages {
            self.stop(&package).await;
        }
        self.inner.cgroups.remove_node_dirs();
    }

    /// Stops one worker: `Shutdown`, then SIGKILL after the grace period;
    /// returns once the process is reaped and its cgroup removed.
    pub async fn stop_worker(&self, worker: &Arc<SupervisedWorker>) {
        if worker.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let stopped = worker.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        worker.stop.notify_one();
        if worker.state() != WorkerState::Stopped {
            stopped.await;
        }
        self.inner
            .metrics
            .worker_memory(&worker.spec.package, &worker.spec.version, None);
    }

    /// Status of every worker, active first within a package, packages sorted.
    pub fn status(&self) -> Vec<SkillStatus> {
        let mut routes: Vec<_> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        routes.sort_by(|a, b| a.package().cmp(b.package()));
        let mut out = Vec::with_capacity(routes.len());
        for route in routes {
            let paused = route.is_paused();
            out.push(route.active().status("active", paused));
            if let Some(standby) = route.standby() {
                out.push(standby.status("standby", paused));
            }
        }
        for status in &out {
            self.inner
                .metrics
                .worker_memory(&status.package, &status.version, status.memory_bytes);
        }
        out
    }
}

fn validate_spec(spec: &SkillSpec) -> Result<(), DeployError> {
    if spec.package.is_empty() || spec.package.len() > 256 || spec.package.contains('/') {
        return Err(DeployError::InvalidSpec {
            field: "package",
            why: format!("{:?} must be 1..=256 bytes without '/'", spec.package),
        });
    }
    if spec.limits.deadline.is_zero() {
        return Err(DeployError::InvalidSpec {
            field: "limits.deadline",
            why: "must be above zero".into(),
        });
    }
    if !spec.wasm_path.is_file() {
        return Err(DeployError::InvalidSpec {
            field: "wasm_path",
            why: format!("{} is not a file", spec.wasm_path.display()),
        });
    }
    Ok(())
}

/// Starts one worker process and waits until it passed `health`.
async fn spawn_process(
    inner: &Inner,
    worker: &SupervisedWorker,
) -> Result<(Child, Arc<WorkerProcess>), DeployError> {
    let spec = &worker.spec;
    let package = spec.package.clone();
    let config = &inner.config;
    let socket = config
        .runtime_dir
        .join(format!("{}.sock", cgroup::sanitize_name(&worker.name)));
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| DeployError::Socket {
        path: socket.clone(),
        source,
    })?;
    // The listener is only for this one connection: unlink it whatever happens.
    let _unlink = UnlinkOnDrop(socket.clone());

    let cgroup = inner
        .cgroups
        .create(&worker.name, &spec.limits.cgroup)
        .map_err(|source| DeployError::Cgroup {
            package: package.clone(),
            source,
        })?;
    let cgroup = CgroupGuard(cgroup);
    let join = match &cgroup.0 {
        Some(cgroup) => Some(cgroup.open_procs().map_err(|source| DeployError::Cgroup {
            package: package.clone(),
            source,
        })?),
        None => None,
    };

    let args = WorkerArgs {
        socket: socket.clone(),
        wasm: spec.wasm_path.clone(),
        sha256: hex::encode(spec.sha256),
        cache_dir: config.cache_dir.clone(),
        max_memory: spec.limits.wasm_memory_bytes,
        deadline_ms: u64::try_from(spec.limits.deadline.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
        name: format!("{}@{}", spec.package, spec.version),
    };
    let mut command = Command::new(&config.worker_command.exe);
    command
        .args(&config.worker_command.leading_args)
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // A backtrace per trap makes traps far slower (see wasm-abi).
        .env_remove("RUST_BACKTRACE")
        .kill_on_drop(true);
    if let Some(join) = &join {
        let fds = join.fds();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls `join_current_process`, which does nothing but write(2) on
        // fds that stay open in the parent until after spawn returns.
        unsafe {
            command.pre_exec(move || cgroup::join_current_process(&fds));
        }
    }
    let mut child = command.spawn().map_err(|source| DeployError::Spawn {
        exe: config.worker_command.exe.clone(),
        source,
    })?;
    drop(join);
    let pid = child.id().unwrap_or(0);

    let outcome = wait_ready(config, &listener, &mut child, &package, &spec.version).await;
    match outcome {
        Ok(connection) => {
            let cgroup = cgroup.take();
            Ok((
                child,
                Arc::new(WorkerProcess {
                    pid,
                    connection,
                    cgroup,
                    segment_epoch: AtomicU64::new(0),
                }),
            ))
        }
        Err(error) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(error)
        }
    }
}

/// Waits for a spawned worker to connect, send its hello and pass `health`.
/// Only the connect stage races the child's exit: once connected, whatever
/// the worker sent before dying (a load error) is still readable.
async fn wait_ready(
    config: &SupervisorConfig,
    listener: &UnixListener,
    child: &mut Child,
    package: &str,
    version: &str,
) -> Result<WorkerConnection, DeployError> {
    let timeout = config.startup_timeout;
    let package_owned = || package.to_string();
    let exited = |status: std::io::Result<ExitStatus>| DeployError::ExitedEarly {
        package: package.to_string(),
        status: status.map_or_else(|error| error.to_string(), describe_exit),
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(timeout, listener.accept()) => accepted,
        status = child.wait() => return Err(exited(status)),
    };
    let (mut stream, _) = accepted
        .map_err(|_| DeployError::StartTimeout {
            package: package_owned(),
            timeout,
            stage: "connect",
        })?
        .map_err(|source| DeployError::Socket {
            path: config.runtime_dir.clone(),
            source,
        })?;
    let hello = tokio::time::timeout(timeout, read_frame(&mut stream))
        .await
        .map_err(|_| DeployError::StartTimeout {
            package: package_owned(),
            timeout,
            stage: "load",
        })?;
    let hello = match hello {
        Ok(hello) => hello,
        // Closed without a word: the exit status says more than the EOF.
        Err(detail) => {
            return Err(match tokio::time::timeout(timeout, child.wait()).await {
                Ok(status) => exited(status),
                Err(_) => DeployError::Protocol {
                    package: package_owned(),
                    detail,
                },
            });
        }
    };
    match frame::decode_response(&hello) {
        Ok(frame::Frame {
            id: frame::HELLO_ID,
            body: Response::Ok(_),
        }) => {}
        Ok(frame::Frame {
            id: frame::HELLO_ID,
            body: Response::Err(failure),
        }) if failure.code == FailureCode::LoadFailed => {
            return Err(DeployError::Load {
                package: package_owned(),
                version: version.to_string(),
                message: failure.message.to_string(),
            });
        }
        Ok(other) => {
            return Err(DeployError::Protocol {
                package: package_owned(),
                detail: format!("expected hello, got {other:?}"),
            });
        }
        Err(error) => {
            return Err(DeployError::Protocol {
                package: package_owned(),
                detail: error.to_string(),
            });
        }
    }
    let connection = WorkerConnection::start(stream, config.connection);
    let health = tokio::time::timeout(timeout, connection.request(&Request::Health))
        .await
        .map_err(|_| DeployError::StartTimeout {
            package: package_owned(),
            timeout,
            stage: "health",
        })?;
    health.map_err(|error| DeployError::Unhealthy {
        package: package_owned(),
        source: InvokeError::from_call(package, error),
    })?;
    Ok(connection)
}

/// Longest a restart waits for the dead worker's last answers to be read.
const READER_DRAIN: Duration = Duration::from_secs(1);

/// Keeps one worker running until it is stopped or fails too often.
async fn supervise(inner: Arc<Inner>, worker: Arc<SupervisedWorker>, mut child: Child) {
    let policy = inner.config.restart;
    let mut recent_restarts: VecDeque<Instant> = VecDeque::new();
    let mut backoff = policy.initial_backoff;
    'running: loop {
        let exit = tokio::select! {
            status = child.wait() => Some(status),
            () = worker.stop.notified() => None,
        };
        let process = worker.current();
        worker.set_process(None);
        let exit = match exit {
            Some(status) => status,
            None => {
                graceful_stop(&inner, process.as_deref(), &mut child).await;
                break 'running;
            }
        };
        let oom = process
            .as_ref()
            .and_then(|p| p.cgroup.as_ref())
            .and_then(WorkerCgroup::oom_kills)
            .filter(|&n| n > 0);
        let mut reason = exit.map_or_else(|error| error.to_string(), describe_exit);
        if let Some(oom) = oom {
            reason.push_str(&format!(" (cgroup OOM kills: {oom})"));
        }
        tracing::warn!(worker = %worker.name, %reason, "worker exited");
        // Answers the worker wrote before it died may still be unread: the
        // old connection's reader journals them (and acknowledges them)
        // before it ends, and the restart's recovery replays the journal,
        // so it must not read the journal before that.
        if let Some(process) = &process
            && tokio::time::timeout(READER_DRAIN, process.connection.reader_finished())
                .await
                .is_err()
        {
            tracing::warn!(worker = %worker.name, "the dead worker's answers were not all read in time");
        }
        *worker
            .last_exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason);
        release(process);
        if worker.stopping.load(Ordering::Acquire) {
            break 'running;
        }
        // Restart, with backoff, within the budget.
        loop {
            let now = Instant::now();
            while recent_restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > policy.window)
            {
                recent_restarts.pop_front();
            }
            if recent_restarts.len() >= policy.max_restarts as usize {
                tracing::error!(worker = %worker.name, max = policy.max_restarts, window = ?policy.window, "worker restarted too often; giving up");
                worker.set_state(WorkerState::Failed);
                // Stay until stopped so `stop` finds the worker settled.
                worker.stop.notified().await;
                break 'running;
            }
            worker.set_state(WorkerState::Restarting);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = worker.stop.notified() => break 'running,
            }
            recent_restarts.push_back(Instant::now());
            backoff = (backoff * 2).min(policy.max_backoff);
            worker
                .lifecycle
                .send_modify(|lifecycle| lifecycle.restarts += 1);
            inner.metrics.restart(&worker.spec.package);
            match spawn_process(&inner, &worker).await {
                Ok((new_child, process)) => {
                    child = new_child;
                    let supervisor = Supervisor {
                        inner: inner.clone(),
                    };
                    let epoch =
                        crate::swap::recover_restarted(&supervisor, &worker, &process.connection)
                            .await;
                    process.segment_epoch.store(epoch, Ordering::Release);
                    worker.set_process(Some(process));
                    worker.set_state(WorkerState::Ready);
                    tracing::info!(worker = %worker.name, restarts = worker.restarts(), "worker restarted");
                    continue 'running;
                }
                Err(error) => {
                    tracing::warn!(worker = %worker.name, %error, "worker restart failed");
                    *worker
                        .last_exit
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
                }
            }
        }
    }
    worker.set_state(WorkerState::Stopped);
    worker.stopped.notify_waiters();
}

/// `Shutdown`, a grace period, then SIGKILL; reaps and removes the cgroup.
async fn graceful_stop(inner: &Inner, process: Option<&WorkerProcess>, child: &mut Child) {
    let grace = inner.config.stop_grace;
    if let Some(process) = process {
        let _ = tokio::time::timeout(grace, process.connection.request(&Request::Shutdown)).await;
        process.connection.close();
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    if let Some(process) = process
        && let Some(cgroup) = &process.cgroup
        && let Err(error) = cgroup.remove()
    {
        tracing::warn!(%error, "worker cgroup not removed");
    }
}

/// Removes an exited process's cgroup (the process is reaped by now).
fn release(process: Option<Arc<WorkerProcess>>) {
    if let Some(process) = process
        && let Some(cgroup) = &process.cgroup
        && let Err(error) = cgroup.remove()
    {
        tracing::warn!(%error, "worker cgroup not removed");
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map_or_else(|_| signal.to_string(), |s| s.to_string());
            format!("killed by {name}")
        }
        (None, None) => status.to_string(),
    }
}

struct UnlinkOnDrop(PathBuf);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes a worker cgroup unless it was handed on to a live process.
struct CgroupGuard(Option<WorkerCgroup>);

impl CgroupGuard {
    fn take(mut self) -> Option<WorkerCgroup> {
        self.0.take()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = &self.0 {
            let _ = cgroup.remove();
        }
    }
}
