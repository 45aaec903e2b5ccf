//! Watching the component (or the crate) and swapping it in.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use crate::daemon::{AdminRequest, admin_call};
use crate::data_dir::DataDir;

/// Most files whose mtimes are compared per poll of a crate directory.
const MAX_WATCHED_FILES: usize = 10_000;

/// `clawmesh dev` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// A component (.wasm) file, or a skill crate directory (rebuilt with
    /// `cargo build --release --target wasm32-wasip2` on change).
    #[arg(long)]
    pub watch: PathBuf,
    /// Package name to deploy it as.
    #[arg(long)]
    pub name: String,
    /// The running node's data directory.
    #[arg(long, env = "CLAWMESH_DATA_DIR")]
    pub node: PathBuf,
    /// How often to look for changes, ms.
    #[arg(long, default_value_t = 250)]
    pub poll_ms: u64,
    /// Deploy once and exit (scripts, tests).
    #[arg(long)]
    pub once: bool,
}

/// Runs the sidecar until interrupted (or after one deploy with `--once`).
pub fn run_dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let socket = DataDir::new(&args.node).admin_socket();
    let crate_dir = args.watch.is_dir();
    let mut last = None;
    loop {
        let stamp = fingerprint(&args.watch)
            .with_context(|| format!("watching {}", args.watch.display()))?;
        if last.as_ref() != Some(&stamp) {
            last = Some(stamp);
            let outcome =
                build(&args.watch, crate_dir).and_then(|wasm| deploy(&socket, &args.name, &wasm));
            match outcome {
                Ok(line) => println!("{line}"),
                Err(error) => {
                    println!("swap failed: {error:#} (the running version keeps serving)");
                    if args.once {
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            if args.once {
                return Ok(ExitCode::SUCCESS);
            }
        }
        std::thread::sleep(Duration::from_millis(args.poll_ms.max(10)));
    }
}

fn deploy(socket: &Path, package: &str, wasm: &Path) -> anyhow::Result<String> {
    let path =
        std::fs::canonicalize(wasm).with_context(|| format!("resolving {}", wasm.display()))?;
    let answer = admin_call(
        socket,
        &AdminRequest::DeployWasm {
            package: package.to_string(),
            path: path.display().to_string(),
            version: None,
            max_memory_mib: None,
        },
    )?;
    Ok(super::timeline_line(&answer))
}

/// The component to deploy: the file itself, or the crate's build output.
fn build(watch: &Path, crate_dir: bool) -> anyhow::Result<PathBuf> {
    if !crate_dir {
        return Ok(watch.to_path_buf());
    }
    let output = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(watch)
        .output()
        .context("running cargo build")?;
    if !output.status.success() {
        bail!(
            "cargo build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let crate_dir = watch
        .canonicalize()
        .with_context(|| format!("resolving {}", watch.display()))?;
    let mut wasm = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        // Only this crate's artifact, not its dependencies'.
        let manifest_dir = message["manifest_path"]
            .as_str()
            .map(Path::new)
            .and_then(Path::parent)
            .and_then(|p| p.canonicalize().ok());
        if manifest_dir.as_deref() != Some(crate_dir.as_path()) {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(file) = file.as_str().filter(|f| f.ends_with(".wasm")) {
                wasm = Some(PathBuf::from(file));
            }
        }
    }
    wasm.context("cargo built no .wasm for this crate")
}

/// What changes when the watched thing changes: (path, mtime, len) of the
/// file, or of every file under the crate's `src/` and its `Cargo.toml`.
fn fingerprint(watch: &Path) -> std::io::Result<Vec<(PathBuf, SystemTime, u64)>> {
    let mut out = Vec::new();
    let mut stack = if watch.is_dir() {
        vec![watch.join("Cargo.toml"), watch.join("src")]
    } else {
        vec![watch.to_path_buf()]
    };
    while let Some(path) = stack.pop() {
        if out.len() >= MAX_WATCHED_FILES {
            break;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path != watch => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else {
            out.push((path, meta.modified()?, meta.len()));
        }
    }
    out.sort();
    Ok(out)
}
