//! The figures of one `bench invoke` run, for people and for scripts, and
//! the goals checked against them.

use std::time::Duration;

use serde::Serialize;

use super::fd_limit::FdLimit;
use super::load::LoadReport;
use crate::cli::ui::Ui;

/// Goal: the skill path serves at least this share of plain hyper's rate.
pub const GOAL_MIN_RATIO: f64 = 0.5;
/// Goal: the skill path's p99 latency stays below this.
pub const GOAL_MAX_P99: Duration = Duration::from_millis(5);

/// The figures of one loaded endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointFigures {
    /// What was loaded, for people.
    pub label: String,
    /// The URL loaded.
    pub url: String,
    /// Successful requests in the measured window.
    pub requests: u64,
    /// Successful requests per second.
    pub requests_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 90th percentile latency, µs.
    pub p90_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Largest latency, µs.
    pub max_us: f64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Failed requests in the measured window.
    pub errors: u64,
    /// Failed requests during the warmup.
    pub warmup_errors: u64,
    /// The first few failure messages.
    pub error_samples: Vec<String>,
    /// Connections opened.
    pub connects: u64,
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl EndpointFigures {
    /// Figures of `report`, loaded at `url`.
    pub fn new(label: &str, url: String, report: &LoadReport) -> Self {
        let h = &report.latencies;
        Self {
            label: label.into(),
            url,
            requests: report.ok,
            requests_per_sec: report.requests_per_sec(),
            p50_us: micros(h.percentile(50.0)),
            p90_us: micros(h.percentile(90.0)),
            p99_us: micros(h.percentile(99.0)),
            max_us: micros(h.max()),
            mean_us: micros(h.mean()),
            errors: report.errors,
            warmup_errors: report.warmup_errors,
            error_samples: report.error_samples.clone(),
            connects: report.connects,
        }
    }
}

/// The goals, checked.
#[derive(Debug, Clone, Serialize)]
pub struct GoalCheck {
    /// invoke req/s ÷ hello req/s.
    pub ratio: f64,
    /// `ratio >= GOAL_MIN_RATIO`.
    pub ratio_met: bool,
    /// `invoke p99 < GOAL_MAX_P99`.
    pub p99_met: bool,
    /// No failed request on either endpoint, warmup included.
    pub zero_errors: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchInvokeReport {
    /// Concurrent connections per endpoint.
    pub connections: usize,
    /// Warmup per endpoint, s.
    pub warmup_secs: f64,
    /// Measured window per endpoint, s.
    pub duration_secs: f64,
    /// CPUs this process may use (shared by loader, servers and workers).
    pub cpus: usize,
    /// The open-file limit after raising it, when it could be read.
    pub fd_limit: Option<FdLimit>,
    /// `throwaway` or the data dir of the node measured.
    pub node: String,
    /// The skill endpoint.
    pub invoke: EndpointFigures,
    /// The plain hyper baseline.
    pub hello: EndpointFigures,
    /// The goals.
    pub goals: GoalCheck,
}

impl BenchInvokeReport {
    /// Checks the goals on `invoke` against `hello`.
    pub fn check(invoke: &EndpointFigures, hello: &EndpointFigures) -> GoalCheck {
        let ratio = if hello.requests_per_sec > 0.0 {
            invoke.requests_per_sec / hello.requests_per_sec
        } else {
            0.0
        };
        GoalCheck {
            ratio,
            ratio_met: ratio >= GOAL_MIN_RATIO,
            p99_met: invoke.requests > 0 && invoke.p99_us < micros(GOAL_MAX_P99),
            zero_errors: [invoke, hello]
                .iter()
                .all(|e| e.errors == 0 && e.warmup_errors == 0),
        }
    }

    /// Whether a request failed in a measured window.
    pub fn had_errors(&self) -> bool {
        self.invoke.errors > 0 || self.hello.errors > 0
    }

