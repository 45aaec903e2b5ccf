//! `clawmesh bench swap`: hot swaps under closed-loop load on a throwaway
//! node. Each cycle swaps a skill to its next version (state migrated) and
//! rolls it back (a flip within the warm window, the state brought forward
//! by replaying the journal), while `bench invoke`'s closed loop keeps `c`
//! connections busy on that skill. State size 0 is the counter (8 bytes,
//! load `add`); a size of N MiB is the kv sample filled with N MiB of
//! values (load `get` of a small key), swapped kv-v1 → kv-v2. Prints per
//! size failed requests (goal 0), the pause of swaps and of rollbacks
//! (p50/p99) and rollback wall time. Then, unless `--follow 0s`, what the
//! warm standby's following costs: the same load with no window open and
//! with one open, alternated twice, and the standby's CPU per call.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use serde::Serialize;

use crate::bench::args::LocalBinaries;
use crate::bench::duration_arg::parse_duration;
use crate::bench::load::{LoadConfig, LoadTarget, run_closed_loop};
use crate::bench::throwaway_node::{COUNTER_FILE, COUNTER_OP, COUNTER_PACKAGE, ThrowawayNode};
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
    /// What the throwaway node runs.
    #[command(flatten)]
    pub local: LocalBinaries,
    /// Machine-readable figures on stdout.
    #[arg(long)]
    pub json: bool,
    /// State sizes to measure, MiB, comma-separated (0: the counter; more:
    /// the kv sample filled with that much state).
    #[arg(long, value_delimiter = ',', default_value = "0", value_parser = clap::value_parser!(u64).range(0..=MAX_STATE_MIB))]
    pub state_mib: Vec<u64>,
    /// Length of each of the four load runs measuring what following the
    /// calls into the warm standby costs (0s: skip them).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub follow: Duration,
}

/// Largest state the kv sample is filled with (its 10 000 keys × 64 KiB).
pub const MAX_STATE_MIB: u64 = 512;

/// The stateful sample used for state sizes above 0.
const KV_PACKAGE: &str = "dev.clawmesh.kv";

/// Bytes of each kv value written to fill the state.
const KV_VALUE_BYTES: usize = 64 * 1024;

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

/// The steps of a pause (the event's `StepTimings`), each as percentiles
/// over the run, and the narrowing before it. In a swap's pause the steps
/// overlap: `drain` runs beside `snapshot` (from the pause to the old
/// worker's answer, which comes after the calls still at it), `restore`
/// and `health` are what the new worker took after that answer.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Steps {
    /// Before the pause: the window narrowing (calls still flow).
    pub narrow: Spread,
    /// Waiting for the calls in the window to finish.
    pub drain: Spread,
    /// The snapshot into the segment (or, with an early snapshot, fetching
    /// the calls journaled since it).
    pub snapshot: Spread,
    /// The restore (or the replay of the delta), migration included.
    pub restore: Spread,
    /// `health` on the worker taking over.
    pub health: Spread,
    /// The flip and resume.
    pub flip: Spread,
}

/// Step timings collected over a run, one entry per swap or rollback.
#[derive(Debug, Default)]
struct StepSamples {
    narrow: Vec<u64>,
    drain: Vec<u64>,
    snapshot: Vec<u64>,
    restore: Vec<u64>,
    health: Vec<u64>,
    flip: Vec<u64>,
}

impl StepSamples {
    fn push(&mut self, timings: &serde_json::Value) {
        let field = |name: &str| timings[name].as_u64().unwrap_or(0);
        self.narrow.push(field("narrow_us"));
        self.drain.push(field("drain_us"));
        self.snapshot.push(field("snapshot_us"));
        self.restore.push(field("restore_us"));
        self.health.push(field("health_us"));
        self.flip.push(field("flip_us"));
    }

    fn spread(&mut self) -> Steps {
        Steps {
            narrow: Spread::of(&mut self.narrow),
            drain: Spread::of(&mut self.drain),
            snapshot: Spread::of(&mut self.snapshot),
            restore: Spread::of(&mut self.restore),
            health: Spread::of(&mut self.health),
            flip: Spread::of(&mut self.flip),
        }
    }
}

