//! `clawmesh demo`: the story of clawmesh on one machine, act by act.
//!
//! Act 1 shows the foundation: a publisher key and trust root are made,
//! the sample skills are packed, signed, published into a node's store and
//! read back verified, dependencies are resolved, and forged or damaged
//! packages are refused with the store left untouched. Acts 2–7 (in
//! `crate::demo`) start a five-node mesh of real node processes, release
//! under load, quarantine a broken version, heal a partition and write the
//! report. Every act checks what it claims; the exit code is 0 only if all
//! did.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clawmesh_crdt::manifest::{Capabilities, Manifest, SignedManifest};
use clawmesh_crdt::signing::PublisherKey;
use clawmesh_crdt::trust::TrustRoot;
use serde::Serialize;

use super::DemoArgs;
use super::keys::{publisher_of, write_key_pair};
use super::pack::{DEFAULT_ABI_WORLD, parse_dep};
use super::ui::Ui;
use crate::blob_store::BlobId;
use crate::data_dir::DataDir;
use crate::demo::figures::Figures;
use crate::demo::interrupt::{self, Interrupted};
use crate::demo::mesh_demo::{MeshDemo, MeshDemoConfig};
use crate::demo::report::{ActRecord, render_html};
use crate::demo::{act_join, act_load, act_partition, act_quarantine, act_release};
use crate::package_file::{encode_package, write_file_atomically};
use crate::publish::{PublishError, publish_file};

/// A sample skill the demo publishes.
struct Sample {
    file: &'static str,
    package: &'static str,
    version: &'static str,
    schema: u32,
    deps: &'static [&'static str],
}

const SAMPLES: &[Sample] = &[
    Sample {
        file: "counter.wasm",
        package: "dev.clawmesh.counter",
        version: "1.0.0",
        schema: 1,
        deps: &[],
    },
    Sample {
        file: "counter_v2.wasm",
        package: "dev.clawmesh.counter",
        version: "2.0.0",
        schema: 2,
        deps: &[],
    },
    Sample {
        file: "kv_v1.wasm",
        package: "dev.clawmesh.kv",
        version: "1.0.0",
        schema: 1,
        deps: &[],
    },
    Sample {
        file: "kv_v2.wasm",
        package: "dev.clawmesh.kv",
        version: "2.0.0",
        schema: 2,
        deps: &[],
    },
    Sample {
        file: "transform.wasm",
        package: "dev.clawmesh.transform",
        version: "1.0.0",
        schema: 1,
        deps: &["dev.clawmesh.kv@^2,shared"],
    },
];

/// One of acts 3–6.
type MeshAct = fn(&mut MeshDemo) -> anyhow::Result<((), String)>;

/// The report file, in the data dir.
const REPORT_FILE: &str = "report.html";

#[derive(Debug, Serialize)]
struct DemoStep {
    step: String,
    ok: bool,
    detail: String,
    millis: f64,
}

/// What `--json` prints.
#[derive(Debug, Default, Serialize)]
struct DemoReport {
    data_dir: String,
    /// Every act passed.
    passed: bool,
    acts: Vec<ActRecord>,
    /// Act 1's steps.
    steps: Vec<DemoStep>,
    figures: Figures,
    report_html: Option<String>,
}

struct Demo {
    ui: Ui,
    json: bool,
    report: DemoReport,
}

