//! `clawmesh bench invoke` until the CLI routes to it: the same options, the
//! same run. The throwaway node is the `clawmesh` binary built beside this
//! example (`target/<profile>/clawmesh`) unless `--exe` says otherwise, so
//! build both first: `cargo build --release -p clawmesh-node --bin clawmesh
//! --example bench_invoke`.

use std::process::ExitCode;

use clap::Parser;
use clawmesh_node::bench::{BenchInvokeArgs, run_bench_invoke};

/// Closed-loop load on a skill next to a plain hyper baseline.
#[derive(Debug, Parser)]
#[command(name = "bench_invoke")]
struct Options {
    #[command(flatten)]
    args: BenchInvokeArgs,
}

fn main() -> ExitCode {
    let mut options = Options::parse();
    if options.args.exe.is_none() {
        // target/<profile>/examples/bench_invoke → target/<profile>/clawmesh
        options.args.exe = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("clawmesh")));
    }
    match run_bench_invoke(options.args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
