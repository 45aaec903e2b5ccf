//! Act 4: closed-loop load on every node's counter while counter v2
//! (schema 2) is released. What it reports is what it saw: requests
//! served, errors, each node's swap pause as the node measured it, and
//! whether the counter kept its state (its value after the swap equals the
//! adds that node acknowledged).

use std::sync::mpsc;
use std::time::Duration;

use super::act_release::release_and_watch;
use super::figures::LoadFigures;
use super::load::Load;
use super::mesh_demo::{COUNTER, MeshDemo, ms};
use crate::bench::histogram::LatencyHistogram;
use crate::daemon::admin_protocol::admin_events;

/// Closed-loop clients per node.
pub const CLIENTS_PER_NODE: usize = 1;
/// Adds each node acknowledges before the release (so there is state to
/// keep) and after every node is Active (so the new version serves).
pub const ADDS_AROUND_RELEASE: u64 = 20;
/// Longest wait for a node's swap event once it is Active.
const SWAP_EVENT_WAIT: Duration = Duration::from_secs(5);

/// Runs act 4.
pub fn release_v2_under_load(demo: &mut MeshDemo) -> anyhow::Result<((), String)> {
    let blob = demo.publish(0, "counter_v2.wasm", "2.0.0", 2)?;
    // Each node's swap events, watched from before the release.
    let mut events = Vec::new();
    for node in &demo.nodes {
        let (tx, rx) = mpsc::channel();
        let socket = node.dir.admin_socket();
        std::thread::spawn(move || {
            let _ = admin_events(&socket, Some(COUNTER.to_string()), |event| {
                let done = event["to_version"] == "2.0.0"
                    && matches!(event["kind"].as_str(), Some("swap" | "swap_failed"));
                if done {
                    let _ = tx.send(event);
                }
                !done
            });
        });
        events.push(rx);
    }
    let load = Load::start(&demo.add_urls(), CLIENTS_PER_NODE);
    demo.say(&format!(
        "load: {} closed-loop client(s) per node adding 1 to {COUNTER} over HTTP",
        CLIENTS_PER_NODE
    ));
    demo.watch("load to reach every node", |_, _| {
        let acked = load.acked_so_far();
        if acked.iter().all(|a| *a >= ADDS_AROUND_RELEASE) {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("acked {acked:?}")))
        }
    })?;
    let release_at = load.started().elapsed();
    demo.say(&format!(
        "release 2.0.0 from node 4 with the load running ({} adds so far):",
        load.acked_so_far().iter().sum::<u64>()
    ));
    let watched = release_and_watch(demo, 3, "2.0.0", blob);
    let all_active_at = load.started().elapsed();
    let after: Vec<u64> = load.acked_so_far();
    let settle = match &watched {
        Ok(_) => demo.watch("the load to go on after the release", |_, _| {
            let now = load.acked_so_far();
            if now
                .iter()
                .zip(&after)
                .all(|(n, a)| *n >= a + ADDS_AROUND_RELEASE)
            {
                Ok(Ok(()))
            } else {
                Ok(Err(format!("acked {now:?}")))
            }
        }),
        Err(_) => Ok(()),
    };
    let result = load.stop();
    watched?;
    settle?;

    let counter_after: Vec<Option<u64>> = (0..demo.nodes.len())
        .map(|i| demo.counter_value(i).ok())
        .collect();
    let state_kept: Vec<bool> = counter_after
        .iter()
        .zip(&result.acked)
        .map(|(v, a)| *v == Some(*a))
        .collect();
    let pauses: Vec<Option<f64>> = events
        .iter()
        .map(|rx| {
            rx.recv_timeout(SWAP_EVENT_WAIT).ok().and_then(|e| {
                if e["kind"] == "swap" {
                    e["timings"]["pause_us"].as_f64().map(|us| us / 1e3)
                } else {
                    None
                }
            })
        })
        .collect();
    let mut hist = LatencyHistogram::new();
    for s in &result.samples {
        hist.record(Duration::from_secs_f64(s.latency_ms / 1e3));
    }
    let figures = LoadFigures {
        served: result.acked.iter().sum(),
        errors: result.errors.iter().sum(),
        acked: result.acked.clone(),
        errors_per_node: result.errors.clone(),
        counter_after: counter_after.clone(),
        state_kept: state_kept.clone(),
        release_at_ms: ms(release_at),
        all_active_at_ms: Some(ms(all_active_at)),
        p50_ms: ms(hist.percentile(50.0)),
        p99_ms: ms(hist.percentile(99.0)),
        max_ms: ms(hist.max()),
        error_messages: result.error_messages.clone(),
        samples: result.samples.clone(),
    };
    let mut detail = format!(
        "{} requests served, {} errors; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        figures.served, figures.errors, figures.p50_ms, figures.p99_ms, figures.max_ms
    );
    for i in 0..demo.nodes.len() {
        detail.push_str(&format!(
            "\nnode {}: {} adds acknowledged, counter after = {}, state {}; swap pause {}",
            i + 1,
            result.acked[i],
            counter_after[i].map_or("unreadable".to_string(), |v| v.to_string()),
            if state_kept[i] { "kept" } else { "NOT kept" },
            pauses[i].map_or("not reported".to_string(), |p| format!("{p:.2} ms"))
        ));
    }
    for m in &figures.error_messages {
        detail.push_str(&format!("\nerror seen: {m}"));
    }
    demo.figures.swap_pause_ms = pauses;
    demo.figures.load = Some(figures.clone());
    let kept = state_kept.iter().all(|k| *k);
    if figures.errors > 0 || !kept {
        anyhow::bail!(
            "the release under load {}{}:\n{detail}",
            if figures.errors > 0 {
                "failed requests"
            } else {
                "served every request"
            },
            if kept {
                ""
            } else {
                " and the counter did NOT keep its state on every node"
            }
        );
    }
    Ok((
        (),
        format!("every node on 2.0.0, zero failed requests, state kept on every node\n{detail}"),
    ))
}
