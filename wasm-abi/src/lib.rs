//! The clawmesh skill ABI: the WIT world `clawmesh:skill@0.1.0` (in `wit/`) and
//! its wasmtime host side.
//!
//! A worker process hosts one skill: it builds one [`SkillEngine`], loads the
//! skill's component ([`SkillEngine::load`] or, with a compile cache,
//! [`SkillEngine::load_cached`]), instantiates it ([`SkillEngine::instantiate`])
//! and calls the [`SkillInstance`] synchronously. Every call runs under a
//! deadline (epoch interruption) and a memory and table limit; a trap poisons
//! the instance and the caller instantiates a new one.
//!
//! Set no `RUST_BACKTRACE` in a worker's environment: with it wasmtime captures
//! a host backtrace on every trap, which makes traps far slower.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod bindings;
mod cache;
mod call_error;
mod component;
mod config;
mod engine;
mod epoch_ticker;
mod errors;
mod host;
mod instance;
mod limiter;
mod log_budget;
mod state;
mod store_data;
mod validate;

pub use cache::CacheOutcome;
pub use call_error::CallError;
pub use component::SkillComponent;
pub use config::EngineConfig;
pub use engine::SkillEngine;
pub use errors::{EngineError, InstantiateError, LoadError};
pub use host::{HostClock, HostLog, LogLevel, SystemClock, TracingLog};
pub use instance::SkillInstance;
pub use state::SkillState;
pub use validate::{GRANTED_IMPORT_PREFIXES, MAX_COMPONENT_BYTES, WORLD, WORLD_EXPORTS};
