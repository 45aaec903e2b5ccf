//! The `clawmesh` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    clawmesh_node::cli::main()
}
