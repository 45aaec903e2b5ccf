//! `clawmesh publish`, `clawmesh resolve` and `clawmesh gc`: operations on a
//! node's local stores.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clawmesh_crdt::trust::TrustRoot;

use super::ui::Ui;
use super::{GcArgs, NodeDir, PublishArgs, ResolveArgs};
use crate::blob_store::BlobId;
use crate::data_dir::{DataDir, read_trust};
use crate::publish::publish_file;

fn trust_for(node: &NodeDir, explicit: Option<&PathBuf>) -> anyhow::Result<TrustRoot> {
    let path = explicit
        .cloned()
        .unwrap_or_else(|| DataDir::new(&node.node).trust_file());
    read_trust(&path)
}

/// Runs `clawmesh publish`.
pub fn publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let expected = args
        .sha256
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase().parse::<BlobId>())
        .transpose()
        .context("--sha256")?;
    let trust = trust_for(&args.node, args.trust.as_ref())?;
    let dir = DataDir::new(&args.node.node);
    let published = publish_file(
        &args.file,
        expected,
        &trust,
        &dir.blob_store()?,
        &dir.package_store()?,
    )
    .with_context(|| format!("publishing {}", args.file.display()))?;
    // A running node also puts it into the mesh catalog.
    let announce = crate::daemon::admin_call(
        &dir.admin_socket(),
        &crate::daemon::AdminRequest::Mesh(crate::daemon::mesh_admin::MeshRequest::Announce {
            package: published.package.clone(),
            version: published.version.clone(),
        }),
    );
    let announced = match &announce {
        Ok(_) => "announced to the mesh".to_string(),
        Err(crate::daemon::AdminClientError::Connect { .. }) => {
            "node not running: stored only".to_string()
        }
        Err(e) => format!("not announced: {e}"),
    };
    if args.json {
        let mut v = serde_json::to_value(&published)?;
        v["mesh"] = serde_json::Value::String(announced);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let ui = Ui::from_env();
        let verb = if published.newly_stored {
            "published"
        } else {
            "already published"
        };
        println!(
            "{} {}@{} sha256 {} ({} bytes, {} chunks, signed by {})",
            ui.ok(verb),
            published.package,
            published.version,
            published.sha256,
            published.size,
            published.chunks,
            published.signers.join(",")
        );
        println!("{}", ui.dim(&announced));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `clawmesh resolve`.
pub fn resolve(args: &ResolveArgs) -> anyhow::Result<ExitCode> {
    let trust = trust_for(&args.node, args.trust.as_ref())?;
    let dir = DataDir::new(&args.node.node);
    let (manifests, bad) = dir.package_store()?.list(&trust)?;
    for b in &bad {
        eprintln!("ignored: {b}");
    }
    let roots = args
        .roots
        .iter()
        .map(|r| crate::resolve::parse_root(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lock = crate::resolve::resolve_lock(&manifests, &roots)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::resolve::LockView::from(&lock))?
        );
    } else {
        print!("{}", crate::resolve::render_lock(&lock));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `clawmesh gc`.
pub fn gc(args: &GcArgs) -> anyhow::Result<ExitCode> {
    let trust = trust_for(&args.node, args.trust.as_ref())?;
    let dir = DataDir::new(&args.node.node);
    let (manifests, bad) = dir.package_store()?.list(&trust)?;
    if !bad.is_empty() {
        anyhow::bail!(
            "refusing to collect: {} stored manifest(s) do not verify, so their blobs cannot be told apart from garbage (first: {})",
            bad.len(),
            bad[0]
        );
    }
    let keep: BTreeSet<BlobId> = manifests
        .iter()
        .map(|m| BlobId(m.manifest.sha256))
        .collect();
    let report = dir.blob_store()?.gc(&keep)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "removed {} blob(s), freed {} bytes; {} kept (referenced), {} kept (pinned), {} stale temp file(s) removed",
            report.removed.len(),
            report.freed_bytes,
            keep.len(),
            report.kept_pinned.len(),
            report.stale_tmp_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}
