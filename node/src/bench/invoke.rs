//! `clawmesh bench invoke`: the skill hot path under closed-loop load,
//! next to a plain hyper server loaded the same way in the same run.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::body::Bytes;

use super::args::BenchInvokeArgs;
use super::fd_limit::{fds_needed, raise_fd_limit};
use super::hello_server::HelloServer;
use super::load::{LoadConfig, LoadTarget, run_closed_loop};
use super::report::{BenchInvokeReport, EndpointFigures};
use super::throwaway_node::{COUNTER_OP, COUNTER_PACKAGE, ThrowawayNode};
use crate::cli::EXIT_FAILURE;
use crate::cli::ui::Ui;
use crate::daemon::NodeInfo;
use crate::data_dir::DataDir;

/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells expect).
pub const EXIT_INTERRUPTED: u8 = 130;
/// How long the loader's runtime waits for its tasks when the run ends.
const LOADER_SHUTDOWN: Duration = Duration::from_secs(1);

/// Runs `clawmesh bench invoke`: prints the figures (a table, or JSON with
/// `--json`) and exits 1 when a request failed in a measured window.
pub fn run_bench_invoke(args: BenchInvokeArgs) -> anyhow::Result<ExitCode> {
    let Some(report) = measure_invoke(&args)? else {
        eprintln!("bench: interrupted; the throwaway node is stopped and its files removed");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render(&Ui::from_env()));
    }
    Ok(if report.had_errors() {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Does the whole run (raise the open-file limit, start the throwaway node
/// unless `--node`, load the hello baseline then the skill, stop the node)
/// and returns the figures; `None` when SIGINT or SIGTERM cut it short.
pub fn measure_invoke(args: &BenchInvokeArgs) -> anyhow::Result<Option<BenchInvokeReport>> {
    let connections = usize::try_from(args.connections).context("--connections")?;
    let fd_limit = match raise_fd_limit(fds_needed(connections)) {
        Ok(limit) => {
            if !limit.is_enough() {
                eprintln!(
                    "bench: open-file limit {} is below the {} descriptors {connections} connections need (hard limit {}); expect connection errors",
                    limit.soft, limit.needed, limit.hard
                );
            }
            Some(limit)
        }
        Err(e) => {
            eprintln!("bench: {e}; continuing with the current limit");
            None
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    // The loader's own runtime: its threads are never shared with a server.
    let loader = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .thread_name("bench-loader")
        .enable_all()
        .build()
        .context("starting the loader's runtime")?;
    let outcome = loader.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Installed before any child exists, so an interrupt always reaches
        // the clean-up (dropping the run stops the node) instead of killing
        // this process mid-run.
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            report = bench(args, connections, cpus) => report.map(Some),
            _ = interrupt.recv() => Ok(None),
            _ = terminate.recv() => Ok(None),
        }
    });
    loader.shutdown_timeout(LOADER_SHUTDOWN);
    Ok(outcome?.map(|mut report| {
        report.fd_limit = fd_limit;
        report
    }))
}

/// Where the skill load goes, and what keeps it alive.
struct SkillTarget {
    target: LoadTarget,
    label: String,
    node: String,
    /// The throwaway node, stopped when this is dropped.
    throwaway: Option<ThrowawayNode>,
}

async fn skill_target(args: &BenchInvokeArgs) -> anyhow::Result<SkillTarget> {
    let body = Bytes::from(args.data.clone().into_bytes());
    if let Some(dir) = &args.node {
        let (Some(package), Some(op)) = (&args.package, &args.op) else {
            bail!("--node DIR needs PKG and OP");
        };
        let info = NodeInfo::read(&DataDir::new(dir).node_json())?;
        return Ok(SkillTarget {
            target: LoadTarget {
                addr: http_addr(&info).await?,
                path: format!("/v1/skills/{package}/{op}"),
                body,
            },
            label: format!("invoke {op}"),
            node: dir.display().to_string(),
            throwaway: None,
        });
    }
    let (exe, skills) = args.local.resolve()?;
    eprintln!("bench: starting a throwaway node with {COUNTER_PACKAGE}");
    let node = ThrowawayNode::start(&exe, &skills).await?;
    eprintln!(
        "bench: {COUNTER_PACKAGE} deployed in {:.1} ms on {}",
        node.deploy_millis, node.info.http
    );
    Ok(SkillTarget {
        target: LoadTarget {
            addr: http_addr(&node.info).await?,
            path: format!("/v1/skills/{COUNTER_PACKAGE}/{COUNTER_OP}"),
            body,
        },
        label: format!("invoke counter {COUNTER_OP}"),
        node: "throwaway".into(),
        throwaway: Some(node),
    })
}

/// The socket address of a node's `http://host:port` URL.
async fn http_addr(info: &NodeInfo) -> anyhow::Result<std::net::SocketAddr> {
    let Some(host_port) = info.http.strip_prefix("http://") else {
        bail!(
            "node.json http {:?}: only plain http:// is benchmarked",
            info.http
        );
    };
    let host_port = host_port.trim_end_matches('/');
    tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} resolves to no address"))
}

async fn bench(
    args: &BenchInvokeArgs,
    connections: usize,
    cpus: usize,
) -> anyhow::Result<BenchInvokeReport> {
    let config = LoadConfig {
        connections,
        warmup: args.warmup,
        duration: args.duration,
    };
    let skill = skill_target(args).await?;

    // The baseline gets as many threads as the node's runtime has.
    let hello = HelloServer::start(cpus)?;
    let hello_target = LoadTarget {
        addr: hello.addr(),
        path: "/".into(),
        body: skill.target.body.clone(),
    };
    eprintln!("bench: loading plain hyper hello ({})", hello_target.url());
    let hello_report = run_closed_loop(&hello_target, config).await;
    drop(hello);

    eprintln!("bench: loading {} ({})", skill.label, skill.target.url());
    let invoke_report = run_closed_loop(&skill.target, config).await;
    if let Some(node) = skill.throwaway {
        node.stop();
    }

    let invoke = EndpointFigures::new(&skill.label, skill.target.url(), &invoke_report);
    let hello = EndpointFigures::new("plain hyper hello", hello_target.url(), &hello_report);
    Ok(BenchInvokeReport {
        connections,
        warmup_secs: args.warmup.as_secs_f64(),
        duration_secs: args.duration.as_secs_f64(),
        cpus,
        fd_limit: None,
        node: skill.node,
        goals: BenchInvokeReport::check(&invoke, &hello),
        invoke,
        hello,
    })
}
