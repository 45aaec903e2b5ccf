//! How a node gets blobs it lacks: asks the peers whose status says they
//! hold the blob, then the connected peers, then the providers the DHT
//! knows, over the verified chunk protocol; and serves its own blobs to
//! peers in turn, announcing each one it holds as a DHT provider record.
//! The same fetch runs for the release loop and for `clawmesh fetch`
//! through the admin socket, which sees its progress.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use clawmesh_crdt::manifest::{PackageName, SignedManifest};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::NodeContext;
use super::admin_protocol::{AdminError, AdminResponse};
use super::release::{BlobFetcher, FetchFuture};
use crate::blob_store::{BlobId, BlobStore};
use crate::fetch::{
    FetchConfig, FetchError, FetchMetrics, FetchProgress, ProviderLookup, Providers, ServeConfig,
    fetch, spawn_blob_server,
};
use crate::mesh::{DriverHandle, MeshHandle};

/// How often a fetch asked for over the admin socket reports its progress.
const ADMIN_PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Lines queued for the admin connection; a slow reader only delays the
/// progress lines (they are dropped, the last one wins), never the fetch.
const ADMIN_LINES: usize = 4;
use crate::fetch::cli::NO_PROVIDERS_CODE as NO_PROVIDERS;
/// Default bound on the DHT provider lookup before a fetch. The lookup
/// answers as soon as its query ends (a round trip or two to the peers
/// closest to the key) or `KAD_PROVIDERS` are found; this only caps a DHT
/// with peers that do not answer. `CLAWMESH_FETCH_DHT_LOOKUP_MS` overrides
/// it (0: no lookup).
const KAD_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound when a status already lists a holder: the DHT only adds
/// spares then, so a slow DHT delays the fetch by at most this.
const KAD_LOOKUP_TIMEOUT_WITH_HOLDERS: Duration = Duration::from_secs(1);
/// Environment variable overriding `KAD_LOOKUP_TIMEOUT`, in milliseconds.
pub const DHT_LOOKUP_ENV: &str = "CLAWMESH_FETCH_DHT_LOOKUP_MS";
/// Bound on the DHT part of the lookups a running fetch repeats when it
/// runs short of peers (`fetch::JoinConfig`): a quiet DHT must not hold up
/// the next one.
const KAD_REJOIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Environment variable overriding how long a fetch with no provider left
/// keeps looking for one (`JoinConfig::starved_wait`), in milliseconds.
pub const JOIN_WAIT_ENV: &str = "CLAWMESH_FETCH_JOIN_WAIT_MS";
/// Most providers taken from one DHT lookup.
const KAD_PROVIDERS: usize = 16;
/// How often the blobs provided on the DHT are reconciled with the store
/// (blobs that landed by a path that did not announce them, blobs removed
/// by garbage collection). Kad itself re-publishes the records that stay.
const PROVIDE_RESCAN: Duration = Duration::from_secs(600);

/// Fetches from peers that report holding the blob.
pub struct MeshFetcher {
    mesh: MeshHandle,
    driver: DriverHandle,
    store: BlobStore,
    config: FetchConfig,
    metrics: FetchMetrics,
}

impl MeshFetcher {
    /// Serves this node's blobs to peers and returns the fetcher.
    pub fn start(
        mesh: MeshHandle,
        driver: DriverHandle,
        store: BlobStore,
    ) -> anyhow::Result<Arc<Self>> {
        let metrics = FetchMetrics::default();
        spawn_blob_server(
            &mesh,
            Arc::new(store.clone()),
            ServeConfig::default(),
            metrics.clone(),
        )
        .map_err(|e| anyhow::anyhow!("serving blobs: {e:?}"))?;
        tokio::spawn(
            announce_blobs(mesh.clone(), store.clone())
                .instrument(tracing::info_span!("provide_blobs")),
        );
        Ok(Arc::new(Self {
            mesh,
            driver,
            store,
            config: fetch_config(),
            metrics,
        }))
    }
}

