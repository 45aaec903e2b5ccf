//! `clawmesh bench`: benchmarks that print figures against a baseline
//! measured in the same run. Not timed tests: they report, they never assert.

pub mod args;
pub mod duration_arg;
pub mod fd_limit;
pub mod hello_server;
pub mod histogram;
pub mod invoke;
pub mod load;
pub mod report;
pub mod throwaway_node;

pub use args::{BenchInvokeArgs, LocalBinaries};
pub use histogram::LatencyHistogram;
pub use invoke::{measure_invoke, run_bench_invoke};
pub use report::BenchInvokeReport;
