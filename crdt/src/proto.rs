//! Generated protobuf types of the `clawmesh.v1` package.
//!
//! The schema lives in `proto/clawmesh/v1/*.proto`; `build.rs` compiles every
//! file there. These are wire types only: nothing here is validated. Use the
//! domain types in [`crate::manifest`] and [`crate::intent`], which refuse
//! anything malformed, before trusting a decoded message.

/// Messages and enums of the `clawmesh.v1` protobuf package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/clawmesh.v1.rs"));
}

pub use v1::{
    Capabilities, Dependency, PackageFile, PayloadKind, ReleaseAction, ReleaseIntent,
    RolloutPolicy, SemVer, Signature, SignedEnvelope, SkillPackage,
};
