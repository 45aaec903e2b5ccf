//! The `clawmesh` command line: argument definitions and dispatch. Each
//! command's work lives in its own module; this file only routes.

mod demo;
mod doctor;

mod keys;
mod mesh_cmds;
mod node_cmds;
mod pack;
mod publish;
mod sim;
pub mod ui;

pub use pack::DEFAULT_ABI_WORLD;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// Exit code of a command that failed.
pub const EXIT_FAILURE: u8 = 1;

/// clawmesh: a leaderless peer-to-peer release mesh for WebAssembly skills.
#[derive(Debug, Parser)]
#[command(name = "clawmesh", version, about)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,clawmesh_node=debug`.
    #[arg(long, global = true, env = "CLAWMESH_LOG", default_value = "warn")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command; the names are a contract scripts rely on.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publisher keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Trust roots (which publisher keys a mesh accepts).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Make a signed package file from a skill component.
    Pack(PackArgs),
    /// Verify a package file and store it in a node's data dir.
    Publish(PublishArgs),
    /// Run a node.
    Node(crate::daemon::NodeArgs),
    /// Host one skill version (started by the node; not for people).
    #[command(hide = true)]
    Worker(crate::runtime::WorkerArgs),
    /// Deploy a published package on a local node (admin socket).
    Deploy(DeployArgs),
    /// Sign and submit a release intent.
    Release(ReleaseArgs),
    /// Sign and submit a rollback intent.
    Rollback(RollbackArgs),
    /// Show what the mesh runs: nodes × packages.
    Status(StatusArgs),
    /// Call a skill on a node.
    Invoke(InvokeArgs),
    /// Fetch a package's blob from peers.
    Fetch(crate::fetch::cli::FetchArgs),
    /// Sidecar: hot-swap a skill on every rebuild.
    Dev(crate::dev::DevArgs),
    /// Run partition simulations.
    Sim(sim::SimArgs),
    /// Benchmarks that print figures against a baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Resolve the dependencies of packages in a node's store.
    Resolve(ResolveArgs),
    /// Delete blobs no stored manifest references.
    Gc(GcArgs),
    /// Show the whole story on this machine.
    Demo(DemoArgs),
    /// Check what this host offers clawmesh (cgroups, memfd, toolchain...).
    Doctor(DoctorArgs),
    /// Print shell completions.
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },
}

/// `clawmesh bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Invoke throughput and latency against plain hyper.
    Invoke(crate::bench::BenchInvokeArgs),
    /// Release intent → Active on every node of a local mesh.
    Release(crate::bench_release::BenchReleaseArgs),
    /// Peer-to-peer blob fetch against a raw libp2p stream copy.
    Fetch(crate::fetch::bench::BenchFetchArgs),
    /// Hot swaps and rollbacks under closed-loop load.
    Swap(crate::swap::BenchSwapArgs),
}

