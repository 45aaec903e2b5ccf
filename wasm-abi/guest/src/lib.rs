//! Guest SDK for clawmesh skills.
//!
//! A skill author implements [`Skill`] once and calls [`export_skill!`] once;
//! the WIT bindings for the `clawmesh:skill@0.1.0` world are generated here so
//! no skill carries hand-written bindings.
//!
//! ```ignore
//! struct Counter;
//! impl clawmesh_guest::Skill for Counter {
//!     fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, clawmesh_guest::SkillError> { todo!() }
//!     fn snapshot() -> clawmesh_guest::State { todo!() }
//!     fn restore(state: clawmesh_guest::State) -> Result<(), clawmesh_guest::SkillError> { todo!() }
//! }
//! clawmesh_guest::export_skill!(Counter);
//! ```

#[doc(hidden)]
pub mod bindings;
mod clock;
mod error;
pub mod log;
mod skill;

pub use bindings::{SkillError, State};
pub use clock::now_ms;
pub use error::codes;
pub use skill::Skill;
