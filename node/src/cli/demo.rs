//! `clawmesh demo`: the story of clawmesh on one machine, step by step.
//!
//! Today it shows the foundation: a publisher key and trust root are made,
//! the sample skills are packed, signed, published into a node's store and
//! read back verified, dependencies are resolved, and forged or damaged
//! packages are refused with the store left untouched. It grows with each
//! capability (runtime, hot swap, mesh, partitions).

use std::fs;
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
    Sample { file: "counter.wasm", package: "dev.clawmesh.counter", version: "1.0.0", schema: 1, deps: &[] },
    Sample { file: "counter_v2.wasm", package: "dev.clawmesh.counter", version: "2.0.0", schema: 2, deps: &[] },
    Sample { file: "kv_v1.wasm", package: "dev.clawmesh.kv", version: "1.0.0", schema: 1, deps: &[] },
    Sample { file: "kv_v2.wasm", package: "dev.clawmesh.kv", version: "2.0.0", schema: 2, deps: &[] },
    Sample {
        file: "transform.wasm",
        package: "dev.clawmesh.transform",
        version: "1.0.0",
        schema: 1,
        deps: &["dev.clawmesh.kv@^2,shared"],
    },
];

#[derive(Debug, Serialize)]
struct DemoStep {
    step: String,
    ok: bool,
    detail: String,
    millis: f64,
}

#[derive(Debug, Default, Serialize)]
struct DemoReport {
    data_dir: String,
    steps: Vec<DemoStep>,
}

struct Demo {
    ui: Ui,
    json: bool,
    report: DemoReport,
}

impl Demo {
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<(T, String)>) -> anyhow::Result<T> {
        let start = Instant::now();
        let result = f();
        let millis = start.elapsed().as_secs_f64() * 1e3;
        let (ok, detail) = match &result {
            Ok((_, d)) => (true, d.clone()),
            Err(e) => (false, format!("{e:#}")),
        };
        if !self.json {
            let mark = if ok { self.ui.ok("✓") } else { self.ui.bad("✗") };
            println!("{mark} {} {}", self.ui.step(name), self.ui.dim(&format!("({millis:.1} ms)")));
            for line in detail.lines() {
                println!("    {line}");
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
}

/// Runs `clawmesh demo`.
pub fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let root: PathBuf = match &args.data_dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("clawmesh-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let skills = args.skills_dir.clone().unwrap_or_else(super::default_skills_dir);
    let mut demo = Demo {
        ui: Ui::from_env(),
        json: args.json,
        report: DemoReport {
            data_dir: root.display().to_string(),
            ..DemoReport::default()
        },
    };
    if !args.json {
        println!("{}", demo.ui.step("clawmesh demo: packages, signatures and the verified store"));
        println!("{}", demo.ui.dim(&format!("working in {}", root.display())));
    }
    let outcome = run_steps(&mut demo, &root, &skills);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&demo.report)?);
    }
    outcome?;
    let failed = demo.report.steps.iter().filter(|s| !s.ok).count();
    if failed > 0 {
        bail!("{failed} demo step(s) did not do what they claim");
    }
    if !args.json {
        println!(
            "{} {} steps, all as claimed",
            demo.ui.ok("done:"),
            demo.report.steps.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_steps(demo: &mut Demo, root: &Path, skills: &Path) -> anyhow::Result<()> {
    let key_file = root.join("publisher.key");
    let key = demo.step("make a publisher key", || {
        let key = PublisherKey::generate()?;
        write_key_pair(&key, &key_file, true)?;
        let detail = format!("key id {} → {} (mode 0600)", key.key_id(), key_file.display());
        Ok((key, detail))
    })?;

    let node = DataDir::new(root.join("node-a"));
    let trust = demo.step("write the trust root", || {
        let trust = TrustRoot::new(1, [publisher_of(&key, "demo publisher")])?;
        fs::create_dir_all(node.root())?;
        write_file_atomically(&node.trust_file(), trust.to_toml().as_bytes(), 0o644)?;
        Ok((trust, format!("1 publisher, threshold 1 → {}", node.trust_file().display())))
    })?;

    let blobs = node.blob_store()?;
    let packages = node.package_store()?;
    let mut published = Vec::new();
    for sample in SAMPLES {
        let wasm = skills.join(sample.file);
        let out = root.join(format!("{}-{}.pkg", sample.package, sample.version));
        let title = format!("pack, sign and publish {}@{}", sample.package, sample.version);
        let p = demo.step(&title, || {
            let blob = fs::read(&wasm).with_context(|| {
                format!(
                    "reading sample skill {} (build the samples with scripts/build-skills)",
                    wasm.display()
                )
            })?;
            let deps = sample.deps.iter().map(|d| parse_dep(d)).collect::<anyhow::Result<Vec<_>>>()?;
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

    demo.step("refuse a wrong --sha256 (the seed's X-Checksum-SHA256)", || {
        let wrong = BlobId::of(b"not the blob");
        match publish_file(&counter_pkg, Some(wrong), &trust, &blobs, &packages) {
            Err(e @ PublishError::ChecksumMismatch { .. }) => Ok(((), format!("refused: {e}"))),
            Err(e) => bail!("refused for the wrong reason: {e}"),
            Ok(_) => bail!("a wrong checksum was accepted"),
        }
    })?;

    demo.step("refuse a package signed by a key outside the trust root", || {
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
    })?;

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
    Ok(())
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
