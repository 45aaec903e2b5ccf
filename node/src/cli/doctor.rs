//! `clawmesh doctor`: what this host offers clawmesh, checked for real
//! (a probe cgroup is made and removed, a state segment is created and
//! written), so "degraded" is never a surprise found later.

use std::process::ExitCode;

use serde::Serialize;

use super::DoctorArgs;
use super::ui::Ui;
use crate::runtime::{CgroupLimits, CgroupManager, CgroupSupport};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Works.
    Ok,
    /// Works with less than full protection or speed; clawmesh runs.
    Degraded,
    /// A part of clawmesh cannot run here.
    Missing,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

fn cgroups() -> Check {
    let manager = CgroupManager::detect(&format!("doctor-{}", std::process::id()));
    let support = manager.support().clone();
    if let CgroupSupport::Unavailable { reason } = &support {
        return check(
            "cgroups",
            Verdict::Degraded,
            format!("unavailable: skills run without kernel memory/pids/cpu limits ({reason})"),
        );
    }
    let verdict = match manager.create("probe", &CgroupLimits::default()) {
        Ok(Some(cg)) => match cg.remove() {
            Ok(()) => check(
                "cgroups",
                Verdict::Ok,
                format!(
                    "{}: a probe cgroup with memory, pids and cpu limits was made and removed",
                    support.label()
                ),
            ),
            Err(e) => check(
                "cgroups",
                Verdict::Degraded,
                format!("{}: probe made but not removed: {e}", support.label()),
            ),
        },
        Ok(None) => check("cgroups", Verdict::Degraded, "no cgroup could be made"),
        Err(e) => check(
            "cgroups",
            Verdict::Degraded,
            format!(
                "{} detected but a probe cgroup failed: {e}",
                support.label()
            ),
        ),
    };
    // `detect` made this probe's node directories; leave nothing behind.
    manager.remove_node_dirs();
    verdict
}

fn state_segment() -> Check {
    match clawmesh_shm::StateSegment::create(4096) {
        Ok(mut seg) => match seg.publish(1, b"doctor") {
            Ok(_) => match seg.read() {
                Ok(snap) if snap.payload == b"doctor" => check(
                    "state segment",
                    Verdict::Ok,
                    "memfd created, sealed, written and read back (hot swap can move state)",
                ),
                Ok(_) => check(
                    "state segment",
                    Verdict::Missing,
                    "read back different bytes",
                ),
                Err(e) => check(
                    "state segment",
                    Verdict::Missing,
                    format!("read failed: {e}"),
                ),
            },
            Err(e) => check(
                "state segment",
                Verdict::Missing,
                format!("publish failed: {e}"),
            ),
        },
        Err(e) => check(
            "state segment",
            Verdict::Missing,
            format!("memfd unavailable: {e}"),
        ),
    }
}

fn dev_shm() -> Check {
    let ok = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/dev/shm"))
        })
        .unwrap_or(false);
    if ok {
        check("/dev/shm", Verdict::Ok, "mounted")
    } else {
        check(
            "/dev/shm",
            Verdict::Degraded,
            "not mounted (memfd still works; nothing else needs it)",
        )
    }
}

fn open_files() -> Check {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if hard >= 4096 => check(
            "open files",
            Verdict::Ok,
            format!("soft {soft}, hard {hard} (benchmarks raise the soft limit themselves)"),
        ),
        Ok((soft, hard)) => check(
            "open files",
            Verdict::Degraded,
            format!("soft {soft}, hard {hard}: fewer than 4096 limits concurrent connections"),
        ),
        Err(e) => check("open files", Verdict::Degraded, format!("unknown: {e}")),
    }
}

fn netns() -> Check {
    let has_ip = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("ip").is_file()))
        .unwrap_or(false);
    let root = nix::unistd::geteuid().is_root();
    match (has_ip, root) {
        (true, true) => check(
            "network namespaces",
            Verdict::Ok,
            "iproute2 present and running as root: partition tests can use veth",
        ),
        (false, _) => check(
            "network namespaces",
            Verdict::Degraded,
            "iproute2 (`ip`) missing: partition tests fall back to libp2p block lists",
        ),
        (true, false) => check(
            "network namespaces",
            Verdict::Degraded,
            "not root: partition tests fall back to libp2p block lists",
        ),
    }
}

fn sample_skills() -> Check {
    let dir = super::default_skills_dir();
    if dir.join("counter.wasm").is_file() {
        check(
            "sample skills",
            Verdict::Ok,
            format!("built in {}", dir.display()),
        )
    } else {
        check(
            "sample skills",
            Verdict::Degraded,
            "not built here (scripts/build-skills builds them; only the demo and tests need them)",
        )
    }
}

fn kernel() -> Check {
    match nix::sys::utsname::uname() {
        Ok(u) => check(
            "kernel",
            Verdict::Ok,
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            ),
        ),
        Err(e) => check("kernel", Verdict::Degraded, format!("uname failed: {e}")),
    }
}

/// Every check, in display order.
pub fn run_checks() -> Vec<Check> {
    vec![
        kernel(),
        cgroups(),
        state_segment(),
        dev_shm(),
        open_files(),
        netns(),
        sample_skills(),
    ]
}

/// Runs `clawmesh doctor`; exits 1 only if something clawmesh needs is missing.
pub fn doctor(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = run_checks();
    let missing = checks.iter().any(|c| c.verdict == Verdict::Missing);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        let ui = Ui::from_env();
        for c in &checks {
            let mark = match c.verdict {
                Verdict::Ok => ui.ok("ok      "),
                Verdict::Degraded => ui.bad("degraded"),
                Verdict::Missing => ui.bad("MISSING "),
            };
            println!("{mark} {:<20} {}", c.name, c.detail);
        }
    }
    Ok(if missing {
        ExitCode::from(super::EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}
