//! Act 2: five node processes on loopback, joined through one bootstrap
//! peer, until every node sees the four others.

use std::time::Instant;

use anyhow::Context;
use clawmesh_crdt::signing::PublisherKey;
use clawmesh_crdt::trust::TrustRoot;

use super::figures::Figures;
use super::live_table::LiveTable;
use super::local_mesh::{NodeLaunch, spawn_node};
use super::mesh_demo::{MeshDemo, MeshDemoConfig, NODES, QUARANTINE_THRESHOLD, ms};
use crate::data_dir::DataDir;
use crate::package_file::write_file_atomically;

/// Starts the mesh; the detail says how long it took.
pub fn start_mesh(
    config: MeshDemoConfig,
    key: PublisherKey,
    trust: TrustRoot,
) -> anyhow::Result<(MeshDemo, String)> {
    let started = Instant::now();
    let dirs: Vec<_> = (1..=NODES)
        .map(|i| config.root.join("mesh").join(format!("node{i}")))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        write_file_atomically(
            &DataDir::new(d).trust_file(),
            trust.to_toml().as_bytes(),
            0o644,
        )?;
    }
    let mut launch = NodeLaunch {
        bootstrap: None,
        extra: vec![
            "--quarantine-threshold".into(),
            QUARANTINE_THRESHOLD.to_string(),
        ],
        outlive_parent: config.keep,
    };
    let first = spawn_node(&config.exe, &dirs[0], &launch)?.wait()?;
    let bootstrap = first
        .info
        .p2p
        .first()
        .context("node 1 has no p2p address")?
        .clone();
    if config.verbose {
        println!(
            "    node 1 (bootstrap) serving: {} · {bootstrap}",
            first.info.http
        );
    }
    launch.bootstrap = Some(bootstrap);
    let starting = dirs[1..]
        .iter()
        .map(|d| spawn_node(&config.exe, d, &launch))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut nodes = vec![first];
    for s in starting {
        nodes.push(s.wait()?);
    }
    let serving = started.elapsed();
    let blobs = nodes
        .iter()
        .map(|n| n.dir.blob_store())
        .collect::<Result<Vec<_>, _>>()?;
    let in_place = config.in_place;
    let mut demo = MeshDemo {
        config,
        key,
        trust,
        nodes,
        blobs,
        figures: Figures::default(),
        table: LiveTable::new(in_place),
    };
    for (i, n) in demo.nodes.iter().enumerate() {
        demo.say(&format!(
            "node {} pid {} http {} peer {}",
            i + 1,
            n.pid(),
            n.info.http,
            short(n.peer_id()?)
        ));
    }
    demo.say(&format!(
        "all {NODES} serving after {:.0} ms; waiting until each sees {} peers…",
        ms(serving),
        NODES - 1
    ));
    demo.watch("every node to see the 4 others", |d, _| {
        let counts = d
            .nodes
            .iter()
            .map(|n| n.peer_count())
            .collect::<anyhow::Result<Vec<_>>>()?;
        if counts.iter().all(|c| *c + 1 >= NODES) {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("peers per node {counts:?}")))
        }
    })?;
    let joined = started.elapsed();
    demo.figures.mesh_joined_ms = Some(ms(joined));
    let detail = format!(
        "{NODES} nodes serving after {:.0} ms; full mesh (each sees {} peers) after {:.0} ms",
        ms(serving),
        NODES - 1,
        ms(joined)
    );
    Ok((demo, detail))
}

/// The last characters of a peer id, enough to tell nodes apart.
pub fn short(peer: &str) -> &str {
    peer.char_indices()
        .rev()
        .nth(7)
        .map_or(peer, |(i, _)| &peer[i..])
}
