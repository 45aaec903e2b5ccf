//! Misbehaving fixture: `handle` allocates without bound (and keeps what it
//! allocated), so the host's memory limit must stop it. The other exports
//! behave.

use std::cell::RefCell;

use clawmesh_guest::{Skill, SkillError, State};

/// Size of each allocation, small enough that growth is gradual.
const CHUNK_BYTES: usize = 1 << 20;

thread_local! {
    static HOARD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

struct Alloc;

impl Skill for Alloc {
    fn handle(_op: &str, _input: &[u8]) -> Result<Vec<u8>, SkillError> {
        loop {
            // Touch the memory so the allocation is real.
            let chunk = vec![0xA5u8; CHUNK_BYTES];
            HOARD.with_borrow_mut(|hoard| hoard.push(std::hint::black_box(chunk)));
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

clawmesh_guest::export_skill!(Alloc);