/// Peers whose status lists the blob among the ones they hold.
async fn providers(mesh: &MeshHandle, driver: &DriverHandle, sha256: [u8; 32]) -> Vec<PeerId> {
    let me = mesh.local_peer_id();
    driver
        .inspect(move |core| {
            core.status_table()
                .into_iter()
                .filter(|(_, packages)| packages.values().any(|st| st.blobs_held.contains(&sha256)))
                .filter_map(|(node, _)| node.parse::<PeerId>().ok())
                .filter(|peer| *peer != me)
                .collect()
        })
        .await
        .unwrap_or_default()
}

/// Announces every blob of the store as a DHT provider record at start,
/// then reconciles every `PROVIDE_RESCAN` (new blobs provided, removed ones
/// no longer). Blobs that land through a fetch or a publish announced to
/// the node are provided at once by those paths.
async fn announce_blobs(mesh: MeshHandle, store: BlobStore) {
    let mut rescan = tokio::time::interval(PROVIDE_RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        rescan.tick().await;
        let held: BTreeSet<BlobId> = match store.list() {
            Ok(ids) => ids.into_iter().collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list the blob store; provider records unchanged");
                continue;
            }
        };
        let Ok(provided) = mesh.provided_blobs().await else {
            return;
        };
        let provided: BTreeSet<BlobId> = provided.into_iter().map(BlobId).collect();
        for gone in provided.difference(&held) {
            if mesh.stop_providing(gone.0).await.is_err() {
                return;
            }
        }
        let mut announced = 0usize;
        for new in held.difference(&provided) {
            match mesh.start_providing(new.0).await {
                Ok(()) => announced += 1,
                Err(crate::mesh::ProvideError::Stopped(_)) => return,
                Err(error) => tracing::warn!(blob = %new, %error, "blob not provided"),
            }
        }
        tracing::debug!(
            held = held.len(),
            announced,
            "blob provider records reconciled"
        );
    }
}

/// Peers to ask for a blob, in order, and which of them the DHT named.
struct Candidates {
    peers: Vec<PeerId>,
    /// Every provider the DHT lookup returned (some may also be listed by
    /// a status or connected).
    from_kad: Vec<PeerId>,
}

/// Peers to ask for a blob: those whose status says they hold it first,
/// then every other connected peer, then the providers the DHT knows.
/// A status lists blobs only for packages under release there and may not
/// have reached this node yet (status changes travel in batches); a peer
/// without the blob answers "not held" at once. The DHT finds holders that
/// no status lists and that are not connected (a blob published and not
/// released, a mesh larger than `max_peers`); the lookup runs alongside
/// the connected-peer read, dials the providers it finds, and is bounded
/// by `KAD_LOOKUP_TIMEOUT` (`KAD_LOOKUP_TIMEOUT_WITH_HOLDERS` once a status
/// lists a holder).
///
/// The same lookup runs again while the fetch runs short of peers
/// (`rejoin_lookup`), so that a holder that appears later joins it.
async fn candidate_peers(mesh: &MeshHandle, driver: &DriverHandle, sha256: [u8; 32]) -> Candidates {
    candidate_peers_within(mesh, driver, sha256, dht_lookup_bound()).await
}

/// `candidate_peers` with the DHT lookup bounded by `dht_bound`.
async fn candidate_peers_within(
    mesh: &MeshHandle,
    driver: &DriverHandle,
    sha256: [u8; 32],
    dht_bound: Duration,
) -> Candidates {
    // The status read is in-process and quick; it decides the lookup's bound.
    let mut peers = providers(mesh, driver, sha256).await;
    let bound = if peers.is_empty() {
        dht_bound
    } else {
        dht_bound.min(KAD_LOOKUP_TIMEOUT_WITH_HOLDERS)
    };
    let lookup = async {
        if bound.is_zero() {
            return Vec::new();
        }
        mesh.get_providers(sha256, KAD_PROVIDERS, bound)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(%error, "no DHT provider lookup");
                Vec::new()
            })
    }
    .instrument(tracing::debug_span!(
        "kad_providers",
        bound_ms = bound.as_millis()
    ));
    let (connected, from_kad) = tokio::join!(
        async { mesh.connected_peers().await.unwrap_or_default() },
        lookup,
    );
    let me = mesh.local_peer_id();
    for peer in connected.into_iter().chain(from_kad.iter().copied()) {
        if peer != me && !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    tracing::debug!(
        candidates = peers.len(),
        from_kad = from_kad.len(),
        "fetch candidates"
    );
    Candidates { peers, from_kad }
}

