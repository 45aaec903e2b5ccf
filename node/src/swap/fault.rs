//! Fault injection at each swap step, for tests that must kill the node or
//! a worker exactly there. Read from `CLAWMESH_FAULT=step:action[,step:action]`
//! once per call; unset (the normal case) costs one environment lookup per
//! swap step, never anything on the call path.
//!
//! Steps: `prewarm`, `pause`, `snapshot`, `restore`, `health`, `flip`,
//! `rollback`, `checkpoint`. Actions: `fail` (the step fails), `kill-node`
//! (the node SIGKILLs itself), `kill-old` / `kill-new` (SIGKILL the old or
//! the new worker's process, then the step goes on and meets the result).

/// The environment variable naming the faults.
pub const FAULT_ENV: &str = "CLAWMESH_FAULT";

/// What to do at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Fail the step.
    Fail,
    /// SIGKILL the node process.
    KillNode,
    /// SIGKILL the old (serving) worker.
    KillOld,
    /// SIGKILL the new worker.
    KillNew,
}

/// Parses a fault list and returns the action for `step`, if any.
pub fn action_for(spec: &str, step: &str) -> Option<FaultAction> {
    spec.split(',').find_map(|item| {
        let (at, action) = item.trim().split_once(':')?;
        if at != step {
            return None;
        }
        match action {
            "fail" => Some(FaultAction::Fail),
            "kill-node" => Some(FaultAction::KillNode),
            "kill-old" => Some(FaultAction::KillOld),
            "kill-new" => Some(FaultAction::KillNew),
            _ => None,
        }
    })
}

/// Faults set at run time (the test-only admin call); they take the
/// environment's place while set.
static OVERRIDE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Sets (or clears) the faults at run time, in the environment variable's syntax.
pub fn set_override(spec: Option<String>) {
    *OVERRIDE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = spec;
}

/// The fault configured for `step`: the run-time override, else the environment.
pub fn configured(step: &str) -> Option<FaultAction> {
    let spec = OVERRIDE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .or_else(|| std::env::var(FAULT_ENV).ok())?;
    action_for(&spec, step)
}

/// Applies the fault of `step`: `Err` when the step must fail. `old` and
/// `new` are the worker pids.
pub fn inject(step: &str, old: Option<u32>, new: Option<u32>) -> Result<(), String> {
    let Some(action) = configured(step) else {
        return Ok(());
    };
    tracing::warn!(step, ?action, "fault injected");
    let kill = |pid: Option<u32>| {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    match action {
        FaultAction::Fail => return Err(format!("fault injected at {step}")),
        FaultAction::KillNode => kill(Some(std::process::id())),
        FaultAction::KillOld => kill(old),
        FaultAction::KillNew => kill(new),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_action_of_the_named_step() {
        assert_eq!(
            action_for("snapshot:kill-old, flip:fail", "flip"),
            Some(FaultAction::Fail)
        );
        assert_eq!(
            action_for("snapshot:kill-old", "snapshot"),
            Some(FaultAction::KillOld)
        );
        assert_eq!(action_for("snapshot:kill-old", "restore"), None);
        assert_eq!(action_for("snapshot:explode", "snapshot"), None);
    }
}
