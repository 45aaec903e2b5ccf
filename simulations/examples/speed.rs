//! Simulated time over wall time at 100 and 1000 nodes (the "steady"
//! scenario, one seed), for docs/SIMULATION.md:
//! `cargo run --release -p clawmesh-simulations --example speed [--split] [NODES...]`.
//!
//! `--split` also prints, per node count, the events and wall time spent
//! in the simulated seconds where the mesh was converging (some sample of
//! that second saw more than one head-set or target table) and in those
//! where it was converged (an idle mesh), and then every second's figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use clawmesh_simulations::{SimConfig, run_observed, scenario_by_name};

fn main() -> anyhow::Result<()> {
    let mut split = false;
    let mut counts = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--split" {
            split = true;
        } else {
            counts.push(arg.parse::<usize>()?);
        }
    }
    if counts.is_empty() {
        counts = vec![100, 1000];
    }
    println!(
        "{:>6} {:>12} {:>10} {:>10} {:>12} {:>14}",
        "nodes", "simulated s", "wall s", "ratio", "events", "convergence ms"
    );
    let mut splits = Vec::new();
    for nodes in counts {
        let config = SimConfig::new(scenario_by_name("steady")?, 1).with_nodes(nodes);
        let simulated_ms = config.scenario.duration_ms;
        let started = Instant::now();
        // (simulated ms, events so far, wall s so far) at each whole second.
        let mut marks: Vec<(u64, u64, f64)> = vec![(0, 0, 0.0)];
        let report = run_observed(config, &mut |at_ms, events| {
            marks.push((at_ms, events, started.elapsed().as_secs_f64()));
        })?;
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
        if split {
            // A second is "converging" if any sample taken in it (or at its
            // end) disagrees.
            let seconds: Vec<(u64, u64, u64, f64, bool)> = marks
                .windows(2)
                .map(|w| {
                    let (from, events_from, wall_from) = w[0];
                    let (to, events_to, wall_to) = w[1];
                    let busy = report.samples.iter().any(|s| {
                        s.at_ms >= from
                            && s.at_ms <= to
                            && (s.distinct_heads > 1 || s.distinct_targets > 1)
                    });
                    (from, to, events_to - events_from, wall_to - wall_from, busy)
                })
                .collect();
            splits.push((nodes, seconds));
        }
    }
    for (nodes, seconds) in splits {
        println!("\n{nodes} nodes, per phase:");
        println!(
            "{:>11} {:>8} {:>10} {:>9} {:>12} {:>10}",
            "phase", "seconds", "events", "wall s", "events/sim s", "sim/wall"
        );
        for (name, busy) in [("converging", true), ("converged", false)] {
            let chosen: Vec<_> = seconds.iter().filter(|s| s.4 == busy).collect();
            let span: f64 = chosen.iter().map(|s| (s.1 - s.0) as f64 / 1000.0).sum();
            let events: u64 = chosen.iter().map(|s| s.2).sum();
            let wall: f64 = chosen.iter().map(|s| s.3).sum();
            println!(
                "{name:>11} {span:>8.1} {events:>10} {wall:>9.2} {:>12.0} {:>9.1}x",
                events as f64 / span.max(1e-9),
                span / wall.max(1e-9)
            );
        }
        println!(
            "{:>11} {:>8} {:>10} {:>9}",
            "second", "phase", "events", "wall s"
        );
        for (from, _, events, wall, busy) in seconds {
            println!(
                "{:>11} {:>8} {events:>10} {wall:>9.3}",
                from / 1000,
                if busy { "conv." } else { "idle" }
            );
        }
    }
    Ok(())
}
