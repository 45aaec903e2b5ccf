//! `clawmesh fetch PKG@VERSION --node DIR --peer ADDR...`: fetches a
//! published package's blob from peers into a node's blob store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use clawmesh_crdt::manifest::PackageName;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::client::{FetchConfig, FetchError, fetch};
use super::metrics::FetchMetrics;
use super::progress::FetchProgress;
use crate::data_dir::{DataDir, read_trust};
use crate::mesh::{MeshConfig, MeshNetwork};

/// Exit code when no peer could serve the whole blob (the release stays Pending).
pub const EXIT_NO_PROVIDERS: u8 = 4;

/// `clawmesh fetch` options.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The package to fetch, as `name@version`; its signed manifest must be
    /// in the node's package store.
    pub package: String,
    /// The node's data directory (its blob store receives the blob).
    #[arg(long, env = "CLAWMESH_DATA_DIR")]
    pub node: PathBuf,
    /// A peer that holds the blob, as a multiaddr ending in `/p2p/<peer id>`; repeat for more.
    #[arg(long = "peer", required = true)]
    pub peers: Vec<Multiaddr>,
    /// Trust root (default: `<node>/trust.toml`).
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Print the outcome as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// Runs `clawmesh fetch`.
pub fn run_fetch_command(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(fetch_command(args))
}

async fn fetch_command(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let Some((name, version)) = args.package.split_once('@') else {
        bail!("package {:?} must be written name@version", args.package);
    };
    let name =
        PackageName::parse(name).with_context(|| format!("package name in {:?}", args.package))?;
    let version = semver::Version::parse(version)
        .with_context(|| format!("version in {:?}", args.package))?;
    let data = DataDir::new(&args.node);
    let trust = read_trust(&args.trust.clone().unwrap_or_else(|| data.trust_file()))?;
    let Some(signed) = data.package_store()?.get(&name, &version, &trust)? else {
        bail!(
            "{name}@{version} is not published on node {} (run `clawmesh publish` first)",
            args.node.display()
        );
    };
    let store = data.blob_store()?;
    let providers = args
        .peers
        .iter()
        .map(|addr| match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Ok(peer),
            _ => bail!("peer address {addr} must end in /p2p/<peer id>"),
        })
        .collect::<anyhow::Result<Vec<PeerId>>>()?;
    // A throwaway identity: the node may be running with its own.
    let mut cfg = MeshConfig::new(Keypair::generate_ed25519());
    cfg.bootstrap = args.peers.clone();
    let (mesh, mut events) = MeshNetwork::spawn(cfg)?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let progress = if args.json {
        FetchProgress::hidden()
    } else {
        FetchProgress::stderr(&format!("{name}@{version}"))
    };
    let result = fetch(
        &mesh,
        &store,
        &signed.manifest,
        providers,
        &FetchConfig::default(),
        &FetchMetrics::default(),
        &progress,
    )
    .await;
    mesh.shutdown().await;
    let liars_json = |liars: &[(PeerId, u32)]| {
        liars
            .iter()
            .map(|(p, c)| serde_json::json!({"peer": p.to_string(), "chunk": c}))
            .collect::<Vec<_>>()
    };
    match result {
        Ok(report) => {
            if args.json {
                let out = serde_json::json!({
                    "package": format!("{name}@{version}"),
                    "blob": report.blob.to_hex(),
                    "size": report.size,
                    "fetched_bytes": report.fetched_bytes,
                    "seconds": report.elapsed.as_secs_f64(),
                    "peers_used": report.peers_used.iter().map(|(p, n)| serde_json::json!({"peer": p.to_string(), "chunks": n})).collect::<Vec<_>>(),
                    "liars": liars_json(&report.liars),
                });
                println!("{out}");
            } else {
                println!(
                    "fetched {name}@{version} ({} bytes, blob {}) from {} peers in {:.2?}",
                    report.size,
                    report.blob,
                    report.peers_used.len(),
                    report.elapsed
                );
                for (peer, chunk) in &report.liars {
                    println!("  peer {peer} served wrong bytes (chunk {chunk}) and was dropped");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(FetchError::NoProviders {
            blob,
            missing,
            liars,
        }) => {
            if args.json {
                let out = serde_json::json!({
                    "package": format!("{name}@{version}"),
                    "blob": blob.to_hex(),
                    "status": "no_providers",
                    "missing_chunks": missing,
                    "liars": liars_json(&liars),
                });
                println!("{out}");
            } else {
                eprintln!(
                    "clawmesh fetch: no peer can serve {} chunks of {name}@{version} (blob {blob}); verified chunks are kept for the next attempt",
                    missing.len()
                );
            }
            Ok(ExitCode::from(EXIT_NO_PROVIDERS))
        }
        Err(e) => Err(e.into()),
    }
}
