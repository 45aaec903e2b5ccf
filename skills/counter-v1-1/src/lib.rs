//! Sample stateful skill: counter version 1.1, a version 1 that can be
//! rolled back to from version 2 after the warm window.
//!
//! Ops and state as in `counter` (`add`, `get`; state schema 1: the value
//! as 8 little-endian bytes). `restore` also reads version 2's schema 2
//! (value then count of adds, 8 little-endian bytes each): the
//! down-migration keeps the value and drops the count, which schema 1 has
//! no place for. A rollback from 2.0.0 that has to be a swap (the warm
//! window is over) therefore keeps every increment.

use std::sync::atomic::{AtomicU64, Ordering};

use clawmesh_guest::{Skill, SkillError, State};

/// Layout version of this skill's state.
const SCHEMA: u32 = 1;
/// Version 2's layout, which `restore` migrates down from.
const NEXT_SCHEMA: u32 = 2;

/// The counter's value; lives as long as the instance.
static VALUE: AtomicU64 = AtomicU64::new(0);

struct CounterV11;

/// Parses an `add` amount: empty means 1.
fn parse_amount(input: &[u8]) -> Result<u64, SkillError> {
    let text = std::str::from_utf8(input)
        .map_err(|_| SkillError::bad_input("amount is not UTF-8 text"))?
        .trim();
    if text.is_empty() {
        return Ok(1);
    }
    text.parse()
        .map_err(|_| SkillError::bad_input(format!("amount `{text}` is not a decimal u64")))
}

fn read_u64(bytes: &[u8]) -> Result<u64, SkillError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| SkillError::corrupt_state("expected 8 bytes for a u64"))?;
    Ok(u64::from_le_bytes(array))
}

impl Skill for CounterV11 {
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        match op {
            "add" => {
                let amount = parse_amount(input)?;
                let next = VALUE
                    .load(Ordering::Relaxed)
                    .checked_add(amount)
                    .ok_or_else(|| SkillError::bad_input("counter would overflow u64"))?;
                VALUE.store(next, Ordering::Relaxed);
                Ok(next.to_string().into_bytes())
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

    fn restore(state: State) -> Result<(), SkillError> {
        let value = match state.schema {
            SCHEMA => read_u64(&state.data)
                .map_err(|_| SkillError::corrupt_state("schema 1 state must be 8 bytes"))?,
            NEXT_SCHEMA => {
                if state.data.len() != 16 {
                    return Err(SkillError::corrupt_state("schema 2 state must be 16 bytes"));
                }
                read_u64(&state.data[..8])?
            }
            other => {
                return Err(SkillError::unsupported_schema(
                    other,
                    &[SCHEMA, NEXT_SCHEMA],
                ));
            }
        };
        VALUE.store(value, Ordering::Relaxed);
        Ok(())
    }
}

clawmesh_guest::export_skill!(CounterV11);
