//! One live skill instance and the calls into it.

use std::time::Duration;

use wasmtime::Store;

use crate::bindings::{Skill, State};
use crate::call_error::CallError;
use crate::config::EngineConfig;
use crate::state::SkillState;
use crate::store_data::StoreData;

/// A skill instance in its own store. Calls are synchronous and each runs
/// under the engine's deadline and limits. After any error other than
/// [`CallError::Skill`] the instance is poisoned: every later call returns
/// [`CallError::Poisoned`] and the caller must instantiate a new one.
pub struct SkillInstance {
    store: Store<StoreData>,
    skill: Skill,
    deadline: Duration,
    deadline_ticks: u64,
    state_deadline: Duration,
    state_deadline_ticks: u64,
    poisoned: bool,
}

impl std::fmt::Debug for SkillInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillInstance")
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl SkillInstance {
    pub(crate) fn new(store: Store<StoreData>, skill: Skill, cfg: &EngineConfig) -> Self {
        Self {
            store,
            skill,
            deadline: cfg.call_deadline,
            deadline_ticks: cfg.deadline_ticks(),
            state_deadline: cfg.state_deadline(),
            state_deadline_ticks: cfg.state_deadline_ticks(),
            poisoned: false,
        }
    }

    /// Calls the skill's `handle` export.
    pub fn handle(&mut self, op: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call(false, |skill, store| skill.call_handle(store, op, input))?
            .map_err(CallError::from)
    }

    /// Calls the skill's `snapshot` export.
    pub fn snapshot(&mut self) -> Result<SkillState, CallError> {
        self.call(true, |skill, store| skill.call_snapshot(store))
            .map(SkillState::from)
    }

    /// Calls the skill's `restore` export with `state`.
    pub fn restore(&mut self, state: &SkillState) -> Result<(), CallError> {
        let state = State {
            schema: state.schema,
            data: state.data.clone(),
        };
        self.call(true, |skill, store| skill.call_restore(store, &state))?
            .map_err(CallError::from)
    }

    /// Calls the skill's `health` export.
    pub fn health(&mut self) -> Result<(), CallError> {
        self.call(false, |skill, store| skill.call_health(store))?
            .map_err(CallError::from)
    }

    /// Whether an earlier call trapped; a poisoned instance serves no more
    /// calls.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Runs one export under a fresh deadline (the state deadline for
    /// `snapshot` and `restore`) and log budget, mapping a trap to the limit
    /// it hit and poisoning the instance on any trap.
    fn call<R>(
        &mut self,
        moves_state: bool,
        f: impl FnOnce(&Skill, &mut Store<StoreData>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        self.store.data_mut().log_budget.reset();
        let (deadline, ticks) = if moves_state {
            (self.state_deadline, self.state_deadline_ticks)
        } else {
            (self.deadline, self.deadline_ticks)
        };
        self.store.set_epoch_deadline(ticks);
        let result = f(&self.skill, &mut self.store);
        let dropped = self.store.data_mut().log_budget.reset();
        if dropped > 0 {
            self.store.data().logger.dropped(dropped);
        }
        result.map_err(|e| {
            self.poisoned = true;
            CallError::from_wasmtime(&e, deadline)
        })
    }
}
