//! Act 6: the mesh split in two (each side blocks the other's peer ids),
//! a conflicting release on each side, then the heal: every node converges
//! to one target, whatever order it merged the two intents in.

use std::time::Instant;

use clawmesh_crdt::IntentAction;

use super::mesh_demo::{COUNTER, MeshDemo, ms};
use crate::daemon::mesh_admin::MeshRequest;

/// Nodes (0-based) on the first side; the rest are the second.
pub const SIDE_A: [usize; 3] = [0, 1, 2];
/// The release made on side A.
pub const VERSION_A: &str = "4.0.0";
/// The release made on side B.
pub const VERSION_B: &str = "5.0.0";

fn side_b(n: usize) -> Vec<usize> {
    (0..n).filter(|i| !SIDE_A.contains(i)).collect()
}

fn peers_of(demo: &MeshDemo, nodes: &[usize]) -> anyhow::Result<Vec<String>> {
    nodes
        .iter()
        .map(|i| Ok(demo.nodes[*i].peer_id()?.to_string()))
        .collect()
}

/// Runs act 6.
pub fn split_and_heal(demo: &mut MeshDemo) -> anyhow::Result<((), String)> {
    let n = demo.nodes.len();
    let a: Vec<usize> = SIDE_A.to_vec();
    let b = side_b(n);
    let names = |s: &[usize]| {
        s.iter()
            .map(|i| (i + 1).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    // Both versions are in every node's catalog before the split (publish
    // waits for it); each blob lives on one side only.
    demo.publish(a[1], "counter_v2.wasm", VERSION_A, 2)?;
    demo.publish(b[1], "counter_v2.wasm", VERSION_B, 2)?;
    demo.say(&format!(
        "published {VERSION_A} on node {} and {VERSION_B} on node {}; splitting {{{}}} | {{{}}}",
        a[1] + 1,
        b[1] + 1,
        names(&a),
        names(&b)
    ));
    let (peers_a, peers_b) = (peers_of(demo, &a)?, peers_of(demo, &b)?);
    for i in &a {
        demo.nodes[*i].mesh(MeshRequest::BlockPeers {
            peers: peers_b.clone(),
        })?;
    }
    for i in &b {
        demo.nodes[*i].mesh(MeshRequest::BlockPeers {
            peers: peers_a.clone(),
        })?;
    }
    let split_started = Instant::now();
    let (la, lb) = (a.len(), b.len());
    demo.watch("each side to see only itself", |d, _| {
        let counts = d
            .nodes
            .iter()
            .map(|n| n.peer_count())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ok = counts
            .iter()
            .enumerate()
            .all(|(i, c)| *c + 1 == if SIDE_A.contains(&i) { la } else { lb });
        if ok {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("peers per node {counts:?}")))
        }
    })?;
    demo.say(&format!("split after {:.0} ms; conflicting releases: {VERSION_A} on node {}, {VERSION_B} on node {}", ms(split_started.elapsed()), a[0] + 1, b[0] + 1));
    demo.nodes[a[0]].submit_intent(&demo.key, COUNTER, VERSION_A, IntentAction::Deploy)?;
    demo.nodes[b[0]].submit_intent(&demo.key, COUNTER, VERSION_B, IntentAction::Deploy)?;
    let want = |i: usize| {
        if SIDE_A.contains(&i) {
            VERSION_A
        } else {
            VERSION_B
        }
    };
    let sides_started = Instant::now();
    demo.watch("each side to run its own release", |d, _| {
        let views = d.views()?;
        let rows: Vec<String> = views
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "node {}: target {} {} {}",
                    i + 1,
                    v.target,
                    v.state,
                    v.running
                )
            })
            .collect();
        let ok = views
            .iter()
            .enumerate()
            .all(|(i, v)| v.target == want(i) && v.state == "active" && v.running == want(i));
        if ok {
            Ok(Ok(()))
        } else {
            Ok(Err(rows.join(" | ")))
        }
    })?;
    demo.say(&format!(
        "split brain: nodes {} run {VERSION_A}, nodes {} run {VERSION_B} ({:.0} ms); healing…",
        names(&a),
        names(&b),
        ms(sides_started.elapsed())
    ));

    for i in &a {
        demo.nodes[*i].mesh(MeshRequest::UnblockPeers {
            peers: peers_b.clone(),
        })?;
    }
    for i in &b {
        demo.nodes[*i].mesh(MeshRequest::UnblockPeers {
            peers: peers_a.clone(),
        })?;
    }
    let healed = Instant::now();
    let mut target_ms = vec![None; n];
    let mut active_ms = vec![None; n];
    let winner = demo.watch(
        "every node to converge on one target after the heal",
        |d, elapsed| {
            let views = d.views()?;
            let now = ms(elapsed);
            let targets: Vec<&str> = views.iter().map(|v| v.target.as_str()).collect();
            let winner = if targets.iter().all(|t| *t == targets[0]) {
                Some(targets[0].to_string())
            } else {
                None
            };
            let mut rows = vec!["node  target    state         running   converged".to_string()];
            for (i, v) in views.iter().enumerate() {
                if v.target == VERSION_B && target_ms[i].is_none() {
                    target_ms[i] = Some(now);
                }
                if v.state == "active" && v.running == VERSION_B && active_ms[i].is_none() {
                    active_ms[i] = Some(now);
                }
                rows.push(format!(
                    "{:<5} {:<9} {:<13} {:<9} {}",
                    i + 1,
                    v.target,
                    v.state,
                    v.running,
                    active_ms[i].map_or(String::new(), |t: f64| format!("{t:.0} ms"))
                ));
            }
            if d.config.verbose {
                d.table.show(&rows);
            }
            match winner {
                Some(w)
                    if views.iter().all(|v| v.state == "active" && v.running == w) && w != "-" =>
                {
                    Ok(Ok(w))
                }
                _ => Ok(Err(rows[1..].join(" | "))),
            }
        },
    )?;
    demo.table.finish();
    let took = healed.elapsed();
    demo.figures.converged_to = Some(winner.clone());
    demo.figures.heal_target_ms = target_ms;
    demo.figures.heal_active_ms = active_ms;
    if winner != VERSION_B {
        anyhow::bail!("converged on {winner}, not {VERSION_B} (a deploy only moves a target up)");
    }
    Ok((
        (),
        format!(
            "every node targets and runs {winner} {:.0} ms after the heal (a deploy only moves a target up, so {VERSION_B} wins on every node whatever the merge order)",
            ms(took)
        ),
    ))
}
