//! `clawmesh bench swap`: hot swaps under closed-loop load on a throwaway
//! node. Each cycle swaps the counter from 1.0.0 to counter_v2 (state
//! migrated) and rolls it back (a flip within the warm window, the state
//! brought forward by replaying the journal), while `bench invoke`'s
//! closed loop keeps `c` connections busy. Prints failed requests (goal 0),
//! the pause of swaps and of rollbacks (p50/p99) and rollback wall time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use serde::Serialize;

use crate::bench::duration_arg::parse_duration;
use crate::bench::load::{LoadConfig, LoadTarget, run_closed_loop};
use crate::bench::throwaway_node::{COUNTER_OP, COUNTER_PACKAGE, ThrowawayNode};
use crate::daemon::{AdminRequest, admin_call};

/// Most swap cycles a run makes.
pub const MAX_SWAPS: u32 = 10_000;

/// `clawmesh bench swap` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchSwapArgs {
    /// Swaps to make (each followed by a rollback).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_SWAPS as i64))]
    pub swaps: u32,
    /// Concurrent closed-loop connections.
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,
    /// Longest the load runs; swaps stop when it ends.
    #[arg(short = 'd', long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where the built sample skills are.
    #[arg(long, env = "CLAWMESH_SKILLS_DIR")]
    pub skills_dir: Option<PathBuf>,
    /// The clawmesh binary the throwaway node runs (default: this one).
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,
    /// Machine-readable figures on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Percentiles of a set of microsecond figures.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Spread {
    /// Nearest-rank percentiles of `values`.
    pub fn of(values: &mut [u64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let rank =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Self {
            p50_us: rank(0.5),
            p99_us: rank(0.99),
            max_us: values[values.len() - 1],
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSwapReport {
    /// Swap cycles completed.
    pub swaps: u32,
    /// Swaps or rollbacks that aborted.
    pub aborted: u32,
    /// Requests that failed during the whole run (goal 0).
    pub failed_requests: u64,
    /// Requests answered.
    pub ok_requests: u64,
    /// Route pause of each swap (drain, snapshot, restore, health, flip).
    pub swap_pause: Spread,
    /// Of the swap pause: waiting for admitted calls to finish.
    pub swap_drain: Spread,
    /// Route pause of each rollback (snapshot, restore, replay, health, flip).
    pub rollback_pause: Spread,
    /// Wall time of each rollback request, admin socket round trip included.
    pub rollback_wall: Spread,
    /// Journal entries replayed per rollback (median).
    pub replayed_p50: u64,
    /// Bytes of state carried.
    pub state_bytes: u64,
}

/// Runs the benchmark; exit 1 when a request failed.
pub fn run_bench_swap(args: BenchSwapArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(measure(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "swaps: {} (aborted: {}), state {} B, c={}",
            report.swaps, report.aborted, report.state_bytes, args.connections
        );
        println!(
            "failed requests: {} (of {})",
            report.failed_requests,
            report.failed_requests + report.ok_requests
        );
        println!(
            "swap pause: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (of which drain p50 {:.3} ms)",
            ms(report.swap_pause.p50_us),
            ms(report.swap_pause.p99_us),
            ms(report.swap_pause.max_us),
            ms(report.swap_drain.p50_us)
        );
        println!(
            "rollback: pause p50 {:.3} ms, p99 {:.3} ms; wall p50 {:.3} ms, p99 {:.3} ms; {} calls replayed (p50)",
            ms(report.rollback_pause.p50_us),
            ms(report.rollback_pause.p99_us),
            ms(report.rollback_wall.p50_us),
            ms(report.rollback_wall.p99_us),
            report.replayed_p50
        );
    }
    Ok(if report.failed_requests == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn measure(args: &BenchSwapArgs) -> anyhow::Result<BenchSwapReport> {
    let exe = match &args.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("locating the clawmesh binary")?,
    };
    let skills = args
        .skills_dir
        .clone()
        .unwrap_or_else(crate::cli::default_skills_dir);
    let v2 = skills.join("counter_v2.wasm");
    anyhow::ensure!(
        v2.is_file(),
        "{} is missing: build the sample skills",
        v2.display()
    );
    eprintln!("bench: starting a throwaway node with {COUNTER_PACKAGE}");
    let node = ThrowawayNode::start(&exe, &skills).await?;
    let socket = PathBuf::from(&node.info.admin_socket);
    let host_port = node
        .info
        .http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr = tokio::net::lookup_host(&host_port)
        .await?
        .next()
        .with_context(|| format!("{host_port} resolves to no address"))?;
    let target = LoadTarget {
        addr,
        path: format!("/v1/skills/{COUNTER_PACKAGE}/{COUNTER_OP}"),
        body: Bytes::new(),
    };
    let config = LoadConfig {
        connections: args.connections,
        warmup: Duration::ZERO,
        duration: args.duration,
    };
    let load = tokio::spawn(async move { run_closed_loop(&target, config).await });
    let deadline = Instant::now() + args.duration;
    let swaps = args.swaps;
    let cycles = tokio::task::spawn_blocking(move || {
        let mut out = Cycles::default();
        for _ in 0..swaps {
            if Instant::now() >= deadline {
                break;
            }
            let swapped = admin_call(
                &socket,
                &AdminRequest::DeployWasm {
                    package: COUNTER_PACKAGE.into(),
                    path: v2.display().to_string(),
                    version: None,
                },
            );
            match swapped {
                Ok(v) => {
                    out.swap_pause
                        .push(v["swap"]["timings"]["pause_us"].as_u64().unwrap_or(0));
                    out.state_bytes = v["swap"]["state_bytes"].as_u64().unwrap_or(0);
                }
                Err(error) => {
                    eprintln!("bench: swap aborted: {error}");
                    out.aborted += 1;
                    continue;
                }
            }
            let started = Instant::now();
            match admin_call(
                &socket,
                &AdminRequest::Rollback {
                    package: COUNTER_PACKAGE.into(),
                },
            ) {
                Ok(v) => {
                    out.rollback_wall.push(started.elapsed().as_micros() as u64);
                    out.rollback_pause
                        .push(v["timings"]["pause_us"].as_u64().unwrap_or(0));
                    out.replayed.push(v["replayed"].as_u64().unwrap_or(0));
                    out.done += 1;
                }
                Err(error) => {
                    eprintln!("bench: rollback aborted: {error}");
                    out.aborted += 1;
                }
            }
        }
        out
    })
    .await
    .context("swap task")?;
    let load = load.await.context("load task")?;
    drop(node);
    let mut c = cycles;
    Ok(BenchSwapReport {
        swaps: c.done,
        aborted: c.aborted,
        failed_requests: load.errors + load.warmup_errors,
        ok_requests: load.ok,
        swap_pause: Spread::of(&mut c.swap_pause),
        swap_drain: Spread::of(&mut c.swap_drain),
        rollback_pause: Spread::of(&mut c.rollback_pause),
        rollback_wall: Spread::of(&mut c.rollback_wall),
        replayed_p50: Spread::of(&mut c.replayed).p50_us,
        state_bytes: c.state_bytes,
    })
}

#[derive(Debug, Default)]
struct Cycles {
    done: u32,
    aborted: u32,
    swap_pause: Vec<u64>,
    swap_drain: Vec<u64>,
    rollback_pause: Vec<u64>,
    rollback_wall: Vec<u64>,
    replayed: Vec<u64>,
    state_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_nearest_rank_percentiles() {
        let mut values: Vec<u64> = (1..=100).collect();
        let spread = Spread::of(&mut values);
        assert_eq!((spread.p50_us, spread.p99_us, spread.max_us), (50, 99, 100));
        assert_eq!(Spread::of(&mut []).p50_us, 0);
    }
}
