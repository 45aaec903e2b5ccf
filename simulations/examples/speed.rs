//! Simulated time over wall time at 100 and 1000 nodes (the "steady"
//! scenario, one seed), for docs/SIMULATION.md:
//! `cargo run --release -p clawmesh-simulations --example speed [NODES...]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use clawmesh_simulations::{SimConfig, run, scenario_by_name};

fn main() -> anyhow::Result<()> {
    let counts: Vec<usize> = match std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<Vec<_>, _>>()?
    {
        counts if !counts.is_empty() => counts,
        _ => vec![100, 1000],
    };
    println!(
        "{:>6} {:>12} {:>10} {:>10} {:>12} {:>14}",
        "nodes", "simulated s", "wall s", "ratio", "events", "convergence ms"
    );
    for nodes in counts {
        let config = SimConfig::new(scenario_by_name("steady")?, 1).with_nodes(nodes);
        let simulated_ms = config.scenario.duration_ms;
        let started = Instant::now();
        let report = run(config)?;
        let wall = started.elapsed().as_secs_f64();
        let simulated = simulated_ms as f64 / 1000.0;
        let convergence = report
            .convergence_ms
            .map_or("-".to_string(), |ms| ms.to_string());
        println!(
            "{nodes:>6} {simulated:>12.1} {wall:>10.2} {:>9.1}x {:>12} {convergence:>14}{}",
            simulated / wall,
            report.events,
            if report.passed() {
                ""
            } else {
                "  (VIOLATIONS)"
            }
        );
    }
    Ok(())
}