/// `clawmesh key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a publisher key (file mode 0600); prints its key id.
    Gen {
        /// Where to write the secret key; the public part goes to FILE.pub.
        #[arg(long, short)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// `clawmesh trust ...`
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Write a trust root listing publisher keys and a signature threshold.
    Init {
        /// A publisher key file (secret or `.pub`); repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Signatures needed on every manifest and intent.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// Where to write the trust root (TOML).
        #[arg(long, short)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// `clawmesh pack ...`
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The skill component (.wasm).
    pub wasm: PathBuf,
    /// Package name, reverse-DNS (e.g. com.example.counter).
    #[arg(long)]
    pub name: String,
    /// Semantic version.
    #[arg(long)]
    pub version: String,
    /// Dependency `PKG@RANGE` or `PKG@RANGE,shared`; repeat for several.
    #[arg(long = "dep")]
    pub deps: Vec<String>,
    /// Publisher key file; repeat to add signatures.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Output package file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// WIT world the component targets.
    #[arg(long, default_value = pack::DEFAULT_ABI_WORLD)]
    pub abi_world: String,
    /// State schema version its snapshot writes.
    #[arg(long, default_value_t = 1)]
    pub state_schema: u32,
    /// Memory the skill asks for, in MiB (0 = node default).
    #[arg(long, default_value_t = 0)]
    pub max_memory_mib: u64,
    /// Description for people.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// Where a command finds a node.
#[derive(Debug, Args, Clone)]
pub struct NodeDir {
    /// The node's data directory.
    #[arg(long = "node", env = "CLAWMESH_NODE")]
    pub node: PathBuf,
}

/// `clawmesh publish ...`
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Package file made by `clawmesh pack`.
    pub file: PathBuf,
    /// Expected sha256 of the blob (refused unless it matches).
    #[arg(long)]
    pub sha256: Option<String>,
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
    /// Trust root (default: the node's trust.toml).
    #[arg(long, env = "CLAWMESH_TRUST")]
    pub trust: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `clawmesh deploy ...`
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// What to run, `PKG@VERSION` (published on that node).
    pub target: String,
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `clawmesh status ...`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// `clawmesh release ...`
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// What every node should run, `PKG@VERSION`.
    pub target: String,
    /// Publisher key that signs the intent.
    #[arg(long)]
    pub key: PathBuf,
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `clawmesh rollback ...`
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Package to roll back.
    pub package: String,
    /// Version to go back to (default: the highest published version below
    /// the current target that is not quarantined).
    #[arg(long)]
    pub to: Option<String>,
    /// Publisher key that signs the intent.
    #[arg(long)]
    pub key: PathBuf,
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `clawmesh invoke ...`
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Package to call.
    pub package: String,
    /// Operation.
    pub op: String,
    /// Input: `@FILE`, `-` for stdin, or the literal text.
    #[arg(long)]
    pub data: Option<String>,
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
}

/// `clawmesh resolve ...`
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Root skills to run together, `PKG@VERSION`.
    #[arg(required = true)]
    pub roots: Vec<String>,
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
    /// Trust root (default: the node's trust.toml).
    #[arg(long, env = "CLAWMESH_TRUST")]
    pub trust: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `clawmesh gc ...`
#[derive(Debug, Args)]
pub struct GcArgs {
    /// The node.
    #[command(flatten)]
    pub node: NodeDir,
    /// Trust root (default: the node's trust.toml).
    #[arg(long, env = "CLAWMESH_TRUST")]
    pub trust: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `clawmesh demo ...`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep everything here instead of a temp dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the built sample skills are.
    #[arg(long, env = "CLAWMESH_SKILLS_DIR")]
    pub skills_dir: Option<PathBuf>,
    /// Machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Leave the mesh running at the end and print how to talk to it.
    #[arg(long)]
    pub keep: bool,
}

/// `clawmesh doctor ...`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ui::Ui::from_env_stderr().color())
        .try_init();
}

/// Default directory of the built sample skills.
pub fn default_skills_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../skills/target/wasm32-wasip2/release"
    ))
}

/// Parses the command line, runs the command, and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let ui = ui::Ui::from_env_stderr();
            eprintln!("{} {e:#}", ui.bad("error:"));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Key(KeyCommand::Gen { out, force }) => keys::key_gen(&out, force),
        Command::Trust(TrustCommand::Init {
            keys: key_files,
            threshold,
            out,
            force,
        }) => keys::trust_init(&key_files, threshold, &out, force),
        Command::Pack(args) => pack::pack(&args),
        Command::Publish(args) => publish::publish(&args),
        Command::Resolve(args) => publish::resolve(&args),
        Command::Gc(args) => publish::gc(&args),
        Command::Demo(args) => demo::demo(&args),
        Command::Doctor(args) => doctor::doctor(&args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "clawmesh",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(args) => {
            crate::daemon::run_node(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            crate::runtime::run_worker(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy(args) => node_cmds::deploy(&args),
        Command::Release(args) => mesh_cmds::release(&args),
        Command::Rollback(args) => mesh_cmds::rollback(&args),
        Command::Status(args) => mesh_cmds::status(&args),
        Command::Invoke(args) => node_cmds::invoke(&args),
        Command::Fetch(args) => crate::fetch::cli::run_fetch_command(args),
        Command::Dev(args) => crate::dev::run_dev(args),
        Command::Sim(args) => sim::sim(&args),
        Command::Bench(BenchCommand::Invoke(args)) => crate::bench::run_bench_invoke(args),
        Command::Bench(BenchCommand::Release(args)) => {
            crate::bench_release::run_bench_release(args)
        }
        Command::Bench(BenchCommand::Fetch(args)) => crate::fetch::bench::run_bench_fetch(args),
        Command::Bench(BenchCommand::Swap(args)) => crate::swap::run_bench_swap(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
