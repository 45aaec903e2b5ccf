//! The seed sweep: 204 runs across the scenarios (34 seeds each, 5-9 nodes)
//! with zero invariant violations. Failing seeds are printed so each can be
//! rerun alone (`clawmesh sim --scenario NAME --seed S`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clawmesh_simulations::{SimConfig, scenario_by_name, sweep};

const SEEDS_PER_SCENARIO: u64 = 34;

fn sweep_clean(name: &str, nodes: usize) {
    let config = SimConfig::new(scenario_by_name(name).unwrap(), 0).with_nodes(nodes);
    let report = sweep(config, 1000..1000 + SEEDS_PER_SCENARIO);
    assert_eq!(report.runs, SEEDS_PER_SCENARIO);
    assert!(report.passed(), "{}", report.to_table());
    assert_eq!(
        report.convergence_ms.len() as u64,
        SEEDS_PER_SCENARIO,
        "{}",
        report.to_table()
    );
}

#[test]
fn sweep_steady() {
    sweep_clean("steady", 5);
}

#[test]
fn sweep_split_brain() {
    sweep_clean("split-brain", 6);
}

#[test]
fn sweep_rolling_partition() {
    sweep_clean("rolling-partition", 9);
}

#[test]
fn sweep_flapping_link() {
    sweep_clean("flapping-link", 5);
}

#[test]
fn sweep_churn_rollout() {
    sweep_clean("churn-rollout", 8);
}

#[test]
fn sweep_quarantine() {
    sweep_clean("quarantine", 6);
}
