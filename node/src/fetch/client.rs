//! The fetch driver: runs a `FetchPlan` against a `ChunkSource`, writes the
//! chunks the plan accepts into a `PartialBlob`, and installs the blob once
//! every chunk is in and the whole file verifies.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmesh_crdt::manifest::Manifest;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::join::{JoinConfig, Rejoin};
use super::layout::ChunkLayout;
use super::metrics::{ChunkFailure, FetchMetrics};
use super::partial::{PartialBlob, PartialError};
use super::plan::{
    ChunkVerdict, FetchPlan, PlanConfig, PlanStatus, Rediscovered, RequestEnd, RequestId,
};
use super::progress::FetchProgress;
use super::source::{
    ChunkSource, DEFAULT_CHUNK_TIMEOUT, DriverMsg, Libp2pSource, ReplySink, SourceError,
    SourceReply, WantedChunk,
};
use crate::blob_store::{BlobId, BlobStore};
use crate::mesh::MeshHandle;

/// Answers queued from source tasks to the driver; with one chunk per
/// answer this bounds buffered bytes to `REPLY_QUEUE × chunk size`.
pub const REPLY_QUEUE: usize = 16;
/// Verified chunks queued from the driver to the blocking thread that
/// writes them (and hashes the blob in chunk order); bounds that buffer to
/// `WRITE_QUEUE × chunk size`.
pub const WRITE_QUEUE: usize = 16;
/// Default `FetchConfig::tick`.
pub const DEFAULT_TICK: Duration = Duration::from_millis(250);

/// How a fetch runs.
#[derive(Clone, Copy, Debug)]
pub struct FetchConfig {
    /// The planner's bounds (concurrency, memory, stealing, failures).
    pub plan: PlanConfig,
    /// Time to open a stream and to receive each chunk (libp2p source).
    pub chunk_timeout: Duration,
    /// How often the plan is looked at with nothing arriving (to steal slow
    /// chunks, to look for providers).
    pub tick: Duration,
    /// When a running fetch looks for more providers (with a
    /// `Providers::lookup`).
    pub join: JoinConfig,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            plan: PlanConfig::default(),
            chunk_timeout: DEFAULT_CHUNK_TIMEOUT,
            tick: DEFAULT_TICK,
            join: JoinConfig::default(),
        }
    }
}

/// A provider lookup a running fetch can make: the peers that might hold
/// the blob now (known ones included; the plan sorts them out).
pub type ProviderLookup =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<PeerId>> + Send>> + Send + Sync>;

/// Whom a fetch asks: the peers known when it starts and, optionally, a
/// lookup it repeats while it runs (`FetchConfig::join` says when) so that
/// holders that appear later join it.
#[derive(Clone, Default)]
pub struct Providers {
    /// Known at the start.
    pub initial: Vec<PeerId>,
    /// Asked again when the fetch runs short of peers or stalls.
    pub lookup: Option<ProviderLookup>,
}

impl From<Vec<PeerId>> for Providers {
    fn from(initial: Vec<PeerId>) -> Self {
        Self {
            initial,
            lookup: None,
        }
    }
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("initial", &self.initial)
            .field("lookup", &self.lookup.is_some())
            .finish()
    }
}

/// What a completed fetch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    /// The blob, now in the store.
    pub blob: BlobId,
    /// Its size.
    pub size: u64,
    /// Bytes fetched in this run (less than `size` when resumed or already held).
    pub fetched_bytes: u64,
    /// Peers that delivered chunks, with how many.
    pub peers_used: Vec<(PeerId, u64)>,
    /// Peers banned for serving wrong bytes, with the first chunk each lied about.
    pub liars: Vec<(PeerId, u32)>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Why a fetch ended without the blob. Chunks already verified stay in the
/// fetch's temp file, so the next attempt resumes.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No live peer is left that might hold these chunks (the release stays
    /// Pending with this as its status).
    #[error("blob {blob}: no provider left for {} of its chunks (first: {}); liars banned: {}", missing.len(), missing.first().copied().unwrap_or(0), fmt_liars(liars))]
    NoProviders {
        /// The blob.
        blob: BlobId,
        /// Chunks nobody can serve.
        missing: Vec<u32>,
        /// Peers banned for serving wrong bytes.
        liars: Vec<(PeerId, u32)>,
    },
    /// The temp file or the store failed (or the whole blob did not verify).
    #[error(transparent)]
    Partial(#[from] PartialError),
}

fn joined(e: tokio::task::JoinError) -> PartialError {
    PartialError::Io {
        op: "join the fetch's disk thread",
        path: std::path::PathBuf::new(),
        source: std::io::Error::other(e),
    }
}

