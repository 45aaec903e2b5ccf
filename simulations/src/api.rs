//! The entry points the `clawmesh sim` command calls: one run, a sweep over
//! seeds, built-in scenarios by name.

use std::ops::Range;

use crate::config::{SimConfig, SimError};
use crate::engine::simulate_observed;
use crate::mesh_peer::{MeshPeer, MeshSetup};
use crate::report::{FailingSeed, SimReport, SweepReport};

/// Runs `config` over the crdt peer core.
pub fn run(config: SimConfig) -> Result<SimReport, SimError> {
    run_observed(config, &mut |_, _| {})
}

/// [`run`], calling `observe(simulated_ms, events_so_far)` at each whole
/// simulated second and at the end (see [`crate::engine::simulate_observed`]).
pub fn run_observed(
    config: SimConfig,
    observe: &mut dyn FnMut(u64, u64),
) -> Result<SimReport, SimError> {
    let setup = MeshSetup::new(config.seed, config.scenario.work_ms).map_err(SimError::Setup)?;
    simulate_observed::<MeshPeer>(&config, &setup, observe)
}

/// Runs `config` once per seed in `seeds` (the config's own seed is
/// ignored) and lists the seeds that failed.
pub fn sweep(config: SimConfig, seeds: Range<u64>) -> SweepReport {
    let mut report = SweepReport {
        scenario: config.scenario.name.clone(),
        runs: 0,
        failing: Vec::new(),
        errors: Vec::new(),
        convergence_ms: Vec::new(),
    };
    for seed in seeds {
        report.runs += 1;
        let run_config = SimConfig {
            seed,
            ..config.clone()
        };
        match run(run_config) {
            Ok(run) => {
                if let Some(ms) = run.convergence_ms {
                    report.convergence_ms.push(ms);
                }
                if let Some(first) = run.violations.into_iter().next() {
                    report.failing.push(FailingSeed { seed, first });
                }
            }
            Err(error) => report.errors.push((seed, error.to_string())),
        }
    }
    report.convergence_ms.sort_unstable();
    report
}
