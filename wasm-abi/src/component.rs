//! A loaded, validated, compiled skill component.

use crate::bindings::SkillPre;
use crate::store_data::StoreData;

/// A component that targets the skill world, compiled and linked against this
/// engine's host imports; instantiate it with
/// [`crate::SkillEngine::instantiate`]. Cheap to clone.
#[derive(Clone)]
pub struct SkillComponent {
    pub(crate) pre: SkillPre<StoreData>,
}

impl std::fmt::Debug for SkillComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillComponent").finish_non_exhaustive()
    }
}
