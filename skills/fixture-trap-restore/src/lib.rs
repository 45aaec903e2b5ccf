//! Misbehaving fixture, the demo's "counter v3 (broken)": `add` and `get` work
//! like the counter's, but `restore` traps, so a swap to this version fails at
//! restore and must be rolled back.

use std::sync::atomic::{AtomicU64, Ordering};

use clawmesh_guest::{Skill, SkillError, State};

/// The schema this broken version would have introduced.
const SCHEMA: u32 = 3;

static VALUE: AtomicU64 = AtomicU64::new(0);

struct CounterV3Broken;

impl Skill for CounterV3Broken {
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        match op {
            "add" => {
                let text = std::str::from_utf8(input).unwrap_or("").trim();
                let amount = if text.is_empty() {
                    1
                } else {
                    text.parse()
                        .map_err(|_| SkillError::bad_input("amount is not a decimal u64"))?
                };
                Ok(VALUE
                    .fetch_add(amount, Ordering::Relaxed)
                    .wrapping_add(amount)
                    .to_string()
                    .into_bytes())
            }
            "get" => Ok(VALUE.load(Ordering::Relaxed).to_string().into_bytes()),
            other => Err(SkillError::unknown_op(other)),
        }
    }

    fn snapshot() -> State {
        State {
            schema: SCHEMA,
            data: VALUE.load(Ordering::Relaxed).to_le_bytes().to_vec(),
        }
    }

    fn restore(_state: State) -> Result<(), SkillError> {
        // The bug this fixture stands for: a migration that crashes.
        panic!("fixture-trap-restore: restore always traps")
    }
}

clawmesh_guest::export_skill!(CounterV3Broken);
