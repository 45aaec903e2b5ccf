//! Prometheus counters for blob fetch and serving.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why a chunk was not accepted from a peer (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkFailure {
    /// The bytes did not hash to the manifest's chunk hash.
    HashMismatch,
    /// The peer said it does not hold the chunk.
    NotHeld,
    /// The stream failed, timed out or broke the protocol.
    Stream,
    /// The peer could not be reached.
    Unreachable,
}

impl ChunkFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HashMismatch => "hash_mismatch",
            Self::NotHeld => "not_held",
            Self::Stream => "stream",
            Self::Unreachable => "unreachable",
        }
    }
}

/// The `reason` label of `chunk_failures`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    /// See `ChunkFailure`.
    pub reason: String,
}

/// Fetch and serve counters; clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct FetchMetrics {
    /// Verified chunk bytes received and kept.
    pub bytes_in: Counter,
    /// Chunk bytes served to peers.
    pub bytes_out: Counter,
    /// Chunks (or requests) that failed, by reason.
    pub chunk_failures: Family<FailureLabels, Counter>,
    /// Peers that delivered at least one chunk of a completed fetch, summed over fetches.
    pub peers_used: Counter,
    /// Blobs fetched and installed.
    pub fetches_completed: Counter,
    /// Fetches that ended without the blob.
    pub fetches_failed: Counter,
    /// Inbound blob streams refused because too many were open.
    pub streams_refused: Counter,
    /// Provider lookups made by fetches already running.
    pub provider_lookups: Counter,
    /// Peers that joined a running fetch (found by those lookups).
    pub peers_joined: Counter,
}

impl FetchMetrics {
    /// Counts one failure.
    pub fn chunk_failed(&self, reason: ChunkFailure) {
        self.chunk_failures
            .get_or_create(&FailureLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Failures counted so far for `reason`.
    pub fn failures(&self, reason: ChunkFailure) -> u64 {
        self.chunk_failures
            .get_or_create(&FailureLabels {
                reason: reason.as_str().to_owned(),
            })
            .get()
    }

    /// Registers every metric under the `clawmesh_fetch` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("clawmesh_fetch");
        r.register(
            "bytes_in",
            "Verified blob chunk bytes received",
            self.bytes_in.clone(),
        );
        r.register(
            "bytes_out",
            "Blob chunk bytes served to peers",
            self.bytes_out.clone(),
        );
        r.register(
            "chunk_failures",
            "Chunks not accepted from a peer, by reason",
            self.chunk_failures.clone(),
        );
        r.register(
            "peers_used",
            "Peers that delivered chunks of completed fetches",
            self.peers_used.clone(),
        );
        r.register(
            "fetches_completed",
            "Blobs fetched, verified and stored",
            self.fetches_completed.clone(),
        );
        r.register(
            "fetches_failed",
            "Fetches that ended without the blob",
            self.fetches_failed.clone(),
        );
        r.register(
            "streams_refused",
            "Inbound blob streams refused over the limit",
            self.streams_refused.clone(),
        );
        r.register(
            "provider_lookups",
            "Provider lookups made by running fetches",
            self.provider_lookups.clone(),
        );
        r.register(
            "peers_joined",
            "Peers found while a fetch ran that joined it",
            self.peers_joined.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_are_exported() {
        let m = FetchMetrics::default();
        m.bytes_in.inc_by(5);
        m.chunk_failed(ChunkFailure::HashMismatch);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("clawmesh_fetch_bytes_in_total 5"), "{text}");
        assert!(
            text.contains("clawmesh_fetch_chunk_failures_total{reason=\"hash_mismatch\"} 1"),
            "{text}"
        );
        assert_eq!(m.failures(ChunkFailure::HashMismatch), 1);
    }
}