/// What a run measured, per state size.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSwapReport {
    /// Size asked for, MiB (0: the counter).
    pub state_mib: u64,
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
    /// The swap pause step by step.
    pub swap_steps: Steps,
    /// Route pause of each rollback (snapshot, restore, replay, health, flip).
    pub rollback_pause: Spread,
    /// The rollback pause step by step.
    pub rollback_steps: Steps,
    /// Wall time of each rollback request, admin socket round trip included.
    pub rollback_wall: Spread,
    /// Journal entries replayed per rollback (median).
    pub replayed_p50: u64,
    /// Bytes of state carried.
    pub state_bytes: u64,
    /// What the standby's following costs (absent with `--follow 0s`).
    pub following: Option<FollowingCost>,
}

/// The same closed-loop load with no warm window open and with one open
/// (every call then also replayed into the standby, in batches before each
/// checkpoint), alternated twice.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FollowingCost {
    /// Requests per second answered with no window open.
    pub closed_rps: f64,
    /// Requests per second answered with a window open.
    pub open_rps: f64,
    /// CPU the standby worker spent while its window was open, per 1000
    /// calls answered then, ms.
    pub standby_cpu_ms_per_1k_calls: f64,
}

/// Runs the benchmark; exit 1 when a request failed.
pub fn run_bench_swap(args: BenchSwapArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut reports = Vec::new();
    for &mib in &args.state_mib {
        let report = runtime.block_on(measure(&args, mib))?;
        if !args.json {
            print_report(&report, args.connections);
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if reports.iter().all(|r| r.failed_requests == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &BenchSwapReport, connections: usize) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "state {} MiB ({} B): swaps: {} (aborted: {}), c={}",
        report.state_mib, report.state_bytes, report.swaps, report.aborted, connections
    );
    println!(
        "  failed requests: {} (of {})",
        report.failed_requests,
        report.failed_requests + report.ok_requests
    );
    println!(
        "  swap pause: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(report.swap_pause.p50_us),
        ms(report.swap_pause.p99_us),
        ms(report.swap_pause.max_us),
    );
    println!("    {}", steps_line(&report.swap_steps));
    println!(
        "  rollback: pause p50 {:.3} ms, p99 {:.3} ms; wall p50 {:.3} ms, p99 {:.3} ms; {} calls replayed (p50)",
        ms(report.rollback_pause.p50_us),
        ms(report.rollback_pause.p99_us),
        ms(report.rollback_wall.p50_us),
        ms(report.rollback_wall.p99_us),
        report.replayed_p50
    );
    println!("    {}", steps_line(&report.rollback_steps));
    if let Some(f) = report.following {
        println!(
            "  following: {:.0} req/s with a warm window open vs {:.0} without ({:.2}x); standby CPU {:.2} ms per 1000 calls",
            f.open_rps,
            f.closed_rps,
            f.open_rps / f.closed_rps.max(f64::MIN_POSITIVE),
            f.standby_cpu_ms_per_1k_calls
        );
    }
}

/// `drain 0.120/0.450 · snapshot ... ms (p50/p99)`.
fn steps_line(steps: &Steps) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let parts = [
        ("drain", steps.drain),
        ("snapshot", steps.snapshot),
        ("restore", steps.restore),
        ("health", steps.health),
        ("flip", steps.flip),
    ]
    .map(|(name, spread)| format!("{name} {:.3}/{:.3}", ms(spread.p50_us), ms(spread.p99_us)));
    let before = format!(
        "narrow {:.3}/{:.3} ms before it; ",
        ms(steps.narrow.p50_us),
        ms(steps.narrow.p99_us)
    );
    format!("{before}{} ms (p50/p99)", parts.join(" · "))
}

/// The skill a size is measured on: how to deploy its two versions and
/// what the load calls.
struct Subject {
    package: &'static str,
    from: PathBuf,
    to: PathBuf,
    max_memory_mib: Option<u64>,
    op: &'static str,
    body: Bytes,
}

