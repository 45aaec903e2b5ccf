//! How long a skill takes to compile with the node's engine settings, cold
//! (no cache) and from the compile cache, against reading the file:
//! `cargo run --release -p clawmesh-node --example compile_time -- FILE.wasm [RUNS]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use clawmesh_wasm_abi::{EngineConfig, SkillEngine};
use sha2::{Digest, Sha256};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: compile_time FILE.wasm [RUNS]"))?;
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let started = Instant::now();
    let wasm = std::fs::read(&path)?;
    let read = started.elapsed();
    let sha256: [u8; 32] = Sha256::digest(&wasm).into();
    let engine = SkillEngine::new(EngineConfig::default())?;
    let cache_dir = tempfile::tempdir()?;
    let cached = SkillEngine::new(EngineConfig {
        cache_dir: Some(cache_dir.path().to_path_buf()),
        ..EngineConfig::default()
    })?;
    cached.load_cached(&wasm, &sha256)?;
    println!("{path}: {} bytes, read in {read:?}", wasm.len());
    for run in 0..runs {
        let t = Instant::now();
        engine.load(&wasm)?;
        let cold = t.elapsed();
        let t = Instant::now();
        cached.load_cached(&wasm, &sha256)?;
        let warm = t.elapsed();
        println!(
            "run {run}: compile {:.1} ms, from cache {:.2} ms, ratio {:.0}x",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            cold.as_secs_f64() / warm.as_secs_f64()
        );
    }
    Ok(())
}
