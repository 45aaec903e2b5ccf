//! How a node gets blobs it lacks: asks the peers whose status says they
//! hold the blob, over the verified chunk protocol, and serves its own
//! blobs to peers in turn.

use std::sync::Arc;

use clawmesh_crdt::manifest::SignedManifest;
use libp2p::PeerId;

use super::release::{BlobFetcher, FetchFuture};
use crate::blob_store::BlobStore;
use crate::fetch::{FetchConfig, FetchMetrics, FetchProgress, ServeConfig, fetch, spawn_blob_server};
use crate::mesh::{DriverHandle, MeshHandle};

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
    pub fn start(mesh: MeshHandle, driver: DriverHandle, store: BlobStore) -> anyhow::Result<Arc<Self>> {
        let metrics = FetchMetrics::default();
        spawn_blob_server(&mesh, Arc::new(store.clone()), ServeConfig::default(), metrics.clone())
            .map_err(|e| anyhow::anyhow!("serving blobs: {e:?}"))?;
        Ok(Arc::new(Self {
            mesh,
            driver,
            store,
            config: FetchConfig::default(),
            metrics,
        }))
    }

    /// Peers whose status lists the blob among the ones they hold.
    async fn providers(&self, sha256: [u8; 32]) -> Vec<PeerId> {
        let me = self.mesh.local_peer_id();
        self.driver
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
}

impl BlobFetcher for MeshFetcher {
    fn fetch<'a>(&'a self, manifest: &'a SignedManifest) -> FetchFuture<'a> {
        Box::pin(async move {
            let providers = self.providers(manifest.manifest.sha256).await;
            if providers.is_empty() {
                return Err("no peer reports holding this blob yet".to_string());
            }
            let report = fetch(
                &self.mesh,
                &self.store,
                &manifest.manifest,
                providers,
                &self.config,
                &self.metrics,
                &FetchProgress::hidden(),
            )
            .await
            .map_err(|e| e.to_string())?;
            tracing::info!(blob = %report.blob, peers = report.peers_used.len(), liars = report.liars.len(), "blob fetched");
            Ok(())
        })
    }
}