fn fmt_liars(liars: &[(PeerId, u32)]) -> String {
    if liars.is_empty() {
        return "none".to_owned();
    }
    liars
        .iter()
        .map(|(p, c)| format!("{p} (chunk {c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fetches the blob `manifest` names from `providers` over `mesh`, into `store`.
pub async fn fetch(
    mesh: &MeshHandle,
    store: &BlobStore,
    manifest: &Manifest,
    providers: impl Into<Providers>,
    config: &FetchConfig,
    metrics: &FetchMetrics,
    progress: &FetchProgress,
) -> Result<FetchReport, FetchError> {
    let source = Arc::new(Libp2pSource::new(
        mesh.stream_control(),
        config.chunk_timeout,
    ));
    fetch_blob(
        store,
        ChunkLayout::from_manifest(manifest),
        providers,
        source,
        config,
        metrics,
        progress,
    )
    .await
}

/// Fetches the blob `layout` describes from `providers` through `source`.
#[tracing::instrument(skip_all, fields(blob = %layout.blob))]
pub async fn fetch_blob(
    store: &BlobStore,
    layout: ChunkLayout,
    providers: impl Into<Providers>,
    source: Arc<dyn ChunkSource>,
    config: &FetchConfig,
    metrics: &FetchMetrics,
    progress: &FetchProgress,
) -> Result<FetchReport, FetchError> {
    let started = Instant::now();
    let Providers {
        initial: providers,
        lookup,
    } = providers.into();
    let blob = layout.blob;
    if store.contains(&blob) && store.get(&blob).is_ok() {
        debug!("blob already held");
        return Ok(FetchReport {
            blob,
            size: layout.size,
            fetched_bytes: 0,
            peers_used: Vec::new(),
            liars: Vec::new(),
            elapsed: started.elapsed(),
        });
    }
    let opened = {
        let (store, layout) = (store.clone(), layout.clone());
        tokio::task::spawn_blocking(move || PartialBlob::open(&store, layout))
            .await
            .map_err(joined)??
    };
    let held = opened.held().to_vec();
    let mut plan = FetchPlan::new(layout.clone(), &held, providers, config.plan);
    let resumed: u64 = (0..layout.chunk_count())
        .filter(|&i| held[i])
        .map(|i| u64::from(layout.chunk_len(u32::try_from(i).unwrap_or(u32::MAX))))
        .sum();
    progress.start(layout.size, resumed);
    info!(
        size = layout.size,
        chunks = layout.chunk_count(),
        resumed,
        peers = plan.live_peers(),
        "fetching"
    );

    // Disk writes and the whole-blob hash run on a blocking thread, off the
    // driver; chunks reach it only after the plan accepted them.
    let (to_writer, mut written) = mpsc::channel::<(u32, Vec<u8>)>(WRITE_QUEUE);
    let recycler = Arc::clone(&source);
    let writer = tokio::task::spawn_blocking(move || {
        let mut partial = opened;
        while let Some((index, bytes)) = written.blocking_recv() {
            partial.write_chunk(index, &bytes)?;
            recycler.recycle(bytes);
        }
        Ok::<_, PartialError>(partial)
    });
    let (tx, mut rx) = mpsc::channel(REPLY_QUEUE);
    let mut running: HashMap<RequestId, (PeerId, AbortHandle)> = HashMap::new();
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fetched = 0u64;
    // Provider lookups made while the fetch runs, one at a time.
    let mut rejoin = Rejoin::new(config.join, started);
    let (found_tx, mut found_rx) = mpsc::channel::<Vec<PeerId>>(1);
    let mut looking: Option<AbortHandle> = None;
    // Whether the plan is short of peers is a walk over the chunks: looked
    // at on ticks and when starved, not on every chunk.
    let mut ticked = true;
    let abort_all = |running: &mut HashMap<RequestId, (PeerId, AbortHandle)>| {
        for (_, (_, task)) in running.drain() {
            task.abort();
        }
    };

    let outcome = loop {
        let now = Instant::now();
        let starved = match plan.status() {
            PlanStatus::Done => break Ok(()),
            PlanStatus::NoProviders { missing } => {
                if lookup.is_none() || !rejoin.keep_waiting(now) {
                    break Err(missing);
                }
                true
            }
            PlanStatus::Running => {
                rejoin.fed();
                false
            }
        };
        if let Some(lookup) = &lookup
            && (starved || std::mem::take(&mut ticked))
            && rejoin.want_lookup(now, || starved || plan.short_of_peers())
        {
            metrics.provider_lookups.inc();
            debug!(
                lookup = rejoin.lookups(),
                starved, "looking for more providers"
            );
            let (find, found) = (lookup(), found_tx.clone());
            let task = tokio::spawn(async move {
                let _ = found.send(find.await).await;
            });
            looking = Some(task.abort_handle());
        }
        for req in plan.next_requests(Instant::now()) {
            let wanted = req
                .chunks
                .iter()
                .map(|&index| WantedChunk {
                    index,
                    len: layout.chunk_len(index),
                })
                .collect();
            debug!(peer = %req.peer, chunks = ?req.chunks, id = req.id, "asking");
            let sink = ReplySink::new(req.id, tx.clone());
            let work = source.fetch_chunks(req.peer, blob, wanted, sink.clone());
            let task = tokio::spawn(async move {
                let result = work.await;
                sink.end(result).await;
            });
            running.insert(req.id, (req.peer, task.abort_handle()));
        }
        progress.peers(plan.live_peers(), plan.peers_used().len());
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            Some(found) = found_rx.recv() => {
                rejoin.on_lookup_done();
                looking = None;
                for peer in found {
                    match plan.rediscover(peer) {
                        Rediscovered::Joined => {
                            metrics.peers_joined.inc();
                            info!(%peer, "a provider found while fetching joins the fetch");
                        }
                        Rediscovered::Refreshed => {
                            debug!(%peer, "a known peer is asked again");
                        }
                        Rediscovered::Unchanged | Rediscovered::Full => {}
                    }
                }
                continue;
            }
            _ = ticker.tick() => {
                ticked = true;
                continue;
            }
        };
        // The driver holds a sender, so the channel never closes under it.
        let Some(msg) = msg else { continue };
        match msg {
            DriverMsg::Reply(
                id,
                SourceReply::Chunk {
                    index,
                    bytes,
                    sha256,
                },
            ) => {
                match plan.on_chunk_digest(id, index, bytes.len(), &sha256) {
                    ChunkVerdict::Accept => {
                        let len = bytes.len() as u64;
                        if to_writer.send((index, bytes)).await.is_err() {
                            // The writer stopped on an error: joining it below says which.
                            break Ok(());
                        }
                        fetched += len;
                        rejoin.on_progress(Instant::now());
                        metrics.bytes_in.inc_by(len);
                        progress.advance(len);
                    }
                    ChunkVerdict::Duplicate | ChunkVerdict::Stale => source.recycle(bytes),
                    ChunkVerdict::Unexpected => {
                        metrics.chunk_failed(ChunkFailure::Stream);
                        if let Some((_, task)) = running.remove(&id) {
                            task.abort();
                        }
                        plan.on_request_end(id, RequestEnd::Failed);
                    }
                    ChunkVerdict::Lied { peer } => {
                        metrics.chunk_failed(ChunkFailure::HashMismatch);
                        warn!(%peer, chunk = index, "peer served a chunk that does not match the manifest; banned for this blob");
                        running.retain(|_, (p, task)| {
                            let keep = *p != peer;
                            if !keep {
                                task.abort();
                            }
                            keep
                        });
                    }
                }
            }
            DriverMsg::Reply(id, SourceReply::NotHeld { index }) => {
                metrics.chunk_failed(ChunkFailure::NotHeld);
                plan.on_not_held(id, index);
            }
            DriverMsg::End(id, result) => {
                let Some((peer, _)) = running.remove(&id) else {
                    continue;
                };
                match result {
                    Ok(()) => plan.on_request_end(id, RequestEnd::Finished),
                    Err(error @ SourceError::OpenTimeout { .. }) => {
                        metrics.chunk_failed(ChunkFailure::Stream);
                        debug!(%peer, %error, "stream did not open; asking again");
                        plan.on_request_end(id, RequestEnd::Failed);
                    }
                    Err(error @ SourceError::Unreachable { .. }) => {
                        metrics.chunk_failed(ChunkFailure::Unreachable);
                        warn!(%peer, %error, "peer unreachable; its chunks go elsewhere");
                        plan.on_peer_gone(&peer);
                        running.retain(|_, (p, task)| {
                            let keep = *p != peer;
                            if !keep {
                                task.abort();
                            }
                            keep
                        });
                    }
                    Err(error) => {
                        metrics.chunk_failed(ChunkFailure::Stream);
                        warn!(%peer, %error, "blob request failed; its chunks are asked again");
                        plan.on_request_end(id, RequestEnd::Failed);
                    }
                }
            }
        }
    };
    abort_all(&mut running);
    if let Some(task) = looking {
        task.abort();
    }
    let transferred = started.elapsed();
    drop(to_writer);
    // Verified chunks already queued land in the temp file either way (resume).
    let written = writer.await.map_err(joined);
    let drained = started.elapsed();
    progress.finish();
    let liars = plan.liars();
    match outcome {
        Err(missing) => {
            metrics.fetches_failed.inc();
            warn!(missing = missing.len(), liars = %fmt_liars(&liars), "no provider left for the blob");
            Err(FetchError::NoProviders {
                blob,
                missing,
                liars,
            })
        }
        Ok(()) => {
            let installed = match written {
                Ok(Ok(partial)) => tokio::task::spawn_blocking(move || partial.finish())
                    .await
                    .map_err(joined)
                    .and_then(|r| r),
                Ok(Err(e)) | Err(e) => Err(e),
            };
            if installed.is_err() {
                metrics.fetches_failed.inc();
            }
            installed?;
            let peers_used = plan.peers_used();
            metrics.fetches_completed.inc();
            metrics.peers_used.inc_by(peers_used.len() as u64);
            let elapsed = started.elapsed();
            info!(fetched, peers = peers_used.len(), liars = %fmt_liars(&liars), ?transferred, ?drained, ?elapsed, "blob fetched and verified");
            Ok(FetchReport {
                blob,
                size: layout.size,
                fetched_bytes: fetched,
                peers_used,
                liars,
                elapsed,
            })
        }
    }
}
