//! Compiles every `.proto` file under `proto/clawmesh/v1/` into Rust with
//! `protox` (a pure-Rust protobuf compiler, so no `protoc` is needed) and
//! `prost-build`.
//!
//! The directory is scanned rather than listed so a new schema file is picked
//! up without touching this script.

use std::path::{Path, PathBuf};

/// Include root: imports are written as `clawmesh/v1/<file>.proto`.
const PROTO_ROOT: &str = "../proto";
/// The package directory whose files are all compiled.
const PROTO_PACKAGE_DIR: &str = "clawmesh/v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(PROTO_ROOT);
    let package_dir = root.join(PROTO_PACKAGE_DIR);
    // The directory itself: a file added or removed changes its mtime.
    println!("cargo:rerun-if-changed={}", package_dir.display());

    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(&package_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            // protox wants names relative to the include root, as imports say them.
            files.push(path.strip_prefix(root)?.to_path_buf());
        }
    }
    // Sorted so the generated code does not depend on directory order.
    files.sort();
    if files.is_empty() {
        return Err(format!("no .proto files found in {}", package_dir.display()).into());
    }

    let descriptors = protox::compile(&files, [root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
