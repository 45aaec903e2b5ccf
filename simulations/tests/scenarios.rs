//! Each built-in scenario keeps its invariants and ends where it should; the
//! checker's self-test scenario is caught.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clawmesh_simulations::scenario::BUILT_IN;
use clawmesh_simulations::{SimConfig, SimReport, run, scenario_by_name};

fn run_seed(name: &str, seed: u64, nodes: Option<usize>) -> SimReport {
    let mut config = SimConfig::new(scenario_by_name(name).unwrap(), seed);
    if let Some(nodes) = nodes {
        config = config.with_nodes(nodes);
    }
    run(config).unwrap()
}

fn assert_clean(report: &SimReport) {
    assert!(report.passed(), "{}", report.to_table());
    assert!(report.converged, "{}", report.to_table());
    assert!(
        report.invariants.iter().all(|i| i.checks > 0),
        "an invariant was never checked: {:?}",
        report.invariants
    );
}

fn target(report: &SimReport, package: &str) -> Option<String> {
    report
        .final_targets
        .iter()
        .find(|(p, _)| p == package)
        .and_then(|(_, v)| v.clone())
}

#[test]
fn every_scenario_but_the_self_test_passes_for_a_few_seeds() {
    for (name, _) in BUILT_IN.iter().filter(|(n, _)| *n != "never-heals") {
        for seed in 1..=2 {
            let report = run_seed(name, seed, None);
            assert_clean(&report);
        }
    }
}

#[test]
fn split_brain_settles_on_the_higher_release() {
    let report = run_seed("split-brain", 3, None);
    assert_clean(&report);
    assert_eq!(
        target(&report, "com.example.echo").as_deref(),
        Some("1.2.0")
    );
    assert_eq!(report.intents_submitted, 3);
}

#[test]
fn a_version_failing_on_half_the_nodes_is_quarantined_and_forgery_ignored() {
    let report = run_seed("quarantine", 4, None);
    assert_clean(&report);
    // 1.1.0 failed on 4 of 8 nodes (threshold 3): back to 1.0.0; the forged
    // 9.9.9 was never a target (targets_valid would have failed).
    assert_eq!(
        target(&report, "com.example.echo").as_deref(),
        Some("1.0.0")
    );
    // The forged intent is not counted as a valid one.
    assert_eq!(report.intents_submitted, 2);
}

#[test]
fn churn_with_and_without_disks_loses_no_intent() {
    let report = run_seed("churn-rollout", 5, None);
    assert_clean(&report);
    assert_eq!(report.live_nodes, 10);
    assert_eq!(
        target(&report, "com.example.echo").as_deref(),
        Some("1.2.0")
    );
    assert!(report.total.bytes_persisted > 0);
}

#[test]
fn scenarios_scale_to_other_node_counts() {
    let report = run_seed("rolling-partition", 6, Some(20));
    assert_clean(&report);
    assert_eq!(report.nodes, 20);
}

#[test]
fn a_partition_that_never_heals_is_reported_with_its_seed() {
    for seed in [7, 8] {
        let report = run_seed("never-heals", seed, None);
        assert!(
            !report.passed(),
            "the checker missed a split mesh:\n{}",
            report.to_table()
        );
        assert!(!report.converged);
        assert_eq!(report.convergence_ms, None);
        let violation = report
            .violations
            .iter()
            .find(|v| v.invariant == "converged_targets")
            .expect("a converged_targets violation");
        assert_eq!(violation.seed, seed);
        assert!(!violation.trace.is_empty());
        assert!(report.to_table().contains(&format!("seed {seed}")));
    }
}
