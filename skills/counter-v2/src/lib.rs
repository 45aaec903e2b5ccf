//! Sample stateful skill: counter version 2.
//!
//! Ops as in `counter` (`add`, `get`) plus `adds` (how many `add` calls the
//! count has seen). State schema 2: value then count of adds, each 8
//! little-endian bytes. `restore` accepts schema 1 (the value alone; the count
//! of adds starts at 0) and schema 2. Version 1 cannot read schema 2, so a swap
//! back to version 1 is refused by its `restore`: that is the documented limit.

use std::sync::atomic::{AtomicU64, Ordering};

use clawmesh_guest::{Skill, SkillError, State};

/// Layout version of this skill's state.
const SCHEMA: u32 = 2;
/// The previous layout, which `restore` migrates from.
const PREVIOUS_SCHEMA: u32 = 1;

static VALUE: AtomicU64 = AtomicU64::new(0);
static ADDS: AtomicU64 = AtomicU64::new(0);

struct CounterV2;

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

impl Skill for CounterV2 {
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        match op {
            "add" => {
                let amount = parse_amount(input)?;
                let next = VALUE
                    .load(Ordering::Relaxed)
                    .checked_add(amount)
                    .ok_or_else(|| SkillError::bad_input("counter would overflow u64"))?;
                VALUE.store(next, Ordering::Relaxed);
                ADDS.fetch_add(1, Ordering::Relaxed);
                Ok(next.to_string().into_bytes())
            }
            "get" => Ok(VALUE.load(Ordering::Relaxed).to_string().into_bytes()),
            "adds" => Ok(ADDS.load(Ordering::Relaxed).to_string().into_bytes()),
            other => Err(SkillError::unknown_op(other)),
        }
    }

    fn snapshot() -> State {
        let mut data = VALUE.load(Ordering::Relaxed).to_le_bytes().to_vec();
        data.extend_from_slice(&ADDS.load(Ordering::Relaxed).to_le_bytes());
        State {
            schema: SCHEMA,
            data,
        }
    }

    fn restore(state: State) -> Result<(), SkillError> {
        let (value, adds) = match state.schema {
            PREVIOUS_SCHEMA => (read_u64(&state.data)?, 0),
            SCHEMA => {
                if state.data.len() != 16 {
                    return Err(SkillError::corrupt_state("schema 2 state must be 16 bytes"));
                }
                let (value, adds) = state.data.split_at(8);
                (read_u64(value)?, read_u64(adds)?)
            }
            other => {
                return Err(SkillError::unsupported_schema(
                    other,
                    &[PREVIOUS_SCHEMA, SCHEMA],
                ));
            }
        };
        VALUE.store(value, Ordering::Relaxed);
        ADDS.store(adds, Ordering::Relaxed);
        Ok(())
    }
}

clawmesh_guest::export_skill!(CounterV2);
