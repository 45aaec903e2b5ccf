//! Commands that speak to the mesh through a node: `release`, `rollback`,
//! and the mesh-wide `status` table.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clawmesh_crdt::{Intent, IntentAction, SignedIntent};

use super::keys::read_secret_key;
use super::ui::Ui;
use super::{NodeDir, ReleaseArgs, RollbackArgs, StatusArgs};
use crate::daemon::admin_call;
use crate::daemon::admin_protocol::AdminRequest;
use crate::daemon::mesh_admin::MeshRequest;
use crate::data_dir::DataDir;

fn mesh_call(node: &NodeDir, request: MeshRequest) -> anyhow::Result<serde_json::Value> {
    Ok(admin_call(
        &DataDir::new(&node.node).admin_socket(),
        &AdminRequest::Mesh(request),
    )?)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Signs an intent one past the node's known clock and submits it.
fn submit_intent(
    node: &NodeDir,
    key: &Path,
    package: &str,
    version: &str,
    action: IntentAction,
) -> anyhow::Result<serde_json::Value> {
    let key = read_secret_key(key)?;
    let known = mesh_call(
        node,
        MeshRequest::IntentClock {
            package: package.into(),
        },
    )?;
    let clock = known["clock"].as_u64().context("node answered no clock")? + 1;
    let intent = Intent {
        package: package.parse().context("package")?,
        version: semver::Version::parse(version).with_context(|| format!("version {version:?}"))?,
        action,
        clock,
        author: key.key_id().clone(),
        issued_at_ms: unix_ms(),
        rollout_max_parallel_percent: 100,
    };
    let signed = SignedIntent::sign(intent, &key).context("signing the intent")?;
    let envelope_hex = hex::encode(signed.envelope_bytes());
    let mut done = mesh_call(
        node,
        MeshRequest::SubmitIntent {
            envelope_hex: envelope_hex.clone(),
        },
    )?;
    done["envelope_hex"] = serde_json::Value::String(envelope_hex);
    Ok(done)
}

/// Runs `clawmesh release`.
pub fn release(args: &ReleaseArgs) -> anyhow::Result<ExitCode> {
    let Some((package, version)) = args.target.split_once('@') else {
        bail!("{:?}: expected PKG@VERSION", args.target);
    };
    // The package must be in the catalog: announce it from this node's store
    // if it was published here (harmless if it is already there).
    if let Err(e) = mesh_call(
        &args.node,
        MeshRequest::Announce {
            package: package.into(),
            version: version.into(),
        },
    ) {
        tracing::debug!(error = %e, "not announced from this node's store");
    }
    let done = submit_intent(
        &args.node,
        &args.key,
        package,
        version,
        IntentAction::Deploy,
    )?;
    print_intent(&done, args.json)
}

/// Runs `clawmesh rollback`.
pub fn rollback(args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let version = match &args.to {
        Some(v) => v.clone(),
        None => {
            let t = mesh_call(
                &args.node,
                MeshRequest::RollbackTarget {
                    package: args.package.clone(),
                },
            )?;
            t["version"]
                .as_str()
                .context("node answered no version")?
                .to_string()
        }
    };
    let done = submit_intent(
        &args.node,
        &args.key,
        &args.package,
        &version,
        IntentAction::Rollback,
    )?;
    print_intent(&done, args.json)
}

fn print_intent(done: &serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(done)?);
    } else {
        println!(
            "{} {} {}@{} (clock {}, intent {}…)",
            Ui::from_env().ok("submitted"),
            done["action"].as_str().unwrap_or("?").to_lowercase(),
            done["package"].as_str().unwrap_or("?"),
            done["version"].as_str().unwrap_or("?"),
            done["clock"],
            done["digest"]
                .as_str()
                .map(|d| &d[..16.min(d.len())])
                .unwrap_or("?"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders the mesh status as a table of nodes × packages.
pub fn render_mesh_status(status: &serde_json::Value, ui: &Ui) -> String {
    let mut out = String::new();
    let targets = status["targets"].as_object().cloned().unwrap_or_default();
    let nodes = status["nodes"].as_object().cloned().unwrap_or_default();
    let mut packages: Vec<String> = targets.keys().cloned().collect();
    for row in nodes.values() {
        for p in row.as_object().into_iter().flat_map(|o| o.keys()) {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
    }
    packages.sort();
    out.push_str(&format!(
        "node {}  peers {}\n",
        status["node"].as_str().unwrap_or("?"),
        status["peers"].as_array().map(Vec::len).unwrap_or(0)
    ));
    for p in &packages {
        let t = &targets.get(p).cloned().unwrap_or_default();
        out.push_str(&format!(
            "target {p} = {}{}\n",
            t["version"].as_str().unwrap_or("-"),
            if t["paused"].as_bool() == Some(true) {
                " (paused)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!("{:<54}", "NODE"));
    for p in &packages {
        out.push_str(&format!(" {:<30}", p));
    }
    out.push('\n');
    for (node, row) in &nodes {
        out.push_str(&format!("{node:<54}"));
        for p in &packages {
            let cell = &row[p];
            let text = match cell["state"].as_str() {
                Some(state) => format!(
                    "{state} {}",
                    cell["running"]
                        .as_str()
                        .or(cell["version"].as_str())
                        .unwrap_or("")
                ),
                None => "-".into(),
            };
            let lower = text.to_ascii_lowercase();
            let painted = if lower.starts_with("active") {
                ui.ok(&format!("{text:<30}"))
            } else if lower.starts_with("failed") || lower.starts_with("rolling") {
                ui.bad(&format!("{text:<30}"))
            } else {
                format!("{text:<30}")
            };
            out.push(' ');
            out.push_str(&painted);
        }
        out.push('\n');
    }
    for q in status["quarantine"].as_array().into_iter().flatten() {
        out.push_str(&format!("quarantined {}\n", q.as_str().unwrap_or("?")));
    }
    for r in status["rejected"].as_array().into_iter().flatten() {
        out.push_str(&format!("ignored entry {}\n", r.as_str().unwrap_or("?")));
    }
    for r in status["refused"].as_array().into_iter().flatten() {
        out.push_str(&format!("refused {}\n", r.as_str().unwrap_or("?")));
    }
    out
}

/// Runs `clawmesh status` (mesh-wide when the node runs the mesh).
pub fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let ui = Ui::from_env();
    loop {
        let mesh = mesh_call(&args.node, MeshRequest::MeshStatus);
        let local = admin_call(
            &DataDir::new(&args.node.node).admin_socket(),
            &AdminRequest::Status,
        )?;
        let combined = serde_json::json!({ "mesh": mesh.as_ref().ok(), "local": local });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&combined)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            match &mesh {
                Ok(m) => print!("{}", render_mesh_status(m, &ui)),
                Err(e) => println!("mesh: {e}"),
            }
            print!("{}", super::node_cmds::render_local_status(&local, &ui));
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
