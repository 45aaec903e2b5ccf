//! The one trait a skill implements, and the macro that exports it.

use crate::bindings::{Guest, SkillError, State};

/// A clawmesh skill. State lives in the instance (a `static` with interior
/// mutability or a `thread_local!`): the host keeps one instance warm and
/// calls it many times, and moves state between versions through
/// [`Skill::snapshot`] and [`Skill::restore`].
pub trait Skill {
    /// Handles one request: `op` names the operation, `input` is its body.
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError>;

    /// Returns the whole state, tagged with its schema version.
    fn snapshot() -> State;

    /// Replaces the whole state. Must accept this skill's own schema and the
    /// previous one (migrating it); other schemas are refused with
    /// [`SkillError::unsupported_schema`].
    fn restore(state: State) -> Result<(), SkillError>;

    /// Reports whether the skill can serve; healthy unless overridden.
    fn health() -> Result<(), SkillError> {
        Ok(())
    }
}

impl<T: Skill> Guest for T {
    fn handle(op: String, input: Vec<u8>) -> Result<Vec<u8>, SkillError> {
        <T as Skill>::handle(&op, &input)
    }

    fn snapshot() -> State {
        <T as Skill>::snapshot()
    }

    fn restore(s: State) -> Result<(), SkillError> {
        <T as Skill>::restore(s)
    }

    fn health() -> Result<(), SkillError> {
        <T as Skill>::health()
    }
}

/// Exports `$skill` (a type implementing [`Skill`]) as this component's
/// `clawmesh:skill/skill` world. Call it once, at the crate root of the skill.
#[macro_export]
macro_rules! export_skill {
    ($skill:ident) => {
        $crate::bindings::export!($skill with_types_in $crate::bindings);
    };
}