/// The providers of a fetch: `initial`, and the lookup it repeats while it
/// runs short of peers (statuses, connected peers, the DHT within
/// `KAD_REJOIN_TIMEOUT`).
fn providers_of(
    mesh: &MeshHandle,
    driver: &DriverHandle,
    sha256: [u8; 32],
    initial: Vec<PeerId>,
) -> Providers {
    let (mesh, driver) = (mesh.clone(), driver.clone());
    let lookup: ProviderLookup = Arc::new(move || {
        let (mesh, driver) = (mesh.clone(), driver.clone());
        let bound = dht_lookup_bound().min(KAD_REJOIN_TIMEOUT);
        Box::pin(
            async move {
                candidate_peers_within(&mesh, &driver, sha256, bound)
                    .await
                    .peers
            }
            .instrument(tracing::debug_span!("rejoin_lookup")),
        )
    });
    Providers {
        initial,
        lookup: Some(lookup),
    }
}

/// The node's fetch configuration: the defaults, with `JoinConfig::starved_wait`
/// from `CLAWMESH_FETCH_JOIN_WAIT_MS` when set to a number.
fn fetch_config() -> FetchConfig {
    let mut config = FetchConfig::default();
    match std::env::var(JOIN_WAIT_ENV)
        .ok()
        .map(|v| v.trim().parse::<u64>())
    {
        Some(Ok(ms)) => config.join.starved_wait = Duration::from_millis(ms),
        Some(Err(error)) => {
            tracing::warn!(%error, "{JOIN_WAIT_ENV} is not a number of milliseconds; using the default");
        }
        None => {}
    }
    config
}

/// `KAD_LOOKUP_TIMEOUT`, or `CLAWMESH_FETCH_DHT_LOOKUP_MS` when set to a
/// number (read once).
fn dht_lookup_bound() -> Duration {
    static BOUND: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *BOUND.get_or_init(|| {
        match std::env::var(DHT_LOOKUP_ENV).ok().map(|v| v.trim().parse::<u64>()) {
            Some(Ok(ms)) => Duration::from_millis(ms),
            Some(Err(error)) => {
                tracing::warn!(%error, "{DHT_LOOKUP_ENV} is not a number of milliseconds; using the default");
                KAD_LOOKUP_TIMEOUT
            }
            None => KAD_LOOKUP_TIMEOUT,
        }
    })
}

/// Announces a blob that just landed in the store; a failure only delays
/// its record to the next rescan.
async fn provide(mesh: &MeshHandle, sha256: [u8; 32]) {
    if let Err(error) = mesh.start_providing(sha256).await {
        tracing::warn!(blob = %BlobId(sha256), %error, "fetched blob not provided");
    }
}

impl BlobFetcher for MeshFetcher {
    fn fetch<'a>(&'a self, manifest: &'a SignedManifest) -> FetchFuture<'a> {
        Box::pin(async move {
            let providers = candidate_peers(&self.mesh, &self.driver, manifest.manifest.sha256)
                .await
                .peers;
            if providers.is_empty() {
                return Err("no peer is connected to fetch this blob from".to_string());
            }
            let sha256 = manifest.manifest.sha256;
            let report = fetch(
                &self.mesh,
                &self.store,
                &manifest.manifest,
                providers_of(&self.mesh, &self.driver, sha256, providers),
                &self.config,
                &self.metrics,
                &FetchProgress::hidden(),
            )
            .await
            .map_err(|e| e.to_string())?;
            tracing::info!(blob = %report.blob, peers = report.peers_used.len(), liars = report.liars.len(), "blob fetched");
            provide(&self.mesh, manifest.manifest.sha256).await;
            Ok(())
        })
    }
}

fn refuse(code: &str, message: String) -> AdminResponse {
    AdminResponse::Error(AdminError {
        code: code.to_string(),
        message,
    })
}

