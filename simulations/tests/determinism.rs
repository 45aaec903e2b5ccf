//! One seed reproduces a run byte for byte; another seed gives another run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clawmesh_simulations::{SimConfig, render_svg, run, scenario_by_name};

fn report_json(name: &str, seed: u64) -> String {
    let scenario = scenario_by_name(name).unwrap();
    run(SimConfig::new(scenario, seed)).unwrap().to_json()
}

#[test]
fn same_seed_gives_byte_identical_reports() {
    for name in ["flapping-link", "churn-rollout"] {
        let first = report_json(name, 11);
        let second = report_json(name, 11);
        assert_eq!(first, second, "{name}: two runs with seed 11 differ");
    }
}

#[test]
fn same_seed_gives_identical_plots() {
    let scenario = scenario_by_name("split-brain").unwrap();
    let a = run(SimConfig::new(scenario.clone(), 5)).unwrap();
    let b = run(SimConfig::new(scenario, 5)).unwrap();
    assert_eq!(render_svg(&a), render_svg(&b));
}

#[test]
fn different_seeds_give_different_runs() {
    let a = report_json("flapping-link", 1);
    let b = report_json("flapping-link", 2);
    assert_ne!(a, b);
}
