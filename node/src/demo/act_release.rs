//! Act 3: counter v1 published on node 1 and released from node 3; the
//! blob spreads peer to peer and every node reaches Active, shown as a live
//! table of nodes × state with per-node timings.

use std::time::Instant;

use clawmesh_crdt::IntentAction;

use super::mesh_demo::{COUNTER, LocalView, MeshDemo, ms};

/// Header of the release tables.
pub const TABLE_HEADER: &str = "node  blob      state         running   target    time";

/// One table row.
pub fn row(i: usize, view: &LocalView, blob: bool, time: Option<f64>) -> String {
    format!(
        "{:<5} {:<9} {:<13} {:<9} {:<9} {}",
        i + 1,
        if blob { "held" } else { "-" },
        view.state,
        view.running,
        view.target,
        time.map_or(String::new(), |t| format!("{t:.0} ms"))
    )
}

/// Per node, when a release reached it (ms after the intent was submitted).
#[derive(Debug, Clone, Default)]
pub struct ReleaseTimes {
    /// The blob was in the node's store.
    pub blob_ms: Vec<Option<f64>>,
    /// The node reported Active on the version.
    pub active_ms: Vec<Option<f64>>,
}

/// Releases `version` (published already) from node `via` and watches every
/// node until it runs it.
pub fn release_and_watch(
    demo: &mut MeshDemo,
    via: usize,
    version: &str,
    blob: crate::blob_store::BlobId,
) -> anyhow::Result<ReleaseTimes> {
    let n = demo.nodes.len();
    let started = Instant::now();
    demo.nodes[via].submit_intent(&demo.key, COUNTER, version, IntentAction::Deploy)?;
    let mut blob_ms = vec![None; n];
    let mut active_ms = vec![None; n];
    demo.table.finish();
    demo.watch(&format!("every node Active on {version}"), |d, _| {
        let views = d.views()?;
        let now = ms(started.elapsed());
        let mut rows = vec![TABLE_HEADER.to_string()];
        for (i, v) in views.iter().enumerate() {
            let held = d.blobs[i].contains(&blob);
            if held && blob_ms[i].is_none() {
                blob_ms[i] = Some(now);
            }
            if v.state == "active" && v.running == version && active_ms[i].is_none() {
                active_ms[i] = Some(now);
            }
            rows.push(row(i, v, held, active_ms[i]));
        }
        if d.config.verbose {
            d.table.show(&rows);
        }
        if active_ms.iter().all(Option::is_some) {
            Ok(Ok(()))
        } else {
            Ok(Err(rows[1..].join(" | ")))
        }
    })?;
    demo.table.finish();
    Ok(ReleaseTimes { blob_ms, active_ms })
}

/// Runs act 3.
pub fn release_v1(demo: &mut MeshDemo) -> anyhow::Result<((), String)> {
    let blob = demo.publish(0, "counter.wasm", "1.0.0", 1)?;
    let before: Vec<bool> = demo.blobs.iter().map(|b| b.contains(&blob)).collect();
    demo.say(&format!(
        "published {COUNTER}@1.0.0 on node 1 (blob {}…); only node 1 holds it: {}",
        &blob.to_hex()[..12],
        before.iter().filter(|h| **h).count() == 1 && before[0]
    ));
    demo.say("release signed and submitted on node 3:");
    let ReleaseTimes { blob_ms, active_ms } = release_and_watch(demo, 2, "1.0.0", blob)?;
    // Every node serves the skill it reports Active.
    let values = (0..demo.nodes.len())
        .map(|i| demo.counter_value(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    demo.figures.blob_held_ms = blob_ms.clone();
    demo.figures.active_ms = active_ms.clone();
    let fetched = before.iter().filter(|h| !**h).count();
    let slowest = active_ms.iter().flatten().copied().fold(0.0, f64::max);
    let mut detail = format!(
        "{fetched} nodes fetched the blob from peers; all {} Active on 1.0.0 after {slowest:.0} ms; every node answers get = {values:?}",
        demo.nodes.len()
    );
    for (i, (b, a)) in blob_ms.iter().zip(&active_ms).enumerate() {
        detail.push_str(&format!(
            "\nnode {}: blob held after {:.0} ms, Active after {:.0} ms",
            i + 1,
            b.unwrap_or(0.0),
            a.unwrap_or(0.0)
        ));
    }
    if !(before[0] && fetched == demo.nodes.len() - 1) {
        anyhow::bail!("expected only node 1 to hold the blob before the release; held: {before:?}");
    }
    Ok(((), detail))
}
