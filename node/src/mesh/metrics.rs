//! Prometheus counters and gauges for the mesh.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::providers::ProviderRefusal;

/// The `reason` label of `provider_records_refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `ProviderRefusal::as_str`.
    pub reason: String,
}

/// The mesh's metrics; clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct MeshMetrics {
    pub(crate) peers_connected: Gauge,
    pub(crate) sync_frames_in: Counter,
    pub(crate) sync_frames_out: Counter,
    pub(crate) sync_bytes_in: Counter,
    pub(crate) sync_bytes_out: Counter,
    pub(crate) sync_frames_oversize: Counter,
    pub(crate) sync_frames_dropped: Counter,
    pub(crate) heads_in: Counter,
    pub(crate) heads_out: Counter,
    pub(crate) events_dropped: Counter,
    pub(crate) provider_lookups: Counter,
    pub(crate) provider_lookup_hits: Counter,
    pub(crate) providers_found: Counter,
    pub(crate) provider_records: Gauge,
    pub(crate) provider_records_stored: Counter,
    pub(crate) provider_records_refused: Family<RefusalLabels, Counter>,
    pub(crate) blobs_provided: Gauge,
}

/// A point-in-time copy of the mesh metrics, for status output and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshMetricsSnapshot {
    /// Peers with at least one established connection.
    pub peers_connected: i64,
    /// Sync frames received.
    pub sync_frames_in: u64,
    /// Sync frames written to a peer's stream.
    pub sync_frames_out: u64,
    /// Sync frame payload bytes received.
    pub sync_bytes_in: u64,
    /// Sync frame payload bytes sent.
    pub sync_bytes_out: u64,
    /// Inbound sync streams closed because a frame announced more than `max_frame` bytes.
    pub sync_frames_oversize: u64,
    /// Outbound sync frames dropped: queue full, or the stream could not be opened or broke.
    pub sync_frames_dropped: u64,
    /// Heads announcements received over gossipsub.
    pub heads_in: u64,
    /// Heads announcements published over gossipsub.
    pub heads_out: u64,
    /// Events dropped because the consumer's queue was full.
    pub events_dropped: u64,
    /// Provider lookups run (`get_providers`).
    pub provider_lookups: u64,
    /// Provider lookups that found at least one provider.
    pub provider_lookup_hits: u64,
    /// Providers returned by lookups, in all.
    pub providers_found: u64,
    /// Remote provider records held in the DHT store.
    pub provider_records: i64,
    /// Remote provider records accepted (new, not refreshes).
    pub provider_records_stored: u64,
    /// Remote provider records refused, every reason.
    pub provider_records_refused: u64,
    /// Blobs this node announces as their provider.
    pub blobs_provided: i64,
}

impl MeshMetrics {
    /// Registers every metric under the `clawmesh_mesh` prefix.
    pub fn register(&self, registry: &mut Registry) {
        self.register_metrics(registry.sub_registry_with_prefix("clawmesh_mesh"));
    }

    /// Registers every metric under `mesh` in a registry that already has
    /// the `clawmesh` prefix (the node's `/metrics`): `clawmesh_mesh_*` too.
    pub fn register_under_clawmesh(&self, registry: &mut Registry) {
        self.register_metrics(registry.sub_registry_with_prefix("mesh"));
    }

