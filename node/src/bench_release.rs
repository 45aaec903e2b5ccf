//! `clawmesh bench release`: how long a signed release intent takes to
//! become Active on every node of a local mesh of real node processes.
//!
//! Self-contained: starts `--nodes` node processes on loopback joined
//! through node 0, publishes `--releases` versions of the counter sample on
//! node 0, then releases them one after another from rotating nodes and
//! times submit → every node reports Active on that version. The baseline
//! printed beside it is the cost of one status poll of every node (the
//! resolution of the measurement).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use clawmesh_crdt::manifest::{Capabilities, Manifest, SignedManifest};
use clawmesh_crdt::signing::PublisherKey;
use clawmesh_crdt::trust::{TrustRoot, TrustedPublisher};
use clawmesh_crdt::{Intent, IntentAction, SignedIntent};
use serde::Serialize;

use crate::bench::args::LocalBinaries;
use crate::bench::histogram::LatencyHistogram;
use crate::daemon::mesh_admin::MeshRequest;
use crate::data_dir::DataDir;
use crate::demo::local_mesh::{MeshNode, NodeLaunch, START_TIMEOUT, start_node};
use crate::package_file::{encode_package, write_file_atomically};

const PACKAGE: &str = "dev.clawmesh.counter";
/// Longest one release may take before the bench gives up.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between status polls.
const POLL: Duration = Duration::from_millis(2);

