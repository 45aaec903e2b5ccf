//! Pure, I/O-free core of clawmesh.
//!
//! Owns: the protobuf package and intent types and their validation, ed25519
//! signing and the trust root, semver range parsing and dependency resolution
//! (pubgrub), the automerge documents and their schema, the
//! last-writer-wins status board, deterministic release
//! arbitration, the per-node release state machine, the deployment circuit
//! breaker, and the sans-I/O peer core that decides when and what to sync.
//!
//! Does not own: sockets, files, clocks or threads. Callers feed events and
//! time in and carry the returned actions out; the node does real I/O, the
//! simulator drives the very same code with a seeded clock.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod intent;
pub mod manifest;
pub mod proto;
pub mod range;
pub mod resolve;
pub mod signing;
pub mod trust;

pub use intent::{Intent, IntentAction, IntentError, IntentVerifyError, SignedIntent};
pub use manifest::{
    Capabilities, ChunkHashes, DependencySpec, Manifest, ManifestError, ManifestVerifyError,
    PackageName, PackageNameError, SignedManifest,
};
pub use range::{RangeError, VersionRange};
pub use resolve::{Catalog, CatalogError, Lock, Requirement, ResolveError, resolve};
pub use signing::{
    KeyError, KeyId, KeyIdError, PublicKeyError, PublisherKey, digest, sign_envelope,
};
pub use trust::{TrustRoot, TrustRootError, TrustedPublisher, VerifyError};

pub mod arbitration;
pub mod breaker;
pub mod documents;
pub mod peer;
pub mod release_state;
pub mod status;
pub mod status_board;
pub mod status_check;
pub mod status_frame;

pub use arbitration::{
    FailureReport, IntentFacts, Quarantine, QuarantineSet, Target, arbitrate, derive_quarantine,
};
pub use breaker::{BreakerConfig, BreakerRefusal, BreakerState, CircuitBreaker};
pub use documents::{DocumentId, DocumentLimits, MeshDocument, RejectedEntry};
pub use peer::{PeerAction, PeerConfig, PeerCore, PeerInput};
pub use release_state::{
    Health, IllegalTransition, ReleaseAction, ReleaseController, ReleaseControllerConfig,
    ReleaseEvent, ReleaseInput, ReleaseState, ReleaseStatus,
};
pub use status::{PackageStatus, StatusTable};
pub use status_board::{NodeStatus, StatusBoard, StatusBoardLimits};
