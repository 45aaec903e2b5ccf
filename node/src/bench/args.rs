//! `clawmesh bench invoke` options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::duration_arg::parse_duration;

/// Most connections a run opens: each costs two descriptors and a task.
pub const MAX_CONNECTIONS: usize = 20_000;

/// `clawmesh bench invoke`: closed-loop HTTP load on a skill, beside a plain
/// hyper "hello" endpoint loaded the same way in the same run.
///
/// Without `--node`, a throwaway node is started with the counter sample
/// skill and `POST /v1/skills/dev.clawmesh.counter/add` is loaded. Exits 1
/// when any request failed in the measured window.
#[derive(Debug, Clone, Args)]
pub struct BenchInvokeArgs {
    /// Concurrent keep-alive connections, each sending its next request when
    /// the previous one is answered.
    #[arg(short = 'c', long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECTIONS as u64))]
    pub connections: u64,
    /// How long to measure (e.g. 10s, 500ms).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load applied before measuring, not counted (e.g. 2s, 0s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Measure a running node (its data directory) instead of a throwaway one.
    #[arg(long = "node", value_name = "DIR", requires_all = ["package", "op"])]
    pub node: Option<PathBuf>,
    /// Package to invoke on `--node`.
    #[arg(value_name = "PKG", requires = "node")]
    pub package: Option<String>,
    /// Operation to invoke on `--node`.
    #[arg(value_name = "OP", requires = "node")]
    pub op: Option<String>,
    /// Request body sent with every call (literal text; empty by default,
    /// which the counter's `add` reads as 1).
    #[arg(long, default_value = "")]
    pub data: String,
    /// What the throwaway node runs.
    #[command(flatten)]
    pub local: LocalBinaries,
    /// Machine-readable figures on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The binary and sample skills a bench starts its own nodes from.
#[derive(Debug, Clone, Default, Args)]
pub struct LocalBinaries {
    /// Where the built sample skills are.
    #[arg(long, env = "CLAWMESH_SKILLS_DIR")]
    pub skills_dir: Option<PathBuf>,
    /// The clawmesh binary the bench's nodes run (default: this one).
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,
}

impl LocalBinaries {
    /// The clawmesh binary and the sample skills directory, defaults filled in.
    pub fn resolve(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let exe = match &self.exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().context("locating the clawmesh binary")?,
        };
        let skills = self
            .skills_dir
            .clone()
            .unwrap_or_else(crate::cli::default_skills_dir);
        Ok((exe, skills))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        args: BenchInvokeArgs,
    }

    #[test]
    fn defaults_match_the_issue() {
        let h = Harness::try_parse_from(["bench"]).unwrap();
        assert_eq!(h.args.connections, 100);
        assert_eq!(h.args.duration, Duration::from_secs(10));
        assert_eq!(h.args.warmup, Duration::from_secs(2));
        assert!(h.args.node.is_none());
    }

    #[test]
    fn a_running_node_needs_package_and_op() {
        let h = Harness::try_parse_from([
            "bench", "-c", "4", "-d", "500ms", "--node", "/n", "dev.x", "get",
        ])
        .unwrap();
        assert_eq!(h.args.connections, 4);
        assert_eq!(h.args.duration, Duration::from_millis(500));
        assert_eq!(h.args.package.as_deref(), Some("dev.x"));
        assert_eq!(h.args.op.as_deref(), Some("get"));
        assert!(Harness::try_parse_from(["bench", "--node", "/n"]).is_err());
        assert!(Harness::try_parse_from(["bench", "dev.x", "get"]).is_err());
        assert!(Harness::try_parse_from(["bench", "-c", "0"]).is_err());
        assert!(Harness::try_parse_from(["bench", "-d", "10"]).is_err());
    }
}
