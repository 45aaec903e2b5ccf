//! The fetch progress: an indicatif bar (bytes, rate, peers) drawn on stderr
//! only when it is a terminal, and a snapshot of the same figures that a
//! node streams to `clawmesh fetch` over its admin socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

const TEMPLATE: &str =
    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}";

/// A progress bar for one fetch; cheap to clone.
#[derive(Clone, Debug)]
pub struct FetchProgress {
    bar: ProgressBar,
    peers_live: Arc<AtomicUsize>,
    peers_used: Arc<AtomicUsize>,
    total: Arc<AtomicU64>,
}

/// Where a fetch stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    /// Bytes held so far (resumed ones included).
    pub bytes: u64,
    /// The blob's size (0 until the fetch started).
    pub total: u64,
    /// Peers that delivered chunks.
    pub peers_used: usize,
    /// Peers still asked.
    pub peers_live: usize,
}

impl FetchProgress {
    fn with_bar(bar: ProgressBar) -> Self {
        Self {
            bar,
            peers_live: Arc::default(),
            peers_used: Arc::default(),
            total: Arc::default(),
        }
    }

    /// A bar on stderr (hidden when stderr is not a terminal), labelled `what`.
    pub fn stderr(what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        // The template is a constant known to parse; fall back to the default style if not.
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_owned());
        Self::with_bar(bar)
    }

    /// A bar that draws nothing (tests, benchmarks, `--json`, a node's own
    /// fetches); its `snapshot` still counts.
    pub fn hidden() -> Self {
        Self::with_bar(ProgressBar::hidden())
    }

    pub(crate) fn start(&self, total: u64, already: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.bar.set_length(total);
        self.bar.set_position(already);
        self.bar.reset_eta();
    }

    pub(crate) fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    pub(crate) fn peers(&self, live: usize, used: usize) {
        let live_changed = self.peers_live.swap(live, Ordering::Relaxed) != live;
        let used_changed = self.peers_used.swap(used, Ordering::Relaxed) != used;
        let changed = live_changed || used_changed;
        if changed {
            self.show_peers(live, used);
        }
    }

    fn show_peers(&self, live: usize, used: usize) {
        self.bar
            .set_message(format!("peers {used} used / {live} live"));
    }

    /// Draws `snapshot` (a fetch running elsewhere, seen through the admin socket).
    pub fn show(&self, snapshot: ProgressSnapshot) {
        if self.bar.length() != Some(snapshot.total) {
            self.start(snapshot.total, snapshot.bytes);
        } else {
            self.bar.set_position(snapshot.bytes);
        }
        self.peers(snapshot.peers_live, snapshot.peers_used);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Bytes counted so far.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// The figures so far.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes: self.bar.position(),
            total: self.total.load(Ordering::Relaxed),
            peers_used: self.peers_used.load(Ordering::Relaxed),
            peers_live: self.peers_live.load(Ordering::Relaxed),
        }
    }
}
