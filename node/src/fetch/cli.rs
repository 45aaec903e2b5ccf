//! `clawmesh fetch PKG@VERSION --node DIR [--peer ADDR...]`: fetches a
//! package's blob from peers into a node's blob store. Without `--peer` the
//! running node fetches it from its mesh providers and streams its progress
//! over the admin socket; with `--peer` the CLI fetches from those peers
//! itself (the node need not run).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::time::Duration;

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
use super::progress::{FetchProgress, ProgressSnapshot};
use crate::daemon::admin_protocol::{AdminRequest, AdminResponse, MAX_ADMIN_LINE};
use crate::data_dir::{DataDir, read_trust};
use crate::mesh::{MeshConfig, MeshNetwork};

/// Exit code when no peer could serve the whole blob (the release stays Pending).
pub const EXIT_NO_PROVIDERS: u8 = 4;
/// Admin error code of a fetch no peer could serve.
pub const NO_PROVIDERS_CODE: &str = "no_providers";
/// Longest silence on the admin socket during a fetch: the node sends a
/// progress line every 250 ms, and each chunk has its own timeout there.
const ADMIN_FETCH_SILENCE: Duration = Duration::from_secs(120);

/// `clawmesh fetch` options.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The package to fetch, as `name@version`; its signed manifest must be
    /// in the node's package store.
    pub package: String,
    /// The node's data directory (its blob store receives the blob).
    #[arg(long, env = "CLAWMESH_DATA_DIR")]
    pub node: PathBuf,
    /// A peer that holds the blob, as a multiaddr ending in `/p2p/<peer id>`;
    /// repeat for more. Without it the running node fetches from the mesh.
    #[arg(long = "peer")]
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
    if args.peers.is_empty() {
        return fetch_through_node(&args);
    }
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

/// Asks the running node to fetch, drawing its progress lines.
fn fetch_through_node(args: &FetchArgs) -> anyhow::Result<ExitCode> {
    let Some((package, version)) = args.package.split_once('@') else {
        bail!("package {:?} must be written name@version", args.package);
    };
    let socket = DataDir::new(&args.node).admin_socket();
    let stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot reach the node's admin socket {} (is `clawmesh node` running? or give --peer)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(ADMIN_FETCH_SILENCE))?;
    stream.set_write_timeout(Some(ADMIN_FETCH_SILENCE))?;
    let request = AdminRequest::Fetch {
        package: package.to_owned(),
        version: version.to_owned(),
    };
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let progress = if args.json {
        FetchProgress::hidden()
    } else {
        FetchProgress::stderr(&args.package)
    };
    let mut reader = BufReader::new(stream);
    let outcome = loop {
        let mut answer = String::new();
        let n = std::io::Read::take(&mut reader, MAX_ADMIN_LINE as u64)
            .read_line(&mut answer)
            .context("reading the node's answer")?;
        if n == 0 {
            bail!("the node closed the admin connection before the fetch ended");
        }
        match serde_json::from_str::<AdminResponse>(&answer)
            .with_context(|| format!("unreadable answer from the node: {answer:?}"))?
        {
            AdminResponse::Ok(value) if value["kind"] == "progress" => {
                if let Ok(snapshot) = serde_json::from_value::<ProgressSnapshot>(value) {
                    progress.show(snapshot);
                }
            }
            AdminResponse::Ok(report) => break Ok(report),
            AdminResponse::Error(e) => break Err(e),
        }
    };
    progress.finish();
    match outcome {
        Ok(report) => {
            if args.json {
                println!("{report}");
            } else {
                println!(
                    "fetched {} ({} bytes, blob {}) from {} peers in {:.2}s",
                    args.package,
                    report["size"],
                    report["blob"].as_str().unwrap_or("?"),
                    report["peers_used"].as_array().map_or(0, Vec::len),
                    report["seconds"].as_f64().unwrap_or(0.0),
                );
                for liar in report["liars"].as_array().into_iter().flatten() {
                    println!(
                        "  peer {} served wrong bytes (chunk {}) and was dropped",
                        liar["peer"].as_str().unwrap_or("?"),
                        liar["chunk"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.code == NO_PROVIDERS_CODE => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"package": args.package, "status": "no_providers", "message": e.message})
                );
            } else {
                eprintln!("clawmesh fetch: {}", e.message);
            }
            Ok(ExitCode::from(EXIT_NO_PROVIDERS))
        }
        Err(e) => bail!("{}: {}", e.code, e.message),
    }
}
