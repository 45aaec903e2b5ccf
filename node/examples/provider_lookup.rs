//! How long a DHT provider lookup takes (what a fetch waits for before it
//! starts) on an in-process loopback mesh, against the baseline of one
//! command round trip to the swarm task (`connected_peers`):
//! `cargo run --release -p clawmesh-node --example provider_lookup -- [NODES] [LOOKUPS]`.
//!
//! The last node provides one blob; the second asks for it `LOOKUPS` times
//! (the first lookup also dials the provider), then for a blob nobody
//! provides (the query visits every peer close to the key and ends empty).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use clawmesh_node::mesh::{MeshConfig, MeshHandle, MeshNetwork, NetEvent};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;

const WAIT: Duration = Duration::from_secs(60);
const LOOKUP_BOUND: Duration = Duration::from_secs(5);

async fn spawn(
    bootstrap: Option<libp2p::Multiaddr>,
) -> anyhow::Result<(MeshHandle, libp2p::Multiaddr)> {
    let mut cfg = MeshConfig::new(Keypair::generate_ed25519());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    cfg.bootstrap = bootstrap.into_iter().collect();
    cfg.bootstrap_interval = Duration::from_secs(1);
    let (handle, mut events) = MeshNetwork::spawn(cfg)?;
    let listen = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(NetEvent::Listening(addr)) => return Some(addr),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("mesh stopped before listening"))?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let addr = listen.with(Protocol::P2p(handle.local_peer_id()));
    Ok((handle, addr))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut times: Vec<Duration>, baseline: Duration) {
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!(
        "{name}: n={} p50 {:.3} ms, p99 {:.3} ms; p50 / baseline = {:.1}",
        times.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        p50.as_secs_f64() / baseline.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(8)
        .max(3);
    let lookups: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200)
        .max(1);

    let (first, first_addr) = spawn(None).await?;
    let mut mesh = vec![first];
    for _ in 1..nodes {
        mesh.push(spawn(Some(first_addr.clone())).await?.0);
    }
    // Everyone connected to everyone (the mesh dials what the DHT finds).
    tokio::time::timeout(WAIT, async {
        for node in &mesh {
            while node.connected_peers().await.map(|p| p.len()).unwrap_or(0) < nodes - 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await?;

    let blob = [0x42u8; 32];
    let (asker, provider) = (&mesh[1], &mesh[nodes - 1]);
    provider.start_providing(blob).await?;
    let first_hit = Instant::now();
    let first = tokio::time::timeout(WAIT, async {
        loop {
            let t = Instant::now();
            let found = asker.get_providers(blob, 16, LOOKUP_BOUND).await?;
            if found.contains(&provider.local_peer_id()) {
                return anyhow::Ok(t.elapsed());
            }
        }
    })
    .await??;
    let since_providing = first_hit.elapsed();

    let mut baseline = Vec::with_capacity(lookups);
    let mut hits = Vec::with_capacity(lookups);
    let mut misses = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        let t = Instant::now();
        asker.connected_peers().await?;
        baseline.push(t.elapsed());
        let t = Instant::now();
        let found = asker.get_providers(blob, 16, LOOKUP_BOUND).await?;
        hits.push(t.elapsed());
        anyhow::ensure!(
            found == vec![provider.local_peer_id()],
            "lookup found {found:?}"
        );
        let t = Instant::now();
        let none = asker.get_providers([0x24u8; 32], 16, LOOKUP_BOUND).await?;
        misses.push(t.elapsed());
        anyhow::ensure!(
            none.is_empty(),
            "a blob nobody provides has providers: {none:?}"
        );
    }
    baseline.sort();
    let base = percentile(&baseline, 0.5);
    println!(
        "{nodes} nodes on loopback; first successful lookup {:.3} ms ({:.3} ms after providing)",
        first.as_secs_f64() * 1e3,
        since_providing.as_secs_f64() * 1e3
    );
    report(
        "baseline: swarm task round trip (connected_peers)",
        baseline,
        base,
    );
    report("lookup, provider found", hits, base);
    report("lookup, no provider", misses, base);
    for node in &mesh {
        node.shutdown().await;
    }
    Ok(())
}
