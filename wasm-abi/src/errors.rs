//! Errors of building an engine, loading a component and instantiating it.

use crate::validate::WORLD;

/// Why a [`crate::SkillEngine`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A field of [`crate::EngineConfig`] is out of range.
    #[error("engine config field `{field}` {why}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it was refused.
        why: &'static str,
    },
    /// wasmtime refused the configuration (e.g. the pool cannot be reserved).
    #[error("wasmtime refused the engine configuration: {0}")]
    Wasmtime(String),
    /// Linking WASI or the host interface failed.
    #[error("linking the host imports failed: {0}")]
    Link(String),
    /// The epoch ticker thread could not be started.
    #[error("starting the epoch ticker thread failed: {0}")]
    Ticker(#[source] std::io::Error),
}

/// Why a component was refused at load. Each variant names the problem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are over [`crate::MAX_COMPONENT_BYTES`].
    #[error("component is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the bytes given.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// The bytes are not a WebAssembly component; `what` says what they are
    /// (`core module`, `not WebAssembly (no magic number)`, ...).
    #[error("not a WebAssembly component: {what}")]
    NotAComponent {
        /// What the bytes are instead.
        what: &'static str,
    },
    /// The bytes claim to be a component but wasmtime could not compile them.
    #[error("invalid WebAssembly component: {0}")]
    Invalid(String),
    /// The given sha256 is not the digest of the bytes.
    #[error("sha256 mismatch: expected {expected}, the bytes hash to {actual}")]
    DigestMismatch {
        /// Digest the caller gave (hex).
        expected: String,
        /// Digest of the bytes (hex).
        actual: String,
    },
    /// A function the world requires is not exported.
    #[error("missing export `{name}` (the component does not target {WORLD})")]
    MissingExport {
        /// The missing export.
        name: &'static str,
    },
    /// An export of the world has another type than the world's.
    #[error("export `{name}` does not have the type {WORLD} requires: {detail}")]
    WrongExportType {
        /// The export whose type differs.
        name: String,
        /// wasmtime's description of the mismatch.
        detail: String,
    },
    /// The component imports an interface this host does not grant.
    #[error("imports `{name}` which this host does not grant")]
    UngrantedImport {
        /// The import's full name, e.g. `wasi:sockets/tcp@0.2.0`.
        name: String,
    },
    /// The component's imports could not be satisfied by the host linker.
    #[error("imports cannot be satisfied: {0}")]
    Link(String),
}

/// Why an instance could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InstantiateError {
    /// Every pooled instance slot is in use ([`crate::EngineConfig::max_instances`]).
    #[error("all {max_instances} instance slots of the pool are in use")]
    PoolExhausted {
        /// The configured bound.
        max_instances: u32,
    },
    /// The component's start code or a limit failed instantiation.
    #[error("instantiating the component failed: {0}")]
    Failed(String),
}