impl Demo {
    fn step<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> anyhow::Result<(T, String)>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        let result = f();
        let millis = start.elapsed().as_secs_f64() * 1e3;
        let (ok, detail) = match &result {
            Ok((_, d)) => (true, d.clone()),
            Err(e) => (false, format!("{e:#}")),
        };
        if !self.json {
            let mark = if ok {
                self.ui.ok("✓")
            } else {
                self.ui.bad("✗")
            };
            println!(
                "  {mark} {} {}",
                name,
                self.ui.dim(&format!("({millis:.1} ms)"))
            );
            for line in detail.lines() {
                println!("      {line}");
            }
        }
        self.report.steps.push(DemoStep {
            step: name.to_string(),
            ok,
            detail,
            millis,
        });
        result.map(|(v, _)| v)
    }

    fn announce(&self, act: u8, title: &str) {
        if !self.json {
            println!("\n{}", self.ui.step(&format!("act {act}: {title}")));
        }
    }

    /// Runs one act: its header first (progress shows while it runs),
    /// then ✓ or ✗ with what it saw. `None` when it failed.
    fn act<T>(
        &mut self,
        act: u8,
        title: &str,
        f: impl FnOnce() -> anyhow::Result<(T, String)>,
    ) -> Option<T> {
        self.announce(act, title);
        let start = Instant::now();
        let result = f();
        let millis = start.elapsed().as_secs_f64() * 1e3;
        let (ok, detail) = match &result {
            Ok((_, d)) => (true, d.clone()),
            Err(e) => (false, format!("{e:#}")),
        };
        self.record(act, title, ok, detail, millis);
        result.ok().map(|(v, _)| v)
    }

    fn record(&mut self, act: u8, title: &str, ok: bool, detail: String, millis: f64) {
        if !self.json {
            let mark = if ok {
                self.ui.ok("✓")
            } else {
                self.ui.bad("✗ FAILED")
            };
            println!(
                "{mark} act {act} {}",
                self.ui.dim(&format!("({:.1} s)", millis / 1e3))
            );
            for line in detail.lines() {
                println!("    {line}");
            }
        }
        self.report.acts.push(ActRecord {
            act,
            title: title.to_string(),
            ok,
            detail,
            millis,
        });
    }
}