/// `clawmesh bench release` options.
#[derive(Debug, Clone, Args)]
pub struct BenchReleaseArgs {
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Releases to time.
    #[arg(long, default_value_t = 20)]
    pub releases: usize,
    /// What the mesh's nodes run.
    #[command(flatten)]
    pub local: LocalBinaries,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Whether each version gets its own blob (`distinct`: a custom section
    /// naming the version, so every release fetches and compiles a new
    /// blob, as a real one does) or all share one (`shared`: after the first
    /// release, only the mesh path and a worker start are timed).
    #[arg(long, value_enum, default_value_t = BlobMode::Distinct)]
    pub blobs: BlobMode,
}

/// How the versions' blobs relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlobMode {
    /// One blob per version.
    Distinct,
    /// One blob for every version.
    Shared,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct BenchReleaseReport {
    /// Nodes in the mesh.
    pub nodes: usize,
    /// Releases timed.
    pub releases: usize,
    /// Whether versions had their own blobs.
    pub blobs: BlobMode,
    /// Median intent → all Active, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// One status poll of every node, ms (the measurement's resolution).
    pub poll_baseline_ms: f64,
    /// p99 against the 1 s goal.
    pub p99_over_goal: f64,
}

/// `wasm` with a custom section appended (valid anywhere in a module or a
/// component, ignored by the runtime): a different blob with the same code.
fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn mesh(node: &MeshNode, request: MeshRequest) -> anyhow::Result<serde_json::Value> {
    node.mesh(request)
}

/// Runs the benchmark and prints its report.
pub fn run_bench_release(args: BenchReleaseArgs) -> anyhow::Result<ExitCode> {
    if args.nodes < 2 || args.releases == 0 {
        bail!("--nodes must be at least 2 and --releases at least 1");
    }
    let (exe, skills) = args.local.resolve()?;
    let wasm = std::fs::read(skills.join("counter.wasm")).with_context(|| {
        format!(
            "reading counter.wasm in {} (run scripts/build-skills)",
            skills.display()
        )
    })?;
    let temp = tempfile::Builder::new()
        .prefix("clawmesh-bench-release-")
        .tempdir()?;
    let key = PublisherKey::generate()?;
    let trust = TrustRoot::new(1, [TrustedPublisher::new("bench", key.verifying_key())])?;
    let dirs: Vec<PathBuf> = (0..args.nodes)
        .map(|i| temp.path().join(format!("node{i}")))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
        write_file_atomically(
            &DataDir::new(d).trust_file(),
            trust.to_toml().as_bytes(),
            0o644,
        )?;
    }
    eprintln!("starting {} nodes…", args.nodes);
    let first = start_node(&exe, &dirs[0], &NodeLaunch::default())?;
    let bootstrap = first
        .info
        .p2p
        .first()
        .context("node 0 has no p2p address")?
        .clone();
    let mut nodes = vec![first];
    let launch = NodeLaunch {
        bootstrap: Some(bootstrap),
        ..NodeLaunch::default()
    };
    for d in &dirs[1..] {
        nodes.push(start_node(&exe, d, &launch)?);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    for node in &nodes {
        loop {
            let peers = mesh(node, MeshRequest::MeshStatus)?["peers"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            if peers + 1 >= args.nodes {
                break;
            }
            if Instant::now() > deadline {
                bail!("the mesh did not connect within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    eprintln!("publishing {} versions on node 0…", args.releases);
    let blobs = nodes[0].dir.blob_store()?;
    let packages = nodes[0].dir.package_store()?;
    let versions: Vec<String> = (0..args.releases).map(|k| format!("1.0.{k}")).collect();
    for v in &versions {
        let wasm = match args.blobs {
            BlobMode::Distinct => {
                with_custom_section(&wasm, "clawmesh-bench-release", v.as_bytes())
            }
            BlobMode::Shared => wasm.clone(),
        };
        let manifest = Manifest::for_blob(
            PACKAGE.parse()?,
            semver::Version::parse(v)?,
            vec![],
            &wasm,
            crate::cli::DEFAULT_ABI_WORLD,
            1,
            Capabilities::default(),
        )?;
        let signed = SignedManifest::sign(manifest, &[&key])?;
        let path = temp.path().join(format!("{v}.pkg"));
        write_file_atomically(&path, &encode_package(signed.envelope, wasm.clone()), 0o644)?;
        crate::publish::publish_file(&path, None, &trust, &blobs, &packages)?;
        mesh(
            &nodes[0],
            MeshRequest::Announce {
                package: PACKAGE.into(),
                version: v.clone(),
            },
        )?;
    }

    let poll_start = Instant::now();
    for node in &nodes {
        mesh(node, MeshRequest::MeshStatus)?;
    }
    let poll_baseline = poll_start.elapsed();

    let mut hist = LatencyHistogram::new();
    for (k, v) in versions.iter().enumerate() {
        let via = &nodes[k % nodes.len()];
        let clock = mesh(
            via,
            MeshRequest::IntentClock {
                package: PACKAGE.into(),
            },
        )?["clock"]
            .as_u64()
            .unwrap_or(0)
            + 1;
        let intent = Intent {
            package: PACKAGE.parse()?,
            version: semver::Version::parse(v)?,
            action: IntentAction::Deploy,
            clock,
            author: key.key_id().clone(),
            issued_at_ms: 0,
            rollout_max_parallel_percent: 100,
        };
        let signed = SignedIntent::sign(intent, &key)?;
        let started = Instant::now();
        mesh(
            via,
            MeshRequest::SubmitIntent {
                envelope_hex: hex::encode(signed.envelope_bytes()),
            },
        )?;
        let mut pending: Vec<&MeshNode> = nodes.iter().collect();
        while !pending.is_empty() {
            if started.elapsed() > RELEASE_TIMEOUT {
                bail!("release {v} did not reach every node within {RELEASE_TIMEOUT:?}");
            }
            let mut still = Vec::new();
            for node in pending {
                let st = mesh(node, MeshRequest::MeshStatus)?;
                let local = &st["local"][PACKAGE];
                if !(local["state"] == "active" && local["running"] == v.as_str()) {
                    still.push(node);
                }
            }
            pending = still;
            if !pending.is_empty() {
                std::thread::sleep(POLL);
            }
        }
        let took = started.elapsed();
        hist.record(took);
        if !args.json {
            eprintln!(
                "release {v} (via node {}): all {} nodes Active in {:.1} ms",
                k % nodes.len(),
                nodes.len(),
                took.as_secs_f64() * 1e3
            );
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let report = BenchReleaseReport {
        nodes: args.nodes,
        releases: args.releases,
        blobs: args.blobs,
        p50_ms: ms(hist.percentile(50.0)),
        p99_ms: ms(hist.percentile(99.0)),
        max_ms: ms(hist.max()),
        poll_baseline_ms: ms(poll_baseline),
        p99_over_goal: ms(hist.percentile(99.0)) / 1000.0,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "release intent → Active on all {} nodes, {} releases ({:?} blobs): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            report.nodes,
            report.releases,
            report.blobs,
            report.p50_ms,
            report.p99_ms,
            report.max_ms
        );
        println!(
            "baseline: one status poll of every node {:.2} ms; p99 / 1 s goal = {:.2}",
            report.poll_baseline_ms, report.p99_over_goal
        );
    }
    drop(nodes);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::with_custom_section;

    #[test]
    fn custom_section_is_appended_with_its_length() {
        let out = with_custom_section(b"\0asm", "ab", &[9; 200]);
        // id 0, size 203 as LEB128 (0xcb 0x01), name length 2, name, payload.
        assert_eq!(&out[..4], b"\0asm");
        assert_eq!(&out[4..8], &[0, 0xcb, 0x01, 2]);
        assert_eq!(&out[8..10], b"ab");
        assert_eq!(out.len(), 10 + 200);
    }
}