async fn measure(args: &BenchSwapArgs, state_mib: u64) -> anyhow::Result<BenchSwapReport> {
    let (exe, skills) = args.local.resolve()?;
    let subject = if state_mib == 0 {
        Subject {
            package: COUNTER_PACKAGE,
            from: skills.join(COUNTER_FILE),
            to: skills.join("counter_v2.wasm"),
            max_memory_mib: None,
            op: COUNTER_OP,
            body: Bytes::new(),
        }
    } else {
        Subject {
            package: KV_PACKAGE,
            from: skills.join("kv_v1.wasm"),
            to: skills.join("kv_v2.wasm"),
            // The store, the snapshot being built (a growing Vec) and the
            // restore's copies: 64 MiB of state needs about 300 MiB.
            max_memory_mib: Some(state_mib * 6 + 128),
            op: "get",
            body: Bytes::from_static(b"hot"),
        }
    };
    for file in [&subject.from, &subject.to] {
        anyhow::ensure!(
            file.is_file(),
            "{} is missing: build the sample skills",
            file.display()
        );
    }
    eprintln!(
        "bench: starting a throwaway node ({} MiB of state)",
        state_mib
    );
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
    if subject.package != COUNTER_PACKAGE {
        let socket = socket.clone();
        let (package, from, memory) = (
            subject.package,
            subject.from.clone(),
            subject.max_memory_mib,
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            admin_call(&socket, &deploy_request(package, &from, memory))
                .with_context(|| format!("deploying {package}"))?;
            fill_kv(addr, package, state_mib)
        })
        .await
        .context("fill task")??;
    }
    let target = LoadTarget {
        addr,
        path: format!("/v1/skills/{}/{}", subject.package, subject.op),
        body: subject.body.clone(),
    };
    let config = LoadConfig {
        connections: args.connections,
        warmup: Duration::ZERO,
        duration: args.duration,
    };
    let load = {
        let target = target.clone();
        tokio::spawn(async move { run_closed_loop(&target, config).await })
    };
    let deadline = Instant::now() + args.duration;
    let swaps = args.swaps;
    let window = WindowCycle {
        socket: socket.clone(),
        package: subject.package,
        to: subject.to.clone(),
        max_memory_mib: subject.max_memory_mib,
    };
    let cycles = tokio::task::spawn_blocking(move || {
        let mut out = Cycles::default();
        for _ in 0..swaps {
            if Instant::now() >= deadline {
                break;
            }
            let swapped = admin_call(
                &socket,
                &deploy_request(subject.package, &subject.to, subject.max_memory_mib),
            );
            match swapped {
                Ok(v) => {
                    out.swap_pause
                        .push(v["swap"]["timings"]["pause_us"].as_u64().unwrap_or(0));
                    out.swap_steps.push(&v["swap"]["timings"]);
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
                    package: subject.package.into(),
                },
            ) {
                Ok(v) => {
                    out.rollback_wall.push(started.elapsed().as_micros() as u64);
                    out.rollback_pause
                        .push(v["timings"]["pause_us"].as_u64().unwrap_or(0));
                    out.rollback_steps.push(&v["timings"]);
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
    let mut failed_requests = load.errors + load.warmup_errors;
    let following = if args.follow.is_zero() {
        None
    } else {
        // The swap figures above stand even if this part cannot finish
        // (e.g. a window that closed early makes its rollback a swap,
        // which the older version refuses).
        let following = measure_following(
            &window,
            &target,
            args.connections,
            args.follow,
            &mut failed_requests,
        );
        match following.await {
            Ok(cost) => Some(cost),
            Err(error) => {
                eprintln!("bench: following not measured: {error:#}");
                None
            }
        }
    };
    drop(node);
    let mut c = cycles;
    Ok(BenchSwapReport {
        state_mib,
        swaps: c.done,
        aborted: c.aborted,
        failed_requests,
        ok_requests: load.ok,
        swap_pause: Spread::of(&mut c.swap_pause),
        swap_steps: c.swap_steps.spread(),
        rollback_pause: Spread::of(&mut c.rollback_pause),
        rollback_steps: c.rollback_steps.spread(),
        rollback_wall: Spread::of(&mut c.rollback_wall),
        replayed_p50: Spread::of(&mut c.replayed).p50_us,
        state_bytes: c.state_bytes,
        following,
    })
}

/// How to open a warm window (a swap) and close it (a rollback).
struct WindowCycle {
    socket: PathBuf,
    package: &'static str,
    to: PathBuf,
    max_memory_mib: Option<u64>,
}

impl WindowCycle {
    async fn call(&self, request: AdminRequest) -> anyhow::Result<serde_json::Value> {
        let socket = self.socket.clone();
        Ok(
            tokio::task::spawn_blocking(move || admin_call(&socket, &request))
                .await
                .context("admin task")??,
        )
    }

    /// Swaps; returns the standby's pid.
    async fn open(&self) -> anyhow::Result<u32> {
        self.call(deploy_request(self.package, &self.to, self.max_memory_mib))
            .await
            .context("swapping to open a window")?;
        let status = self.call(AdminRequest::Status).await?;
        status["skills"]
            .as_array()
            .and_then(|skills| {
                skills
                    .iter()
                    .find(|s| s["package"] == self.package && s["role"] == "standby")
            })
            .and_then(|s| s["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
            .context("no warm standby after the swap")
    }

    async fn close(&self) -> anyhow::Result<()> {
        let rolled = self
            .call(AdminRequest::Rollback {
                package: self.package.into(),
            })
            .await;
        if let Err(error) = rolled {
            // Say why the window was no longer open, if the node knows.
            let why = self.call(AdminRequest::Status).await.ok().and_then(|s| {
                s["swap"].as_array().and_then(|packages| {
                    packages
                        .iter()
                        .find(|p| p["package"] == self.package)
                        .and_then(|p| p["window_closed"].as_str().map(str::to_string))
                })
            });
            return Err(error.context(format!(
                "rolling back to close the window (window closed because: {})",
                why.as_deref().unwrap_or("unknown")
            )));
        }
        Ok(())
    }
}

/// Runs the load for `each` with no window open, then with one open,
/// twice; returns the cost, and adds the requests that failed to `failed`.
async fn measure_following(
    window: &WindowCycle,
    target: &LoadTarget,
    connections: usize,
    each: Duration,
    failed: &mut u64,
) -> anyhow::Result<FollowingCost> {
    let config = LoadConfig {
        connections,
        warmup: Duration::ZERO,
        duration: each,
    };
    let (mut closed, mut open) = ((0u64, 0f64), (0u64, 0f64));
    let mut standby_secs = 0f64;
    for _ in 0..2 {
        let load = run_closed_loop(target, config).await;
        *failed += load.errors + load.warmup_errors;
        closed = (closed.0 + load.ok, closed.1 + load.window.as_secs_f64());
        let standby = window.open().await?;
        let before = cpu_seconds(standby)?;
        let load = run_closed_loop(target, config).await;
        *failed += load.errors + load.warmup_errors;
        // The standby catches up before the rollback's pause: all the
        // calls of the run are applied once the rollback returns.
        window.close().await?;
        standby_secs += cpu_seconds(standby)? - before;
        open = (open.0 + load.ok, open.1 + load.window.as_secs_f64());
    }
    let per_sec = |(calls, secs): (u64, f64)| calls as f64 / secs.max(f64::MIN_POSITIVE);
    Ok(FollowingCost {
        closed_rps: per_sec(closed),
        open_rps: per_sec(open),
        standby_cpu_ms_per_1k_calls: standby_secs * 1e6 / (open.0.max(1) as f64),
    })
}

/// User + system CPU of process `pid` so far, seconds (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which ends at the last ')': the
    // state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: no field {}", index + 3))
    };
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .context("clock ticks per second unknown")?;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_sec as f64)
}

fn deploy_request(
    package: &str,
    wasm: &std::path::Path,
    max_memory_mib: Option<u64>,
) -> AdminRequest {
    AdminRequest::DeployWasm {
        package: package.into(),
        path: wasm.display().to_string(),
        version: None,
        max_memory_mib,
    }
}

/// Puts `mib` MiB of 64 KiB values into the kv sample, plus the small key
/// the load reads.
fn fill_kv(addr: std::net::SocketAddr, package: &str, mib: u64) -> anyhow::Result<()> {
    let path = format!("/v1/skills/{package}/put");
    post(addr, &path, b"hot\nx")?;
    let values = (mib as usize * (1 << 20)).div_ceil(KV_VALUE_BYTES);
    for i in 0..values {
        let mut body = format!("fill{i:05}\n").into_bytes();
        body.extend((0..KV_VALUE_BYTES).map(|j| (i.wrapping_mul(31) + j) as u8));
        post(addr, &path, &body)?;
    }
    Ok(())
}

/// One blocking HTTP/1.1 POST; fails unless the answer is 200.
fn post(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).context("connecting to the node")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.take(1 << 20).read_to_end(&mut answer)?;
    let status = answer.get(9..12).unwrap_or_default();
    anyhow::ensure!(
        status == b"200",
        "POST {path}: {}",
        String::from_utf8_lossy(&answer[..answer.len().min(300)])
    );
    Ok(())
}

#[derive(Debug, Default)]
struct Cycles {
    done: u32,
    aborted: u32,
    swap_pause: Vec<u64>,
    swap_steps: StepSamples,
    rollback_pause: Vec<u64>,
    rollback_steps: StepSamples,
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