    /// The human-readable table.
    pub fn render(&self, ui: &Ui) -> String {
        let mut out = String::new();
        out.push_str(&ui.step(&format!(
            "clawmesh bench invoke: {} connections, {} measured after {} warmup, {} CPU(s) shared by loader, servers and skill worker",
            self.connections,
            human_secs(self.duration_secs),
            human_secs(self.warmup_secs),
            self.cpus
        )));
        out.push('\n');
        out.push_str(&format!(
            "{:<22} {:>11} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
            "", "req/s", "p50", "p90", "p99", "max", "errors"
        ));
        for e in [&self.invoke, &self.hello] {
            out.push_str(&format!(
                "{:<22} {:>11.0} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
                e.label,
                e.requests_per_sec,
                human_micros(e.p50_us),
                human_micros(e.p90_us),
                human_micros(e.p99_us),
                human_micros(e.max_us),
                e.errors
            ));
        }
        let verdict = |met: bool| if met { ui.ok("met") } else { ui.bad("missed") };
        out.push_str(&format!(
            "invoke/hello {:.2}× (goal ≥ {GOAL_MIN_RATIO}×: {}), invoke p99 {} (goal < {} ms: {}), errors {} (goal 0: {})\n",
            self.goals.ratio,
            verdict(self.goals.ratio_met),
            human_micros(self.invoke.p99_us),
            GOAL_MAX_P99.as_millis(),
            verdict(self.goals.p99_met),
            self.invoke.errors + self.invoke.warmup_errors + self.hello.errors + self.hello.warmup_errors,
            verdict(self.goals.zero_errors),
        ));
        if let Some(fd) = self.fd_limit
            && !fd.is_enough()
        {
            out.push_str(&ui.bad(&format!(
                "open-file limit {} is below the {} this run needs (hard limit {}): connection errors are expected\n",
                fd.soft, fd.needed, fd.hard
            )));
        }
        for e in [&self.invoke, &self.hello] {
            if e.warmup_errors > 0 {
                out.push_str(&format!(
                    "{}: {} error(s) during the warmup\n",
                    e.label, e.warmup_errors
                ));
            }
            for sample in &e.error_samples {
                out.push_str(&format!("  {}: {sample}\n", e.label));
            }
        }
        out
    }
}

fn human_secs(secs: f64) -> String {
    format!("{secs} s")
}

/// `812 µs`, `1.23 ms`, `1.20 s`.
pub fn human_micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(rate: f64, p99_us: f64, errors: u64) -> EndpointFigures {
        EndpointFigures {
            label: "x".into(),
            url: "http://127.0.0.1:1/".into(),
            requests: 10,
            requests_per_sec: rate,
            p50_us: 1.0,
            p90_us: 1.0,
            p99_us,
            max_us: p99_us,
            mean_us: 1.0,
            errors,
            warmup_errors: 0,
            error_samples: Vec::new(),
            connects: 1,
        }
    }

    #[test]
    fn goals_are_checked_against_the_baseline() {
        let met = BenchInvokeReport::check(&figures(600.0, 4_000.0, 0), &figures(1000.0, 100.0, 0));
        assert!(met.ratio_met && met.p99_met && met.zero_errors);
        assert!((met.ratio - 0.6).abs() < 1e-9);
        let missed =
            BenchInvokeReport::check(&figures(400.0, 5_000.0, 1), &figures(1000.0, 100.0, 0));
        assert!(!missed.ratio_met && !missed.p99_met && !missed.zero_errors);
        let no_baseline = BenchInvokeReport::check(&figures(400.0, 1.0, 0), &figures(0.0, 0.0, 0));
        assert_eq!(no_baseline.ratio, 0.0);
    }

    #[test]
    fn latencies_read_well() {
        assert_eq!(human_micros(812.4), "812 µs");
        assert_eq!(human_micros(1_234.0), "1.23 ms");
        assert_eq!(human_micros(1_200_000.0), "1.20 s");
    }
}
