//! `clawmesh pack`: a skill component + metadata → a signed package file.

use std::fs;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clawmesh_crdt::manifest::{
    Capabilities, DependencySpec, Manifest, PackageName, SignedManifest,
};

use clawmesh_crdt::range::VersionRange;

use super::PackArgs;
use super::keys::read_secret_key;
use crate::package_file::{encode_package, write_file_atomically};

/// The world sample skills target, written into manifests by default.
pub const DEFAULT_ABI_WORLD: &str = "clawmesh:skill/skill@0.1.0";

/// The first 8 bytes of a WebAssembly component (magic, version 0x0d, layer 1).
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
/// The first 8 bytes of a core WebAssembly module.
const CORE_MODULE_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Checks the preamble so a core module or a stray file is refused at pack
/// time, with a message that says which it is.
pub fn check_component_preamble(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some(p) if p == COMPONENT_PREAMBLE => Ok(()),
        Some(p) if p == CORE_MODULE_PREAMBLE => Err(
            "a core WebAssembly module, not a component (build for wasm32-wasip2 or run `wasm-tools component new`)"
                .into(),
        ),
        Some(p) if p[..4] == COMPONENT_PREAMBLE[..4] => {
            Err(format!("WebAssembly with an unknown version/layer {:02x?}", &p[4..]))
        }
        _ => Err("not WebAssembly (no \\0asm magic)".into()),
    }
}

/// Parses `PKG@RANGE` or `PKG@RANGE,shared` (also `,private`).
pub fn parse_dep(text: &str) -> anyhow::Result<DependencySpec> {
    let (body, shared) = match text.rsplit_once(',') {
        Some((body, "shared")) => (body, true),
        Some((body, "private")) => (body, false),
        Some((_, other)) if !other.contains(['<', '>', '=', '^', '~', '*', '.']) => {
            bail!("--dep {text:?}: unknown flag {other:?} (expected `shared` or `private`)")
        }
        _ => (text, false),
    };
    let Some((name, range)) = body.split_once('@') else {
        bail!("--dep {text:?}: expected PKG@RANGE[,shared]");
    };
    let package: PackageName = name
        .parse()
        .with_context(|| format!("--dep {text:?}: package name"))?;
    let range =
        VersionRange::parse(range).with_context(|| format!("--dep {text:?}: version range"))?;
    Ok(DependencySpec {
        package,
        range,
        shared,
    })
}

/// Runs `clawmesh pack`.
pub fn pack(args: &PackArgs) -> anyhow::Result<ExitCode> {
    let blob = fs::read(&args.wasm).with_context(|| format!("reading {}", args.wasm.display()))?;
    if let Err(why) = check_component_preamble(&blob) {
        bail!("{} is {why}", args.wasm.display());
    }
    let name: PackageName = args.name.parse().context("--name")?;
    let version = semver::Version::parse(&args.version)
        .with_context(|| format!("--version {:?} is not a semantic version", args.version))?;
    let deps = args
        .deps
        .iter()
        .map(|d| parse_dep(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = args
        .keys
        .iter()
        .map(|k| read_secret_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let caps = Capabilities {
        max_memory_bytes: args.max_memory_mib.saturating_mul(1 << 20),
        ..Capabilities::default()
    };
    let mut manifest = Manifest::for_blob(
        name,
        version,
        deps,
        &blob,
        args.abi_world.clone(),
        args.state_schema,
        caps,
    )
    .context("building the manifest")?;
    manifest.description = args.description.clone();
    manifest.validate().context("--description")?;
    let key_refs: Vec<_> = keys.iter().collect();
    let signed = SignedManifest::sign(manifest, &key_refs).context("signing the manifest")?;
    let m = &signed.manifest;
    let summary = format!(
        "{}@{} sha256 {} ({} bytes, {} chunk(s)) signed by {}",
        m.name,
        m.version,
        hex::encode(m.sha256),
        m.size,
        m.chunk_sha256.len(),
        signed
            .signers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let file = encode_package(signed.envelope, blob);
    write_file_atomically(&args.out, &file, 0o644)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("packed {summary} → {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_check_names_the_problem() {
        assert!(check_component_preamble(&COMPONENT_PREAMBLE).is_ok());
        assert!(
            check_component_preamble(&CORE_MODULE_PREAMBLE)
                .unwrap_err()
                .contains("core WebAssembly module")
        );
        assert!(
            check_component_preamble(b"hello world")
                .unwrap_err()
                .contains("not WebAssembly")
        );
        assert!(
            check_component_preamble(b"\0asm")
                .unwrap_err()
                .contains("not WebAssembly")
        );
    }

    #[test]
    fn dependency_flags_parse() {
        let d = parse_dep("com.example.codec@^1.2,shared").unwrap();
        assert!(d.shared);
        assert_eq!(d.package.to_string(), "com.example.codec");
        let d = parse_dep("com.example.codec@>=1.2, <2").unwrap();
        assert!(!d.shared);
        assert!(parse_dep("com.example.codec").is_err());
        assert!(
            parse_dep("com.example.codec@^1,bogus")
                .unwrap_err()
                .to_string()
                .contains("unknown flag")
        );
        assert!(parse_dep("Not A Name@^1").is_err());
    }
}
