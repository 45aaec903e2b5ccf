//! The node's release loop: turns the mesh's decided targets into running
//! skills. One sans-I/O `ReleaseController` per package decides; this loop
//! carries out its actions (fetch, verify, deploy, roll back) in tasks and
//! feeds their results back, and writes every status the controller reports
//! into the node's status record on the mesh's status board.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmesh_crdt::PackageStatus;
use clawmesh_crdt::manifest::{PackageName, SignedManifest};
use clawmesh_crdt::{
    PeerAction, PeerInput, ReleaseAction, ReleaseController, ReleaseControllerConfig, ReleaseInput,
    ReleaseStatus,
};
use libp2p::PeerId;
use semver::Version;
use tokio::sync::{Mutex, mpsc, watch};

use super::NodeContext;
use super::local_deploy::deploy_local;
use crate::blob_store::BlobId;
use crate::mesh::{DriverHandle, DriverNotice};
use crate::publish::check_blob_against_manifest;

/// How often controllers get a `Tick` (breaker resets, retries).
const RELEASE_TICK: Duration = Duration::from_millis(500);
/// Results of finished actions waiting for the loop.
const RESULT_QUEUE: usize = 256;
/// Fetch attempts before a release gives up and stays Pending.
const FETCH_ATTEMPTS: u32 = 60;
/// First wait between fetch attempts (doubles up to `FETCH_RETRY_MAX`).
const FETCH_RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between fetch attempts.
const FETCH_RETRY_MAX: Duration = Duration::from_secs(5);
/// Rejected entries and refusals kept for `status`.
const MAX_PROBLEMS: usize = 64;

/// What `status` shows of the loop: per package its controller's status,
/// and what the mesh refused and why.
#[derive(Debug, Default, Clone)]
pub struct ReleaseView {
    /// Per package, this node's release status.
    pub packages: BTreeMap<PackageName, ReleaseStatus>,
    /// Entries of the mesh documents every node ignores, with why.
    pub rejected: Vec<String>,
    /// Frames or announcements refused from peers, with why (newest last).
    pub refused: Vec<String>,
}

/// Shared view of the loop.
pub type SharedReleaseView = Arc<Mutex<ReleaseView>>;

/// A fetch in progress: resolves once the blob is stored, or says why not.
pub type FetchFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// Fetches a blob the node does not hold from peers that do. Without one
/// the release waits at Pending and its status says so.
pub trait BlobFetcher: Send + Sync {
    /// Fetches and stores the blob `manifest` names.
    fn fetch<'a>(&'a self, manifest: &'a SignedManifest) -> FetchFuture<'a>;
}

struct Loop {
    ctx: NodeContext,
    driver: DriverHandle,
    fetcher: Option<Arc<dyn BlobFetcher>>,
    controllers: BTreeMap<PackageName, ReleaseController>,
    view: SharedReleaseView,
    results: mpsc::Sender<(PackageName, ReleaseInput)>,
    started: Instant,
}

/// Starts the loop; it stops when `stop` turns true or the driver stops.
pub fn spawn(
    ctx: NodeContext,
    driver: DriverHandle,
    notices: mpsc::Receiver<DriverNotice>,
    fetcher: Option<Arc<dyn BlobFetcher>>,
    stop: watch::Receiver<bool>,
) -> (SharedReleaseView, tokio::task::JoinHandle<()>) {
    let view = SharedReleaseView::default();
    let (results_tx, results_rx) = mpsc::channel(RESULT_QUEUE);
    let this = Loop {
        ctx,
        driver,
        fetcher,
        controllers: BTreeMap::new(),
        view: view.clone(),
        results: results_tx,
        started: Instant::now(),
    };
    let task = tokio::spawn(this.run(notices, results_rx, stop));
    (view, task)
}

