//! Helpers shared by the end-to-end tests in this directory: where the
//! `clawmesh` binary and the sample skills are, running commands, and
//! fingerprinting directories to prove that a refusal changed nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The `clawmesh` binary of this build (`CLAWMESH_BIN` overrides).
pub fn clawmesh_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAWMESH_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps/; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("clawmesh");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p clawmesh-node`, or run scripts/test)",
        bin.display()
    );
    bin
}

/// Directory of the built sample skills (`CLAWMESH_SKILLS_DIR` overrides).
pub fn skills_dir() -> PathBuf {
    std::env::var_os("CLAWMESH_SKILLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../skills/target/wasm32-wasip2/release")))
}

/// A built sample skill; fails (never skips) when it is missing.
pub fn skill(file: &str) -> PathBuf {
    let p = skills_dir().join(file);
    assert!(p.is_file(), "{} is missing: run scripts/build-skills", p.display());
    p
}

/// Runs `clawmesh` with `args` (NO_COLOR set, logs quiet) and returns its output.
pub fn clawmesh(args: &[&str]) -> Output {
    Command::new(clawmesh_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("spawn clawmesh")
}

/// Runs `clawmesh` and asserts success; returns stdout.
pub fn clawmesh_ok(args: &[&str]) -> String {
    let out = clawmesh(args);
    assert!(
        out.status.success(),
        "clawmesh {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `clawmesh`, asserts it failed with `code`, returns stderr.
pub fn clawmesh_fails(args: &[&str], code: i32) -> String {
    let out = clawmesh(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "clawmesh {args:?}: expected exit {code}:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir` with the sha256 of its contents (lock files aside).
pub fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                out.insert(p.clone(), hex::encode(Sha256::digest(fs::read(&p).unwrap())));
            }
        }
    }
    out
}

/// Path as &str for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
