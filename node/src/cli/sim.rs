//! `clawmesh sim`: partition simulations of the mesh, reproducible from a seed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clawmesh_simulations::{SimConfig, render_svg, run, scenario_by_name, sweep};

/// `clawmesh sim` options.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario: a built-in name (steady, split-brain, rolling-partition,
    /// flapping-link, churn-rollout, quarantine) or a path to a TOML file.
    #[arg(long, default_value = "split-brain")]
    pub scenario: String,
    /// Nodes (default: the scenario's).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Seed of the run (or the first seed of a sweep).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Sweep this many seeds from --seed and list the failing ones.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Draw convergence over time into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Runs `clawmesh sim`; exits 1 when an invariant was violated.
pub fn sim(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let scenario = if args.scenario.ends_with(".toml") {
        let text = std::fs::read_to_string(&args.scenario)
            .with_context(|| format!("reading {}", args.scenario))?;
        clawmesh_simulations::Scenario::from_toml(&text)
            .with_context(|| format!("scenario {}", args.scenario))?
    } else {
        scenario_by_name(&args.scenario)?
    };
    let mut config = SimConfig::new(scenario, args.seed);
    if let Some(n) = args.nodes {
        config = config.with_nodes(n);
    }
    if let Some(runs) = args.runs {
        let report = sweep(config, args.seed..args.seed.saturating_add(runs));
        print!("{}", report.to_table());
        return Ok(if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(super::EXIT_FAILURE)
        });
    }
    let report = run(config)?;
    if let Some(path) = &args.plot {
        std::fs::write(path, render_svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}
