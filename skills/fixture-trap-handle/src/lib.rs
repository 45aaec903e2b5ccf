//! Misbehaving fixture: a counter whose op `boom` traps, poisoning the
//! instance; `add` and `get` work until then.

use std::sync::atomic::{AtomicU64, Ordering};

use clawmesh_guest::{Skill, SkillError, State};

static VALUE: AtomicU64 = AtomicU64::new(0);

struct TrapHandle;

impl Skill for TrapHandle {
    fn handle(op: &str, _input: &[u8]) -> Result<Vec<u8>, SkillError> {
        match op {
            "add" => Ok((VALUE.fetch_add(1, Ordering::Relaxed) + 1)
                .to_string()
                .into_bytes()),
            "get" => Ok(VALUE.load(Ordering::Relaxed).to_string().into_bytes()),
            "boom" => panic!("fixture-trap-handle: op `boom` traps"),
            other => Err(SkillError::unknown_op(other)),
        }
    }

    fn snapshot() -> State {
        State {
            schema: 1,
            data: VALUE.load(Ordering::Relaxed).to_le_bytes().to_vec(),
        }
    }

    fn restore(_state: State) -> Result<(), SkillError> {
        Ok(())
    }
}

clawmesh_guest::export_skill!(TrapHandle);
