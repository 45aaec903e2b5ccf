//! Dependency resolution over the manifests a node holds: builds the
//! resolver's catalog from verified manifests and renders its lock.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clawmesh_crdt::manifest::{PackageName, SignedManifest};
use clawmesh_crdt::resolve::{Catalog, Lock, resolve};

/// Parses `PKG@VERSION` (an exact version).
pub fn parse_root(text: &str) -> anyhow::Result<(PackageName, semver::Version)> {
    let Some((name, version)) = text.split_once('@') else {
        bail!("{text:?}: expected PKG@VERSION");
    };
    let name: PackageName = name
        .parse()
        .with_context(|| format!("{text:?}: package name"))?;
    let version = semver::Version::parse(version).with_context(|| format!("{text:?}: version"))?;
    Ok((name, version))
}

/// Resolves `roots` against the given manifests.
pub fn resolve_lock(
    manifests: &[SignedManifest],
    roots: &[(PackageName, semver::Version)],
) -> anyhow::Result<Lock> {
    let mut catalog = Catalog::default();
    for m in manifests {
        catalog
            .insert_manifest(&m.manifest)
            .with_context(|| format!("adding {} to the catalog", m.manifest.id()))?;
    }
    Ok(resolve(&catalog, roots)?)
}

type VersionMap = BTreeMap<String, String>;

/// A lock as JSON shows it: names and versions as strings.
#[derive(Debug, serde::Serialize)]
pub struct LockView {
    /// Root skills.
    pub roots: VersionMap,
    /// One version per node.
    pub shared: VersionMap,
    /// Each root's private dependencies.
    pub private: BTreeMap<String, VersionMap>,
    /// Each shared package's private dependencies.
    pub shared_private: BTreeMap<String, VersionMap>,
}

fn strings(m: &BTreeMap<PackageName, semver::Version>) -> VersionMap {
    m.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn nested(
    m: &BTreeMap<PackageName, BTreeMap<PackageName, semver::Version>>,
) -> BTreeMap<String, VersionMap> {
    m.iter().map(|(k, v)| (k.to_string(), strings(v))).collect()
}

impl From<&Lock> for LockView {
    fn from(lock: &Lock) -> Self {
        Self {
            roots: strings(&lock.roots),
            shared: strings(&lock.shared),
            private: nested(&lock.private),
            shared_private: nested(&lock.shared_private),
        }
    }
}

/// A lock as people read it.
pub fn render_lock(lock: &Lock) -> String {
    let mut out = String::new();
    if lock.shared.is_empty() {
        out.push_str("shared: (none)\n");
    }
    for (name, version) in &lock.shared {
        out.push_str(&format!("shared  {name} = {version}\n"));
    }
    for (root, deps) in &lock.private {
        if deps.is_empty() {
            out.push_str(&format!("private {root}: (none)\n"));
        }
        for (name, version) in deps {
            out.push_str(&format!("private {root} → {name} = {version}\n"));
        }
    }
    out
}