impl Loop {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(
        mut self,
        mut notices: mpsc::Receiver<DriverNotice>,
        mut results: mpsc::Receiver<(PackageName, ReleaseInput)>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Targets decided from documents loaded at start-up were never
        // announced as a change: start from them.
        if let Ok(targets) = self.driver.inspect(|core| core.targets().clone()).await {
            self.on_notice(DriverNotice::Core(PeerAction::TargetsChanged(targets)))
                .await;
        }
        let mut ticker = tokio::time::interval(RELEASE_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
                notice = notices.recv() => match notice {
                    Some(notice) => self.on_notice(notice).await,
                    None => break,
                },
                Some((package, input)) = results.recv() => self.feed(&package, input).await,
                _ = ticker.tick() => {
                    let packages: Vec<_> = self.controllers.keys().cloned().collect();
                    for package in packages {
                        self.feed(&package, ReleaseInput::Tick).await;
                    }
                }
            }
        }
    }

    async fn on_notice(&mut self, notice: DriverNotice) {
        match notice {
            DriverNotice::Core(PeerAction::TargetsChanged(targets)) => {
                let mut packages: BTreeSet<PackageName> =
                    self.controllers.keys().cloned().collect();
                packages.extend(targets.keys().cloned());
                for package in packages {
                    // A paused target keeps what runs: nothing new starts.
                    let target = targets
                        .get(&package)
                        .filter(|t| !t.paused)
                        .map(|t| t.version.clone());
                    self.feed(&package, ReleaseInput::Target(target)).await;
                }
            }
            DriverNotice::Core(PeerAction::Rejected(entry)) => {
                tracing::warn!(?entry, "mesh document entry rejected");
                push_bounded(&mut self.view.lock().await.rejected, format!("{entry:?}"));
            }
            DriverNotice::Core(PeerAction::Refused { from, reason }) => {
                tracing::warn!(%from, %reason, "peer frame refused");
                push_bounded(
                    &mut self.view.lock().await.refused,
                    format!("from {from}: {reason}"),
                );
            }
            DriverNotice::Core(PeerAction::WriteFailed { what, reason }) => {
                tracing::warn!(%what, %reason, "local mesh write refused");
                push_bounded(
                    &mut self.view.lock().await.refused,
                    format!("local write {what}: {reason}"),
                );
            }
            DriverNotice::PersistFailed { doc, error } => {
                tracing::error!(?doc, %error, "persisting a mesh document failed");
            }
            DriverNotice::Core(_) | DriverNotice::Persisted(_) => {}
        }
    }

    async fn feed(&mut self, package: &PackageName, input: ReleaseInput) {
        let now = self.now_ms();
        let controller = self
            .controllers
            .entry(package.clone())
            .or_insert_with(|| ReleaseController::new(ReleaseControllerConfig::default()));
        let actions = controller.handle(now, input);
        let status = controller.status();
        self.view
            .lock()
            .await
            .packages
            .insert(package.clone(), status);
        for action in actions {
            self.execute(package, action).await;
        }
    }

    async fn execute(&mut self, package: &PackageName, action: ReleaseAction) {
        match action {
            ReleaseAction::ReportStatus(status) => self.report(package, status).await,
            ReleaseAction::FetchBlob { version } => {
                let task = ActionTask::new(self, package);
                let fetcher = self.fetcher.clone();
                tokio::spawn(async move {
                    let input = task.fetch(fetcher, version).await;
                    task.done(input).await;
                });
            }
            ReleaseAction::VerifyBlob { version } => {
                let task = ActionTask::new(self, package);
                tokio::spawn(async move {
                    let outcome = task.verify(&version).await;
                    task.done(Some(ReleaseInput::Verified { version, outcome }))
                        .await;
                });
            }
            ReleaseAction::Deploy { version } => {
                let task = ActionTask::new(self, package);
                tokio::spawn(async move {
                    let outcome =
                        deploy_local(&task.ctx, task.package.as_str(), &version.to_string())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                    task.done(Some(ReleaseInput::Deployed { version, outcome }))
                        .await;
                });
            }
            ReleaseAction::RollBack { to } => {
                let task = ActionTask::new(self, package);
                tokio::spawn(async move {
                    let outcome = task.roll_back(to).await;
                    task.done(Some(ReleaseInput::RolledBack { outcome })).await;
                });
            }
        }
    }

    async fn report(&mut self, package: &PackageName, status: ReleaseStatus) {
        let blobs_held = self.blobs_held(package).await;
        let status = PackageStatus {
            state: status.state,
            version: status.version,
            running: status.running,
            failed_version: status.failed_version,
            health: status.health,
            updated_at_ms: unix_ms(),
            blobs_held,
            known_intent_clock: 0,
            detail: status.detail,
        };
        let input = PeerInput::<PeerId>::ReportStatus {
            package: package.clone(),
            status,
        };
        if self.driver.submit(input).await.is_err() {
            tracing::warn!(%package, "mesh driver stopped; status not reported");
        }
    }

    async fn blobs_held(&self, package: &PackageName) -> Vec<[u8; 32]> {
        let package = package.clone();
        let versions = self
            .driver
            .inspect(move |core| {
                core.catalog()
                    .get(&package)
                    .map(|versions| {
                        versions
                            .values()
                            .map(|m| m.manifest.sha256)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default();
        versions
            .into_iter()
            .filter(|sha| self.ctx.blobs.contains(&BlobId(*sha)))
            .take(clawmesh_crdt::status::MAX_BLOBS_HELD)
            .collect()
    }
}

fn push_bounded(list: &mut Vec<String>, item: String) {
    if list.len() == MAX_PROBLEMS {
        list.remove(0);
    }
    list.push(item);
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One action running in its own task, reporting back to the loop.
struct ActionTask {
    ctx: NodeContext,
    driver: DriverHandle,
    package: PackageName,
    results: mpsc::Sender<(PackageName, ReleaseInput)>,
}

impl ActionTask {
    fn new(owner: &Loop, package: &PackageName) -> Self {
        Self {
            ctx: owner.ctx.clone(),
            driver: owner.driver.clone(),
            package: package.clone(),
            results: owner.results.clone(),
        }
    }

    async fn done(self, input: Option<ReleaseInput>) {
        if let Some(input) = input {
            let _ = self.results.send((self.package, input)).await;
        }
    }

    /// The signed manifest of `version` from the mesh catalog.
    async fn manifest(&self, version: &Version) -> Option<SignedManifest> {
        let package = self.package.clone();
        let version = version.clone();
        self.driver
            .inspect(move |core| {
                core.catalog()
                    .get(&package)
                    .and_then(|v| v.get(&version))
                    .cloned()
            })
            .await
            .ok()
            .flatten()
    }

    /// Makes sure the manifest and the blob are held, retrying with backoff
    /// (the intent may arrive before the manifest does, and no peer may hold
    /// the blob yet); `None` after the last attempt leaves the release
    /// Pending.
    async fn fetch(
        &self,
        fetcher: Option<Arc<dyn BlobFetcher>>,
        version: Version,
    ) -> Option<ReleaseInput> {
        let mut wait = FETCH_RETRY_FIRST;
        for attempt in 1..=FETCH_ATTEMPTS {
            match self.fetch_once(fetcher.as_deref(), &version).await {
                Ok(()) => return Some(ReleaseInput::BlobFetched { version }),
                Err(reason) => {
                    tracing::info!(package = %self.package, %version, attempt, %reason, "not ready to verify yet; retrying");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(FETCH_RETRY_MAX);
        }
        tracing::warn!(package = %self.package, %version, "gave up after {FETCH_ATTEMPTS} attempts; stays Pending");
        None
    }

    async fn fetch_once(
        &self,
        fetcher: Option<&dyn BlobFetcher>,
        version: &Version,
    ) -> Result<(), String> {
        let manifest = self
            .manifest(version)
            .await
            .ok_or_else(|| "no valid manifest in the catalog yet".to_string())?;
        // The manifest travels with the mesh catalog; keep it beside the
        // blob so local deploys and restarts find it.
        self.ctx
            .packages
            .put(&manifest, &self.ctx.trust)
            .map_err(|e| format!("storing the manifest: {e}"))?;
        if self.ctx.blobs.contains(&BlobId(manifest.manifest.sha256)) {
            return Ok(());
        }
        let fetcher =
            fetcher.ok_or_else(|| "blob not held here and this node cannot fetch".to_string())?;
        fetcher.fetch(&manifest).await
    }

    async fn verify(&self, version: &Version) -> Result<(), String> {
        let manifest = self
            .manifest(version)
            .await
            .ok_or_else(|| "no valid signed manifest in the catalog".to_string())?;
        let blob = self
            .ctx
            .blobs
            .get(&BlobId(manifest.manifest.sha256))
            .map_err(|e| e.to_string())?;
        check_blob_against_manifest(&manifest, &blob)
    }

    /// After a failed deploy the supervisor never moved the route, so the
    /// previous version still serves; check that it does.
    async fn roll_back(&self, to: Option<Version>) -> Result<(), String> {
        let running = self
            .ctx
            .supervisor
            .status()
            .into_iter()
            .find(|s| s.package == self.package.as_str() && s.role == "active")
            .map(|s| s.version);
        match (to, running) {
            (None, _) => {
                self.ctx.supervisor.stop(self.package.as_str()).await;
                self.ctx.unpin(self.package.as_str());
                Ok(())
            }
            (Some(to), Some(running)) if running == to.to_string() => Ok(()),
            (Some(to), _) => deploy_local(&self.ctx, self.package.as_str(), &to.to_string())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}