    /// Counts a remote provider record refused for `reason`.
    pub(crate) fn provider_refused(&self, reason: ProviderRefusal) {
        self.provider_records_refused
            .get_or_create(&RefusalLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    fn register_metrics(&self, r: &mut Registry) {
        r.register(
            "peers_connected",
            "Peers with at least one established connection",
            self.peers_connected.clone(),
        );
        r.register(
            "sync_frames_in",
            "Sync frames received",
            self.sync_frames_in.clone(),
        );
        r.register(
            "sync_frames_out",
            "Sync frames sent",
            self.sync_frames_out.clone(),
        );
        r.register(
            "sync_bytes_in",
            "Sync frame payload bytes received",
            self.sync_bytes_in.clone(),
        );
        r.register(
            "sync_bytes_out",
            "Sync frame payload bytes sent",
            self.sync_bytes_out.clone(),
        );
        r.register(
            "sync_frames_oversize",
            "Inbound sync streams closed for announcing a frame above the limit",
            self.sync_frames_oversize.clone(),
        );
        r.register(
            "sync_frames_dropped",
            "Outbound sync frames dropped (queue full, stream failed)",
            self.sync_frames_dropped.clone(),
        );
        r.register(
            "heads_in",
            "Heads announcements received",
            self.heads_in.clone(),
        );
        r.register(
            "heads_out",
            "Heads announcements published",
            self.heads_out.clone(),
        );
        r.register(
            "events_dropped",
            "Mesh events dropped because the consumer lagged",
            self.events_dropped.clone(),
        );
        r.register(
            "provider_lookups",
            "DHT provider lookups run for blobs",
            self.provider_lookups.clone(),
        );
        r.register(
            "provider_lookup_hits",
            "DHT provider lookups that found at least one provider",
            self.provider_lookup_hits.clone(),
        );
        r.register(
            "providers_found",
            "Providers returned by DHT lookups",
            self.providers_found.clone(),
        );
        r.register(
            "provider_records",
            "Remote provider records held in the DHT store",
            self.provider_records.clone(),
        );
        r.register(
            "provider_records_stored",
            "Remote provider records accepted",
            self.provider_records_stored.clone(),
        );
        r.register(
            "provider_records_refused",
            "Remote provider records refused, by reason",
            self.provider_records_refused.clone(),
        );
        r.register(
            "blobs_provided",
            "Blobs this node announces on the DHT",
            self.blobs_provided.clone(),
        );
    }

    /// Current values.
    pub fn snapshot(&self) -> MeshMetricsSnapshot {
        MeshMetricsSnapshot {
            peers_connected: self.peers_connected.get(),
            sync_frames_in: self.sync_frames_in.get(),
            sync_frames_out: self.sync_frames_out.get(),
            sync_bytes_in: self.sync_bytes_in.get(),
            sync_bytes_out: self.sync_bytes_out.get(),
            sync_frames_oversize: self.sync_frames_oversize.get(),
            sync_frames_dropped: self.sync_frames_dropped.get(),
            heads_in: self.heads_in.get(),
            heads_out: self.heads_out.get(),
            events_dropped: self.events_dropped.get(),
            provider_lookups: self.provider_lookups.get(),
            provider_lookup_hits: self.provider_lookup_hits.get(),
            providers_found: self.providers_found.get(),
            provider_records: self.provider_records.get(),
            provider_records_stored: self.provider_records_stored.get(),
            provider_records_refused: [
                ProviderRefusal::NotABlobKey { len: 0 },
                ProviderRefusal::OwnId,
                ProviderRefusal::Expired,
                ProviderRefusal::KeyFull,
                ProviderRefusal::ProviderFull,
                ProviderRefusal::StoreFull,
            ]
            .into_iter()
            .map(|reason| {
                self.provider_records_refused
                    .get_or_create(&RefusalLabels {
                        reason: reason.as_str().to_owned(),
                    })
                    .get()
            })
            .sum(),
            blobs_provided: self.blobs_provided.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn registered_metrics_are_exported_with_prefix() {
        let metrics = MeshMetrics::default();
        metrics.sync_frames_oversize.inc();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("clawmesh_mesh_sync_frames_oversize_total 1"),
            "{text}"
        );
        assert_eq!(metrics.snapshot().sync_frames_oversize, 1);
    }

    #[test]
    fn provider_refusals_are_labelled_and_summed() {
        let metrics = MeshMetrics::default();
        metrics.provider_refused(ProviderRefusal::KeyFull);
        metrics.provider_refused(ProviderRefusal::KeyFull);
        metrics.provider_refused(ProviderRefusal::NotABlobKey { len: 3 });
        let mut registry = Registry::with_prefix("clawmesh");
        metrics.register_under_clawmesh(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"clawmesh_mesh_provider_records_refused_total{reason="key_full"} 2"#),
            "{text}"
        );
        assert_eq!(metrics.snapshot().provider_records_refused, 3);
    }
}
