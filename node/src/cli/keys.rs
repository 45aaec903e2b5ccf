//! `clawmesh key gen` and `clawmesh trust init`.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clawmesh_crdt::signing::PublisherKey;
use clawmesh_crdt::trust::{TrustRoot, TrustedPublisher};

use crate::package_file::write_file_atomically;

/// Suffix of the public half written beside a secret key file.
pub const PUBLIC_SUFFIX: &str = ".pub";

fn refuse_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists (pass --force to overwrite)",
            path.display()
        );
    }
    Ok(())
}

/// Writes a new secret key (0600) and its public half; prints the key id.
pub fn key_gen(out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let key = PublisherKey::generate().context("generating a key")?;
    write_key_pair(&key, out, force)?;
    println!("{}", key.key_id());
    eprintln!(
        "wrote secret key {} (mode 0600) and public key {}{PUBLIC_SUFFIX}",
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `key` to `out` (0600) and its public half to `out.pub` (0644).
pub fn write_key_pair(key: &PublisherKey, out: &Path, force: bool) -> anyhow::Result<()> {
    refuse_overwrite(out, force)?;
    let public = public_path(out);
    refuse_overwrite(&public, force)?;
    write_file_atomically(out, key.to_key_file().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", out.display()))?;
    // The public half is itself a trust root trusting only this key, so it
    // can be used directly or merged by `trust init`.
    let public_text = TrustRoot::new(1, [publisher_of(key, "publisher")])?.to_toml();
    write_file_atomically(&public, public_text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", public.display()))?;
    Ok(())
}

fn public_path(secret: &Path) -> std::path::PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(PUBLIC_SUFFIX);
    p.into()
}

/// Reads a secret key file, refusing one that others can read.
pub fn read_secret_key(path: &Path) -> anyhow::Result<PublisherKey> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).with_context(|| format!("reading key {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {} has mode {mode:o}; a secret key must not be readable by others (chmod 600)",
            path.display()
        );
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    PublisherKey::from_key_file(&text).with_context(|| format!("key file {}", path.display()))
}

/// The trusted-publisher entry of a key.
pub fn publisher_of(key: &PublisherKey, name: &str) -> TrustedPublisher {
    TrustedPublisher::new(name, key.verifying_key())
}

/// Reads the public half(s) of keys from a secret or `.pub` file.
fn read_public(path: &Path) -> anyhow::Result<Vec<TrustedPublisher>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(secret) = PublisherKey::from_key_file(&text) {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("publisher")
            .to_string();
        return Ok(vec![publisher_of(&secret, &name)]);
    }
    let root = TrustRoot::from_toml(&text).with_context(|| {
        format!(
            "{} is neither a secret key nor a public key file",
            path.display()
        )
    })?;
    Ok(root.publishers().cloned().collect())
}

/// Writes a trust root listing the given keys.
pub fn trust_init(
    key_files: &[std::path::PathBuf],
    threshold: usize,
    out: &Path,
    force: bool,
) -> anyhow::Result<ExitCode> {
    refuse_overwrite(out, force)?;
    let mut keys = Vec::new();
    for p in key_files {
        keys.extend(read_public(p)?);
    }
    let root = TrustRoot::new(threshold, keys).context("building the trust root")?;
    write_file_atomically(out, root.to_toml().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote trust root {} ({} publisher key(s), threshold {threshold})",
        out.display(),
        key_files.len()
    );
    Ok(ExitCode::SUCCESS)
}
