//! `clawmesh bench invoke` end to end: a real throwaway node process (the
//! `clawmesh` binary) with the counter sample, loaded next to the plain
//! hyper baseline. Asserts that the run completes cleanly and reports
//! figures, never what the figures are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use clawmesh_node::bench::{BenchInvokeArgs, LocalBinaries, measure_invoke};
use clawmesh_node::cli::ui::Ui;

fn skills_dir() -> PathBuf {
    std::env::var_os("CLAWMESH_SKILLS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../skills/target/wasm32-wasip2/release"),
        PathBuf::from,
    )
}

#[test]
fn bench_invoke_against_a_throwaway_node_reports_figures_without_errors() {
    let args = BenchInvokeArgs {
        connections: 4,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        node: None,
        package: None,
        op: None,
        data: String::new(),
        local: LocalBinaries {
            skills_dir: Some(skills_dir()),
            exe: Some(env!("CARGO_BIN_EXE_clawmesh").into()),
        },
        json: false,
    };
    let report = measure_invoke(&args).unwrap().expect("not interrupted");

    assert_eq!(report.connections, 4);
    assert_eq!(report.node, "throwaway");
    assert!(
        report
            .invoke
            .url
            .ends_with("/v1/skills/dev.clawmesh.counter/add"),
        "{}",
        report.invoke.url
    );
    for e in [&report.invoke, &report.hello] {
        assert_eq!(
            (e.errors, e.warmup_errors),
            (0, 0),
            "{}: {:?}",
            e.label,
            e.error_samples
        );
        assert!(e.requests > 0, "{}: nothing answered", e.label);
        assert!(e.requests_per_sec > 0.0);
        assert!(
            e.p50_us > 0.0 && e.p50_us <= e.p90_us && e.p90_us <= e.p99_us && e.p99_us <= e.max_us,
            "{e:?}"
        );
        assert!(e.connects >= 4);
    }
    assert!(report.goals.ratio > 0.0);
    assert!(report.goals.zero_errors);
    assert!(!report.had_errors());

    let table = report.render(&Ui::from_env());
    println!("{table}");
    for needle in [
        "req/s",
        "p50",
        "p99",
        "max",
        "errors",
        "invoke counter add",
        "plain hyper hello",
        "invoke/hello",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["invoke"]["p99_us"].as_f64().unwrap() > 0.0, "{json}");
}
