//! Runs one scenario and prints the table: `cargo run -p clawmesh-simulations
//! --example run_one -- SCENARIO|FILE.toml SEED [NODES [PLOT.svg]]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("steady");
    let seed: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let scenario = if name.ends_with(".toml") {
        clawmesh_simulations::Scenario::from_toml(&std::fs::read_to_string(name)?)?
    } else {
        clawmesh_simulations::scenario_by_name(name)?
    };
    let mut config = clawmesh_simulations::SimConfig::new(scenario, seed);
    if let Some(nodes) = args.get(3) {
        config = config.with_nodes(nodes.parse()?);
    }
    let report = clawmesh_simulations::run(config)?;
    print!("{}", report.to_table());
    if let Some(path) = args.get(4) {
        std::fs::write(path, clawmesh_simulations::render_svg(&report))?;
    }
    Ok(())
}
