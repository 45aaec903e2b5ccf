//! Closed-loop load on the counter of every node: each client adds 1, waits
//! for the answer, and adds again. What it counts is what the demo checks
//! the counter against afterwards: acknowledged adds per node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;

use super::http_client;

/// Latency samples kept for the report (the first ones; later requests are
/// still counted).
pub const MAX_SAMPLES: usize = 50_000;
/// Distinct error messages kept.
pub const MAX_ERROR_MESSAGES: usize = 5;

/// One request, for the latency plot.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Node index (0-based).
    pub node: usize,
    /// When it started, ms since the load started.
    pub at_ms: f64,
    /// How long it took, ms.
    pub latency_ms: f64,
    /// Whether it was acknowledged (200).
    pub ok: bool,
}

/// What the load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    /// Acknowledged adds per node.
    pub acked: Vec<u64>,
    /// Failed requests per node.
    pub errors: Vec<u64>,
    /// The first requests.
    pub samples: Vec<Sample>,
    /// A few error messages.
    pub error_messages: Vec<String>,
}

/// Running load; `stop` ends it and returns the counts.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    result: Arc<Mutex<LoadResult>>,
    started: Instant,
}

impl Load {
    /// `clients_per_node` closed-loop clients against each URL in `urls`
    /// (one per node).
    pub fn start(urls: &[String], clients_per_node: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(LoadResult {
            acked: vec![0; urls.len()],
            errors: vec![0; urls.len()],
            ..LoadResult::default()
        }));
        let started = Instant::now();
        let mut threads = Vec::new();
        for (node, url) in urls.iter().enumerate() {
            for _ in 0..clients_per_node {
                let (stop, result, url) = (stop.clone(), result.clone(), url.clone());
                threads.push(std::thread::spawn(move || {
                    client(node, &url, &stop, &result, started)
                }));
            }
        }
        Self {
            stop,
            threads,
            result,
            started,
        }
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Acknowledged adds so far, per node.
    pub fn acked_so_far(&self) -> Vec<u64> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acked
            .clone()
    }

    /// Stops every client and returns what they saw.
    pub fn stop(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn client(node: usize, url: &str, stop: &AtomicBool, result: &Mutex<LoadResult>, started: Instant) {
    while !stop.load(Ordering::SeqCst) {
        let at = started.elapsed();
        let call = http_client::post(url, b"1");
        let latency = started.elapsed() - at;
        let failure = match &call {
            Ok((200, _)) => None,
            Ok((status, body)) => Some(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(body).trim()
            )),
            Err(e) => Some(e.to_string()),
        };
        let mut r = result.lock().unwrap_or_else(PoisonError::into_inner);
        match &failure {
            None => r.acked[node] += 1,
            Some(message) => {
                r.errors[node] += 1;
                if r.error_messages.len() < MAX_ERROR_MESSAGES
                    && !r.error_messages.contains(message)
                {
                    r.error_messages.push(message.clone());
                }
            }
        }
        if r.samples.len() < MAX_SAMPLES {
            r.samples.push(Sample {
                node,
                at_ms: at.as_secs_f64() * 1e3,
                latency_ms: latency.as_secs_f64() * 1e3,
                ok: failure.is_none(),
            });
        }
    }
}
