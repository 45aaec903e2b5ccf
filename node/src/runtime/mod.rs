//! The local skill runtime: worker processes under cgroups, the node ↔
//! worker wire protocol, the supervisor that routes calls to warm workers,
//! and the HTTP surface (invoke, status, metrics, health probes).
//!
//! docs/RUNTIME.md describes the design; the hot path is
//! [`http::router`] → [`Supervisor::invoke`] → [`connection::WorkerConnection`]
//! → the worker's already-instantiated skill.

pub mod cgroup;
pub mod connection;
pub mod errors;
pub mod frame;
pub mod frame_reader;
pub mod http;
pub mod metrics;
pub mod route;
pub mod supervisor;
pub mod worker;

pub use cgroup::{CgroupLimits, CgroupManager, CgroupSupport};
pub use errors::{DeployError, InvokeError};
pub use http::{RuntimeHttpState, router};
pub use metrics::RuntimeMetrics;
pub use route::{
    DEFAULT_ROUTE_WINDOW, MAX_ROUTE_WINDOW, PauseLimits, ROUTE_WINDOW_ENV, Route, WindowLimits,
};
pub use supervisor::{
    Lifecycle, RestartPolicy, SkillLimits, SkillSpec, SkillStatus, SupervisedWorker, Supervisor,
    SupervisorConfig, WorkerCommand, WorkerState,
};
pub use worker::{WorkerArgs, run_worker};
