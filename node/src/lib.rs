//! The clawmesh daemon and CLI.
//!
//! Owns every piece of I/O: the content-addressed blob store, the libp2p mesh
//! (`mesh`), skill worker processes under cgroups and the HTTP/admin APIs
//! (`runtime`), swap orchestration and the command line. The deciding logic
//! it drives lives in `clawmesh-crdt`; state segments in `clawmesh-shm`; the
//! wasm host in `clawmesh-wasm-abi`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod bench_release;
pub mod blob_store;
pub mod cli;
pub mod daemon;
pub mod data_dir;
pub mod demo;
pub mod dev;
pub mod fetch;
pub mod mesh;
pub mod package_file;
pub mod package_store;
pub mod publish;
pub mod resolve;
pub mod runtime;
pub mod swap;

pub use blob_store::{BlobId, BlobStore, BlobStoreLimits};
pub use data_dir::DataDir;
pub use package_store::PackageStore;
