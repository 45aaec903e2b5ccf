//! Sample stateful skill: a counter.
//!
//! Ops: `add` (input: a decimal amount as UTF-8 text, or empty for 1; returns
//! the new value as decimal text) and `get` (input ignored; returns the value
//! as decimal text). State schema 1: the value as 8 little-endian bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use clawmesh_guest::{Skill, SkillError, State};

/// Layout version of this skill's state.
const SCHEMA: u32 = 1;

/// The counter's value; lives as long as the instance.
static VALUE: AtomicU64 = AtomicU64::new(0);

struct Counter;

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

impl Skill for Counter {
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        match op {
            "add" => {
                let amount = parse_amount(input)?;
                let current = VALUE.load(Ordering::Relaxed);
                let next = current
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
        if state.schema != SCHEMA {
            return Err(SkillError::unsupported_schema(state.schema, &[SCHEMA]));
        }
        let bytes: [u8; 8] = state
            .data
            .as_slice()
            .try_into()
            .map_err(|_| SkillError::corrupt_state("schema 1 state must be 8 bytes"))?;
        VALUE.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        Ok(())
    }
}

clawmesh_guest::export_skill!(Counter);
