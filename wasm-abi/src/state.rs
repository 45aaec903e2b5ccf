//! A skill's state as the host sees it.

/// A skill's whole state: opaque bytes tagged with the skill's layout version.
/// Returned by [`crate::SkillInstance::snapshot`], accepted by
/// [`crate::SkillInstance::restore`] of the same or the next version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkillState {
    /// Layout version of `data`, chosen by the skill.
    pub schema: u32,
    /// The serialised state; its format is private to the skill.
    pub data: Vec<u8>,
}

impl From<crate::bindings::State> for SkillState {
    fn from(s: crate::bindings::State) -> Self {
        Self {
            schema: s.schema,
            data: s.data,
        }
    }
}
