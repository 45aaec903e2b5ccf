//! Prometheus metrics of the runtime: per-skill requests, errors by code,
//! latency, worker restarts and worker memory.
//!
//! The hot path touches only handles resolved once per route
//! ([`SkillMetrics`]); label lookups happen on errors, restarts and scrapes.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Latency buckets: 50 µs doubling 16 times (to ~1.6 s, past the default deadline).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// Labels naming a skill.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkillLabels {
    /// Package name.
    pub package: String,
}

/// Labels of an error count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Package name.
    pub package: String,
    /// Stable error code.
    pub code: String,
}

/// Labels of a worker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// Package name.
    pub package: String,
    /// Skill version.
    pub version: String,
}

/// All runtime metrics and the registry that encodes them.
#[derive(Debug)]
pub struct RuntimeMetrics {
    registry: Mutex<Registry>,
    requests: Family<SkillLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<SkillLabels, Histogram, fn() -> Histogram>,
    restarts: Family<SkillLabels, Counter>,
    memory: Family<WorkerLabels, Gauge>,
}

/// Per-skill handles used on every call.
#[derive(Debug, Clone)]
pub struct SkillMetrics {
    requests: Counter,
    latency: Histogram,
}

impl SkillMetrics {
    /// Counts one finished call and its latency.
    pub fn observe(&self, elapsed: Duration) {
        self.requests.inc();
        self.latency.observe(elapsed.as_secs_f64());
    }
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeMetrics {
    /// Registers every metric under the `clawmesh` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("clawmesh");
        let requests = Family::<SkillLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<SkillLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let restarts = Family::<SkillLabels, Counter>::default();
        let memory = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "skill_requests",
            "Skill invocations finished, by package",
            requests.clone(),
        );
        registry.register(
            "skill_errors",
            "Skill invocations that failed, by package and error code",
            errors.clone(),
        );
        registry.register(
            "skill_latency_seconds",
            "Skill invocation latency seen by the node",
            latency.clone(),
        );
        registry.register(
            "worker_restarts",
            "Worker processes restarted after exiting",
            restarts.clone(),
        );
        registry.register(
            "worker_memory_bytes",
            "Memory of each worker's cgroup",
            memory.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            errors,
            latency,
            restarts,
            memory,
        }
    }

    /// Handles for one skill's hot path.
    pub fn skill(&self, package: &str) -> SkillMetrics {
        let labels = SkillLabels {
            package: package.to_string(),
        };
        SkillMetrics {
            requests: self.requests.get_or_create_owned(&labels),
            latency: self.latency.get_or_create_owned(&labels),
        }
    }

    /// Counts one failed call.
    pub fn error(&self, package: &str, code: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                package: package.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Counts one worker restart.
    pub fn restart(&self, package: &str) {
        self.restarts
            .get_or_create(&SkillLabels {
                package: package.to_string(),
            })
            .inc();
    }

    /// Sets (or with `None`, removes) a worker's memory figure.
    pub fn worker_memory(&self, package: &str, version: &str, bytes: Option<u64>) {
        let labels = WorkerLabels {
            package: package.to_string(),
            version: version.to_string(),
        };
        match bytes {
            Some(bytes) => {
                self.memory
                    .get_or_create(&labels)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            None => {
                self.memory.remove(&labels);
            }
        }
    }

    /// Lets another part of the node register its metrics in the same
    /// registry (prefix `clawmesh`), so `/metrics` exports them too.
    pub fn register_more(&self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(
            &mut text,
            &self.registry.lock().unwrap_or_else(PoisonError::into_inner),
        )?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_each_family_with_labels() {
        let metrics = RuntimeMetrics::new();
        metrics.skill("counter").observe(Duration::from_micros(120));
        metrics.error("counter", "deadline_exceeded");
        metrics.restart("counter");
        metrics.worker_memory("counter", "1.0.0", Some(4096));
        let text = metrics.encode().unwrap();
        for expected in [
            "clawmesh_skill_requests_total{package=\"counter\"} 1",
            "clawmesh_skill_errors_total{package=\"counter\",code=\"deadline_exceeded\"} 1",
            "clawmesh_skill_latency_seconds_count{package=\"counter\"} 1",
            "clawmesh_worker_restarts_total{package=\"counter\"} 1",
            "clawmesh_worker_memory_bytes{package=\"counter\",version=\"1.0.0\"} 4096",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        metrics.worker_memory("counter", "1.0.0", None);
        assert!(!metrics.encode().unwrap().contains("worker_memory_bytes{"));
    }
}
