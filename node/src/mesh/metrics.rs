//! Prometheus counters and gauges for the mesh.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
}

impl MeshMetrics {
    /// Registers every metric under the `clawmesh_mesh` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("clawmesh_mesh");
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
}
