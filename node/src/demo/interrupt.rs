//! Ctrl-C for the demo: every node process it started and its temp dir go
//! away with it. The handler only raises a flag the demo's waits check, so
//! the normal drop path cleans up; if that does not finish within
//! `CLEANUP_GRACE` the handler stops the children itself and exits. Children
//! also get SIGTERM from the kernel if the demo dies any other way
//! (`PR_SET_PDEATHSIG`, set where they are spawned).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

/// How long the normal clean-up may take after Ctrl-C before the handler
/// does it by force.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(15);
/// Exit code after an interrupt (128 + SIGINT).
pub const INTERRUPTED_EXIT: i32 = 130;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static CHILDREN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static TEMP_DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
static INSTALL: Once = Once::new();

/// The demo was interrupted: stop what you are doing.
#[derive(Debug, thiserror::Error)]
#[error("interrupted (Ctrl-C): cleaning up")]
pub struct Interrupted;

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once Ctrl-C arrived.
pub fn check() -> Result<(), Interrupted> {
    if interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Remembers a child process to stop on Ctrl-C.
pub fn register_child(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        CHILDREN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid);
    }
}

/// Forgets a child that was stopped.
pub fn forget_child(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        CHILDREN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
    }
}

/// Remembers a temp dir to remove on Ctrl-C.
pub fn register_temp_dir(path: PathBuf) {
    TEMP_DIRS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(path);
}

/// Forgets a temp dir (it was removed, or is kept on purpose).
pub fn forget_temp_dir(path: &std::path::Path) {
    TEMP_DIRS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(path);
}

/// Installs the SIGINT/SIGTERM handler (once per process).
pub fn install() -> anyhow::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = spawn_handler();
    });
    result
}

fn spawn_handler() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registering inside the runtime replaces the default action (exit)
    // before this function returns, so no signal is lost in between.
    let (mut int, mut term) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("demo-interrupt".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: stopping the nodes and removing the temp dir…");
            std::thread::sleep(CLEANUP_GRACE);
            force_cleanup();
            std::process::exit(INTERRUPTED_EXIT);
        })?;
    Ok(())
}

/// Stops every registered child and removes every registered temp dir.
fn force_cleanup() {
    let children: Vec<i32> = CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    for pid in children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let dirs: Vec<PathBuf> = TEMP_DIRS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
