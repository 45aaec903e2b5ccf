//! The fetch progress bar: bytes, rate and peers, drawn on stderr only when
//! it is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str =
    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}";

/// A progress bar for one fetch; cheap to clone.
#[derive(Clone, Debug)]
pub struct FetchProgress {
    bar: ProgressBar,
}

impl FetchProgress {
    /// A bar on stderr (hidden when stderr is not a terminal), labelled `what`.
    pub fn stderr(what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        // The template is a constant known to parse; fall back to the default style if not.
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_owned());
        Self { bar }
    }

    /// A bar that draws nothing (tests, benchmarks, `--json`).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    pub(crate) fn start(&self, total: u64, already: u64) {
        self.bar.set_length(total);
        self.bar.set_position(already);
        self.bar.reset_eta();
    }

    pub(crate) fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    pub(crate) fn peers(&self, live: usize, used: usize) {
        self.bar
            .set_message(format!("peers {used} used / {live} live"));
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Bytes counted so far.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }
}