/// The manifest of `package@version`: from this node's package store, else
/// from the mesh catalog (verified when it entered).
async fn find_manifest(
    ctx: &NodeContext,
    driver: &DriverHandle,
    package: &str,
    version: &str,
) -> Result<SignedManifest, AdminResponse> {
    let name: PackageName = package
        .parse()
        .map_err(|e| refuse("bad_request", format!("package {package:?}: {e}")))?;
    let v = semver::Version::parse(version)
        .map_err(|e| refuse("bad_request", format!("version {version:?}: {e}")))?;
    if let Some(signed) = ctx
        .packages
        .get(&name, &v, &ctx.trust)
        .map_err(|e| refuse("invalid_manifest", e.to_string()))?
    {
        return Ok(signed);
    }
    let (n, ver) = (name.clone(), v.clone());
    driver
        .inspect(move |core| core.catalog().get(&n).and_then(|vs| vs.get(&ver)).cloned())
        .await
        .map_err(|_| refuse("no_mesh", "the mesh driver stopped".into()))?
        .ok_or_else(|| {
            refuse(
                "not_published",
                format!("{name}@{v} is neither published on this node nor in its mesh catalog"),
            )
        })
}

/// `clawmesh fetch` through the admin socket: fetches `package@version`'s
/// blob from the mesh providers into this node's store. The returned lines
/// are progress snapshots (`{"kind":"progress",...}`), then one last line:
/// the report (`{"kind":"done",...}`) or an error (`no_providers`, ...).
pub fn admin_fetch(
    ctx: NodeContext,
    package: String,
    version: String,
) -> mpsc::Receiver<AdminResponse> {
    let (lines, rx) = mpsc::channel(ADMIN_LINES);
    let span = tracing::info_span!("admin_fetch", %package, %version);
    tokio::spawn(
        async move {
            let last = run_admin_fetch(&ctx, &package, &version, &lines).await;
            // The client may be gone; the blob is in the store either way.
            let _ = lines.send(last).await;
        }
        .instrument(span),
    );
    rx
}

async fn run_admin_fetch(
    ctx: &NodeContext,
    package: &str,
    version: &str,
    lines: &mpsc::Sender<AdminResponse>,
) -> AdminResponse {
    let Some(side) = ctx.mesh.get() else {
        return refuse("no_mesh", "this node runs without the mesh".into());
    };
    let signed = match find_manifest(ctx, &side.driver, package, version).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let candidates = candidate_peers(&side.network, &side.driver, signed.manifest.sha256).await;
    let providers = providers_of(
        &side.network,
        &side.driver,
        signed.manifest.sha256,
        candidates.peers.clone(),
    );
    let progress = FetchProgress::hidden();
    let (config, metrics) = (fetch_config(), FetchMetrics::default());
    let fetching = fetch(
        &side.network,
        &ctx.blobs,
        &signed.manifest,
        providers,
        &config,
        &metrics,
        &progress,
    );
    tokio::pin!(fetching);
    let mut ticker = tokio::time::interval(ADMIN_PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            result = &mut fetching => break result,
            _ = ticker.tick() => {
                let mut line = serde_json::to_value(progress.snapshot()).unwrap_or_default();
                line["kind"] = "progress".into();
                // Full: the reader is slow; it gets the next snapshot instead.
                let _ = lines.try_send(AdminResponse::Ok(line));
            }
        }
    };
    if result.is_ok() {
        provide(&side.network, signed.manifest.sha256).await;
    }
    match result {
        Ok(report) => AdminResponse::Ok(serde_json::json!({
            "kind": "done",
            "package": format!("{package}@{version}"),
            "blob": report.blob.to_hex(),
            "size": report.size,
            "fetched_bytes": report.fetched_bytes,
            "seconds": report.elapsed.as_secs_f64(),
            "peers_used": report.peers_used.iter().map(|(p, n)| serde_json::json!({"peer": p.to_string(), "chunks": n})).collect::<Vec<_>>(),
            "liars": report.liars.iter().map(|(p, c)| serde_json::json!({"peer": p.to_string(), "chunk": c})).collect::<Vec<_>>(),
            "kad_providers": candidates.from_kad.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
        Err(e @ FetchError::NoProviders { .. }) => refuse(NO_PROVIDERS, e.to_string()),
        Err(e) => refuse("fetch_failed", e.to_string()),
    }
}
