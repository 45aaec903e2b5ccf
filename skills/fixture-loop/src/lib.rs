//! Misbehaving fixture: `handle` never returns, so the host's call deadline
//! must interrupt it. The other exports behave.

use clawmesh_guest::{Skill, SkillError, State};

struct Loop;

impl Skill for Loop {
    fn handle(_op: &str, _input: &[u8]) -> Result<Vec<u8>, SkillError> {
        let mut spins: u64 = 0;
        loop {
            // black_box keeps the loop from being optimised into anything the
            // host could not interrupt.
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }

    fn snapshot() -> State {
        State {
            schema: 1,
            data: Vec::new(),
        }
    }

    fn restore(_state: State) -> Result<(), SkillError> {
        Ok(())
    }
}

clawmesh_guest::export_skill!(Loop);
