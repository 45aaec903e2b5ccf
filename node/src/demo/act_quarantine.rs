//! Act 5: a broken version (its `restore` traps) released as counter
//! 3.0.0. Each node's swap fails and the previous version keeps serving;
//! once enough nodes report it Failed the version is quarantined
//! mesh-wide: the target falls back to 2.0.0, which every node keeps
//! running with its state. Whether a node's circuit breaker was seen open
//! is reported only as the nodes' status details say it.

use std::collections::BTreeSet;
use std::time::Instant;

use clawmesh_crdt::IntentAction;

use super::mesh_demo::{COUNTER, MeshDemo, QUARANTINE_THRESHOLD, ms};

/// The broken version.
pub const BROKEN: &str = "3.0.0";
/// The version every node must stay on.
pub const GOOD: &str = "2.0.0";

/// Runs act 5.
pub fn release_broken(demo: &mut MeshDemo) -> anyhow::Result<((), String)> {
    let values_before = (0..demo.nodes.len())
        .map(|i| demo.counter_value(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    demo.publish(0, "fixture_trap_restore.wasm", BROKEN, 3)?;
    demo.say(&format!(
        "published {COUNTER}@{BROKEN} (its restore traps) on node 1; released from node 5:"
    ));
    let started = Instant::now();
    demo.nodes[4].submit_intent(&demo.key, COUNTER, BROKEN, IntentAction::Deploy)?;
    let quarantined = format!("{COUNTER}@{BROKEN}");
    let mut failed: BTreeSet<usize> = BTreeSet::new();
    let mut breaker: BTreeSet<usize> = BTreeSet::new();
    let mut seen: Vec<String> = vec![String::new(); demo.nodes.len()];
    let mut timeline: Vec<String> = Vec::new();
    let mut quarantine_seen: Vec<Option<f64>> = vec![None; demo.nodes.len()];
    demo.watch(
        &format!("{BROKEN} quarantined and every node back on {GOOD}"),
        |d, elapsed| {
            let views = d.views()?;
            let now = ms(elapsed);
            for (i, v) in views.iter().enumerate() {
                if v.failed_version == BROKEN || v.state == "failed" || v.state == "rolling_back" {
                    failed.insert(i);
                }
                if v.detail.contains("breaker") {
                    breaker.insert(i);
                }
                if quarantine_seen[i].is_none()
                    && v.quarantine.iter().any(|q| q.starts_with(&quarantined))
                {
                    quarantine_seen[i] = Some(now);
                    let line = format!(
                        "{now:>6.0} ms  node {}: sees {} quarantined",
                        i + 1,
                        v.quarantine.join(", ")
                    );
                    d.say(&line);
                    timeline.push(line);
                }
                let state = format!(
                    "{} running {} target {}{}{}",
                    v.state,
                    v.running,
                    v.target,
                    if v.failed_version == "-" {
                        String::new()
                    } else {
                        format!(" failed {}", v.failed_version)
                    },
                    if v.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", first_line(&v.detail))
                    }
                );
                if state != seen[i] {
                    let line = format!("{now:>6.0} ms  node {}: {state}", i + 1);
                    d.say(&line);
                    timeline.push(line);
                    seen[i] = state;
                }
            }
            let done = views.iter().enumerate().all(|(i, v)| {
                quarantine_seen[i].is_some()
                    && v.target == GOOD
                    && v.state == "active"
                    && v.running == GOOD
            });
            if done {
                Ok(Ok(()))
            } else {
                Ok(Err(seen.join(" | ")))
            }
        },
    )?;
    let took = started.elapsed();
    let values_after = (0..demo.nodes.len())
        .map(|i| demo.counter_value(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    demo.figures.quarantine_ms = Some(ms(took));
    demo.figures.failed_nodes = Some(failed.len());
    if failed.len() < QUARANTINE_THRESHOLD {
        anyhow::bail!(
            "quarantined, but only {} node(s) were seen failing (threshold {QUARANTINE_THRESHOLD})",
            failed.len()
        );
    }
    if values_after != values_before {
        anyhow::bail!(
            "the counter changed across the failed swap: before {values_before:?}, after {values_after:?}"
        );
    }
    let breakers = if breaker.is_empty() {
        "no node status mentioned its circuit breaker, so none is claimed".to_string()
    } else {
        format!("circuit breaker seen open on {} node(s)", breaker.len())
    };
    Ok((
        (),
        format!(
            "{} nodes seen failing {BROKEN} (threshold {QUARANTINE_THRESHOLD}), each still serving {GOOD}; {breakers}; \
             quarantined on every node and all back on {GOOD} after {:.0} ms; counters unchanged {values_after:?}",
            failed.len(),
            ms(took)
        ),
    ))
}

/// The first line of a (possibly multi-line) detail, for one-line output.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