/// Runs `clawmesh demo`.
pub fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    interrupt::install()?;
    // Set by the lead when `DemoArgs` gets its `--keep` flag.
    let keep = args.keep;
    let mut temp = None;
    let root: PathBuf = match &args.data_dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("clawmesh-demo-")
                .tempdir()?;
            let path = t.path().to_path_buf();
            interrupt::register_temp_dir(path.clone());
            temp = Some(t);
            path
        }
    };
    let skills = args
        .skills_dir
        .clone()
        .unwrap_or_else(super::default_skills_dir);
    let mut demo = Demo {
        ui: Ui::from_env(),
        json: args.json,
        report: DemoReport {
            data_dir: root.display().to_string(),
            ..DemoReport::default()
        },
    };
    if !args.json {
        println!(
            "{}",
            demo.ui
                .step("clawmesh demo: a leaderless release mesh on one machine")
        );
        println!("{}", demo.ui.dim(&format!("working in {}", root.display())));
    }
    let started = Instant::now();
    let mesh = run_acts(&mut demo, &root, &skills, keep);
    let passed = demo.report.acts.len() == 7 && demo.report.acts.iter().all(|a| a.ok);
    demo.report.passed = passed;
    let interrupted = interrupt::interrupted();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&demo.report)?);
    } else if passed {
        println!(
            "\n{} all 7 acts did what they claim, in {:.1} s",
            demo.ui.ok("done:"),
            started.elapsed().as_secs_f64()
        );
    }
    // Stop the nodes (unless kept) before their data dir goes.
    match mesh {
        Some(mut mesh) if keep && !interrupted => {
            print_keep(&mesh, &root);
            for node in &mut mesh.nodes {
                node.detach();
            }
            if let Some(t) = temp.take() {
                interrupt::forget_temp_dir(t.path());
                let _ = t.keep();
            }
        }
        mesh => drop(mesh),
    }
    if let Some(t) = temp.take() {
        interrupt::forget_temp_dir(t.path());
        if interrupted {
            drop(t);
        } else if passed {
            // The report outlives the run; the nodes' data goes.
            let kept = t.keep();
            remove_all_but(&kept, REPORT_FILE);
        } else {
            let kept = t.keep();
            eprintln!(
                "the data dir is kept for inspection (node logs in mesh/node*/node.log): {}",
                kept.display()
            );
        }
    }
    if interrupted {
        return Err(Interrupted.into());
    }
    if !passed {
        let failed: Vec<String> = demo
            .report
            .acts
            .iter()
            .filter(|a| !a.ok)
            .map(|a| a.act.to_string())
            .collect();
        bail!(
            "the demo did not do everything it claims: act(s) {} failed{}",
            failed.join(", "),
            if demo.report.acts.len() < 7 {
                " and the acts after it did not run"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes everything in `dir` except the file `keep`.
fn remove_all_but(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == keep) {
            continue;
        }
        let _ = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
}

fn print_keep(mesh: &MeshDemo, root: &Path) {
    let pids: Vec<String> = mesh.nodes.iter().map(|n| n.pid().to_string()).collect();
    let dir = |i: usize| mesh.nodes[i].dir.root().display().to_string();
    println!(
        "\nthe mesh keeps running (pids {}). Talk to it:",
        pids.join(" ")
    );
    println!("  clawmesh status --node {}", dir(0));
    println!(
        "  clawmesh invoke dev.clawmesh.counter get --node {}",
        dir(2)
    );
    println!(
        "  clawmesh rollback dev.clawmesh.counter --key {} --node {}",
        root.join("publisher.key").display(),
        dir(1)
    );
    println!("stop it with: kill {}", pids.join(" "));
}

/// Runs the seven acts, each only if the one before did what it claims;
/// returns the mesh (to keep or stop).
fn run_acts(demo: &mut Demo, root: &Path, skills: &Path, keep: bool) -> Option<MeshDemo> {
    demo.announce(1, "keys, trust, signed packages and refusals");
    let start = Instant::now();
    let act1 = run_steps(demo, root, skills);
    let millis = start.elapsed().as_secs_f64() * 1e3;
    let failed_steps = demo.report.steps.iter().filter(|s| !s.ok).count();
    let (key, trust) = match act1 {
        Ok(kt) if failed_steps == 0 => {
            let n = demo.report.steps.len();
            demo.record(
                1,
                "keys, trust, signed packages and refusals",
                true,
                format!("{n} steps, all as claimed"),
                millis,
            );
            kt
        }
        Ok(_) | Err(_) => {
            let why = act1
                .err()
                .map_or(format!("{failed_steps} step(s) failed"), |e| {
                    format!("{e:#}")
                });
            demo.record(
                1,
                "keys, trust, signed packages and refusals",
                false,
                why,
                millis,
            );
            return None;
        }
    };
    let config = MeshDemoConfig {
        exe: match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                demo.record(
                    2,
                    "a five-node mesh on loopback",
                    false,
                    format!("locating the clawmesh binary: {e}"),
                    0.0,
                );
                return None;
            }
        },
        root: root.to_path_buf(),
        skills: skills.to_path_buf(),
        verbose: !demo.json,
        in_place: !demo.json && std::io::stdout().is_terminal(),
        keep,
    };
    let mut mesh = demo.act(
        2,
        "a five-node mesh on loopback, joined through one bootstrap peer",
        || act_join::start_mesh(config, key, trust),
    )?;
    let acts: [(u8, &str, MeshAct); 4] = [
        (
            3,
            "counter v1 published on node 1, released from node 3, Active everywhere",
            act_release::release_v1,
        ),
        (
            4,
            "counter v2 released under load on every node",
            act_load::release_v2_under_load,
        ),
        (
            5,
            "a broken version: swaps fail, quarantine, every node back on v2",
            act_quarantine::release_broken,
        ),
        (
            6,
            "a partition, conflicting releases on each side, the heal",
            act_partition::split_and_heal,
        ),
    ];
    for (n, title, run) in acts {
        if demo.act(n, title, || run(&mut mesh)).is_none() {
            demo.report.figures = mesh.figures.clone();
            return Some(mesh);
        }
    }
    demo.report.figures = mesh.figures.clone();
    let report_path = root.join(REPORT_FILE);
    let acts_so_far = demo.report.acts.clone();
    let figures = mesh.figures.clone();
    let written = demo.act(7, "summary and HTML report", || {
        summarize(&figures, &acts_so_far, &report_path)
    });
    if written.is_some() {
        demo.report.report_html = Some(report_path.display().to_string());
    }
    Some(mesh)
}

