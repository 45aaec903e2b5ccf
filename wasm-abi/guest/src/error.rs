//! Constructors for [`SkillError`] and the error codes the ABI documents.

use crate::bindings::SkillError;

/// Error codes with a meaning shared by every skill (docs/ABI.md lists them).
/// Skills may add their own codes; these are the ones callers rely on.
pub mod codes {
    /// The op name is not one the skill handles.
    pub const UNKNOWN_OP: &str = "unknown-op";
    /// The input bytes could not be parsed for this op.
    pub const BAD_INPUT: &str = "bad-input";
    /// A key or item the op refers to does not exist.
    pub const NOT_FOUND: &str = "not-found";
    /// `restore` was given a schema it cannot read (neither its own nor the
    /// previous one).
    pub const UNSUPPORTED_SCHEMA: &str = "unsupported-schema";
    /// `restore` was given bytes that do not parse as the stated schema.
    pub const CORRUPT_STATE: &str = "corrupt-state";
    /// The skill is not able to serve (from `health`).
    pub const UNHEALTHY: &str = "unhealthy";
}

impl SkillError {
    /// An error with `code` (see [`codes`]) and a human-readable `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// `unknown-op` naming the op.
    pub fn unknown_op(op: &str) -> Self {
        Self::new(codes::UNKNOWN_OP, format!("unknown op `{op}`"))
    }

    /// `bad-input` with why the input was refused.
    pub fn bad_input(why: impl Into<String>) -> Self {
        Self::new(codes::BAD_INPUT, why)
    }

    /// `unsupported-schema` naming the schema and those accepted.
    pub fn unsupported_schema(got: u32, accepted: &[u32]) -> Self {
        Self::new(
            codes::UNSUPPORTED_SCHEMA,
            format!("state schema {got} is not supported; this version restores {accepted:?}"),
        )
    }

    /// `corrupt-state` with why the state bytes were refused.
    pub fn corrupt_state(why: impl Into<String>) -> Self {
        Self::new(codes::CORRUPT_STATE, why)
    }
}