/// Act 7: the summary, and the report written and read back.
fn summarize(figures: &Figures, acts: &[ActRecord], path: &Path) -> anyhow::Result<((), String)> {
    let mut lines = Vec::new();
    if let Some(l) = &figures.load {
        lines.push(format!(
            "requests served under load: {}, errors: {}",
            l.served, l.errors
        ));
        let kept = l.state_kept.iter().filter(|k| **k).count();
        lines.push(format!(
            "counter state kept across the v2 swap on {kept} of {} nodes",
            l.state_kept.len()
        ));
    }
    let pauses: Vec<String> = figures
        .swap_pause_ms
        .iter()
        .map(|p| p.map_or("-".to_string(), |p| format!("{p:.2}")))
        .collect();
    if !pauses.is_empty() {
        lines.push(format!(
            "swap pauses per node (ms, as the nodes measured them): {}",
            pauses.join(" ")
        ));
    }
    if let Some(j) = figures.mesh_joined_ms {
        lines.push(format!("mesh joined in {j:.0} ms"));
    }
    let slowest = |v: &[Option<f64>]| v.iter().flatten().copied().fold(0.0, f64::max);
    lines.push(format!(
        "v1 Active on every node {:.0} ms after the release",
        slowest(&figures.active_ms)
    ));
    if let Some(q) = figures.quarantine_ms {
        lines.push(format!(
            "broken version quarantined and every node back on v2 in {q:.0} ms"
        ));
    }
    if let Some(w) = &figures.converged_to {
        lines.push(format!(
            "after the heal every node converged on {w} in {:.0} ms",
            slowest(&figures.heal_active_ms)
        ));
    }
    let mut all = acts.to_vec();
    all.push(ActRecord {
        act: 7,
        title: "summary and HTML report".into(),
        ok: true,
        detail: lines.join("\n"),
        millis: 0.0,
    });
    let html = render_html(figures, &all);
    write_file_atomically(path, html.as_bytes(), 0o644)?;
    let back = fs::read_to_string(path)?;
    let charts = back.matches("<svg").count();
    if back != html || charts < 5 {
        bail!(
            "the report at {} did not read back whole ({charts} charts)",
            path.display()
        );
    }
    lines.push(format!("report ({charts} charts): {}", path.display()));
    Ok(((), lines.join("\n")))
}

fn run_steps(
    demo: &mut Demo,
    root: &Path,
    skills: &Path,
) -> anyhow::Result<(PublisherKey, TrustRoot)> {
    let key_file = root.join("publisher.key");
    let key = demo.step("make a publisher key", || {
        let key = PublisherKey::generate()?;
        write_key_pair(&key, &key_file, true)?;
        let detail = format!(
            "key id {} → {} (mode 0600)",
            key.key_id(),
            key_file.display()
        );
        Ok((key, detail))
    })?;

    let node = DataDir::new(root.join("node-a"));
    let trust = demo.step("write the trust root", || {
        let trust = TrustRoot::new(1, [publisher_of(&key, "demo publisher")])?;
        fs::create_dir_all(node.root())?;
        write_file_atomically(&node.trust_file(), trust.to_toml().as_bytes(), 0o644)?;
        Ok((
            trust,
            format!("1 publisher, threshold 1 → {}", node.trust_file().display()),
        ))
    })?;

    let blobs = node.blob_store()?;
    let packages = node.package_store()?;
    let mut published = Vec::new();
    for sample in SAMPLES {
        let wasm = skills.join(sample.file);
        let out = root.join(format!("{}-{}.pkg", sample.package, sample.version));
        let title = format!(
            "pack, sign and publish {}@{}",
            sample.package, sample.version
        );
        let p = demo.step(&title, || {
            let blob = fs::read(&wasm).with_context(|| {
                format!(
                    "reading sample skill {} (build the samples with scripts/build-skills)",
                    wasm.display()
                )
            })?;
            let deps = sample
                .deps
                .iter()
                .map(|d| parse_dep(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let manifest = Manifest::for_blob(
                sample.package.parse()?,
                semver::Version::parse(sample.version)?,
                deps,
                &blob,
                DEFAULT_ABI_WORLD,
                sample.schema,
                Capabilities::default(),
            )?;
            let signed = SignedManifest::sign(manifest, &[&key])?;
            write_file_atomically(&out, &encode_package(signed.envelope, blob), 0o644)?;
            let published = publish_file(&out, None, &trust, &blobs, &packages)?;
            let detail = format!(
                "{} bytes, {} chunk(s), sha256 {}…",
                published.size,
                published.chunks,
                &published.sha256[..16]
            );
            Ok((published, detail))
        })?;
        published.push((out, p));
    }

    demo.step("read every package back, verified", || {
        let (manifests, bad) = packages.list(&trust)?;
        if !bad.is_empty() {
            bail!("{} stored manifest(s) failed verification", bad.len());
        }
        let mut lines = Vec::new();
        for m in &manifests {
            let id = BlobId(m.manifest.sha256);
            let bytes = blobs.get(&id)?;
            crate::publish::check_blob_against_manifest(m, &bytes).map_err(anyhow::Error::msg)?;
            lines.push(format!(
                "{}@{}: signature ✓ sha256 ✓ {} chunk hashes ✓",
                m.manifest.name,
                m.manifest.version,
                m.manifest.chunk_sha256.len()
            ));
        }
        Ok(((), lines.join("\n")))
    })?;

    demo.step("resolve dependencies for this node", || {
        let (manifests, _) = packages.list(&trust)?;
        let roots = vec![
            crate::resolve::parse_root("dev.clawmesh.transform@1.0.0")?,
            crate::resolve::parse_root("dev.clawmesh.counter@2.0.0")?,
        ];
        let lock = crate::resolve::resolve_lock(&manifests, &roots)?;
        Ok(((), crate::resolve::render_lock(&lock)))
    })?;

    let (counter_pkg, counter) = published
        .first()
        .map(|(path, p)| (path.clone(), p.clone()))
        .context("no package published")?;
    let before = store_fingerprint(node.root())?;

    demo.step(
        "refuse a wrong --sha256 (the seed's X-Checksum-SHA256)",
        || {
            let wrong = BlobId::of(b"not the blob");
            match publish_file(&counter_pkg, Some(wrong), &trust, &blobs, &packages) {
                Err(e @ PublishError::ChecksumMismatch { .. }) => Ok(((), format!("refused: {e}"))),
                Err(e) => bail!("refused for the wrong reason: {e}"),
                Ok(_) => bail!("a wrong checksum was accepted"),
            }
        },
    )?;

    demo.step(
        "refuse a package signed by a key outside the trust root",
        || {
            let stranger = PublisherKey::generate()?;
            let bytes = fs::read(skills.join(SAMPLES[0].file))?;
            let manifest = Manifest::for_blob(
                "dev.clawmesh.counter".parse()?,
                semver::Version::new(9, 9, 9),
                vec![],
                &bytes,
                DEFAULT_ABI_WORLD,
                1,
                Capabilities::default(),
            )?;
            let forged = SignedManifest::sign(manifest, &[&stranger])?;
            let path = root.join("forged.pkg");
            write_file_atomically(&path, &encode_package(forged.envelope, bytes), 0o644)?;
            match publish_file(&path, None, &trust, &blobs, &packages) {
                Err(e @ PublishError::Manifest(_)) => Ok(((), format!("refused: {e}"))),
                Err(e) => bail!("refused for the wrong reason: {e}"),
                Ok(_) => bail!("a package from an unknown key was accepted"),
            }
        },
    )?;

    demo.step("refuse a truncated package file", || {
        let bytes = fs::read(&counter_pkg)?;
        let path = root.join("truncated.pkg");
        write_file_atomically(&path, &bytes[..bytes.len() / 2], 0o644)?;
        match publish_file(&path, None, &trust, &blobs, &packages) {
            Err(e @ PublishError::File(_)) => Ok(((), format!("refused: {e}"))),
            Err(e) => bail!("refused for the wrong reason: {e}"),
            Ok(_) => bail!("a truncated package was accepted"),
        }
    })?;

    demo.step("store unchanged by every refusal", || {
        let after = store_fingerprint(node.root())?;
        if after != before {
            bail!("the store changed");
        }
        Ok((
            (),
            format!(
                "{} files, identical before and after; {}@{} still verifies",
                after.len(),
                counter.package,
                counter.version
            ),
        ))
    })?;
    Ok((key, trust))
}

/// Every file under the stores with its contents' hash, for before/after
/// comparisons.
fn store_fingerprint(root: &Path) -> anyhow::Result<Vec<(PathBuf, BlobId)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("blobs"), root.join("packages")];
    while let Some(dir) = stack.pop() {
        if !dir.exists() {
            continue;
        }
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "lock") {
                let bytes = fs::read(&path)?;
                out.push((path, BlobId::of(&bytes)));
            }
        }
    }
    out.sort();
    Ok(out)
}
