//! Sample stateful skill: a key-value store, version 1.
//!
//! Ops (keys are non-empty UTF-8 without `\n`, at most 256 bytes):
//! - `put`: input `KEY\nVALUE` (VALUE is raw bytes, at most 64 KiB); returns
//!   empty output.
//! - `get`: input `KEY`; returns VALUE, or error `not-found`.
//! - `delete`: input `KEY`; returns `1` if the key existed, `0` if not.
//! - `list`: input ignored; returns the keys in byte order joined by `\n`.
//!
//! State schema 1: for each entry in key order, a length-prefixed key field
//! then a length-prefixed value field (see the `lenprefix` crate).

use std::cell::RefCell;
use std::collections::BTreeMap;

use clawmesh_guest::{Skill, SkillError, State, codes};

const SCHEMA: u32 = 1;
/// Most entries the store holds.
const MAX_KEYS: usize = 10_000;
/// Longest key, in bytes.
const MAX_KEY_BYTES: usize = 256;
/// Longest value, in bytes.
const MAX_VALUE_BYTES: usize = 64 << 10;

thread_local! {
    static STORE: RefCell<BTreeMap<String, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
}

struct KvV1;

fn parse_key(bytes: &[u8]) -> Result<String, SkillError> {
    let key = std::str::from_utf8(bytes).map_err(|_| SkillError::bad_input("key is not UTF-8"))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\n') {
        return Err(SkillError::bad_input(format!(
            "key must be 1..={MAX_KEY_BYTES} bytes without a newline"
        )));
    }
    Ok(key.to_owned())
}

fn put(input: &[u8]) -> Result<Vec<u8>, SkillError> {
    let split = input
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| SkillError::bad_input("put input must be `KEY\\nVALUE`"))?;
    let key = parse_key(&input[..split])?;
    let value = &input[split + 1..];
    if value.len() > MAX_VALUE_BYTES {
        return Err(SkillError::bad_input(format!(
            "value is over {MAX_VALUE_BYTES} bytes"
        )));
    }
    STORE.with_borrow_mut(|store| {
        if !store.contains_key(&key) && store.len() >= MAX_KEYS {
            return Err(SkillError::bad_input(format!(
                "store is full ({MAX_KEYS} keys)"
            )));
        }
        store.insert(key, value.to_vec());
        Ok(Vec::new())
    })
}

impl Skill for KvV1 {
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        match op {
            "put" => put(input),
            "get" => {
                let key = parse_key(input)?;
                STORE
                    .with_borrow(|store| store.get(&key).cloned())
                    .ok_or_else(|| SkillError::new(codes::NOT_FOUND, format!("no key `{key}`")))
            }
            "delete" => {
                let key = parse_key(input)?;
                let existed = STORE.with_borrow_mut(|store| store.remove(&key).is_some());
                Ok(if existed {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                })
            }
            "list" => Ok(STORE.with_borrow(|store| {
                store
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes()
            })),
            other => Err(SkillError::unknown_op(other)),
        }
    }

    fn snapshot() -> State {
        let mut data = Vec::new();
        STORE.with_borrow(|store| {
            for (key, value) in store {
                lenprefix::put(&mut data, key.as_bytes());
                lenprefix::put(&mut data, value);
            }
        });
        State {
            schema: SCHEMA,
            data,
        }
    }

    fn restore(state: State) -> Result<(), SkillError> {
        if state.schema != SCHEMA {
            return Err(SkillError::unsupported_schema(state.schema, &[SCHEMA]));
        }
        let truncated = |_| SkillError::corrupt_state("schema 1 state ends inside an entry");
        let mut reader = lenprefix::Reader::new(&state.data);
        let mut restored = BTreeMap::new();
        while !reader.is_empty() {
            let key = parse_key(reader.field().map_err(truncated)?)?;
            let value = reader.field().map_err(truncated)?.to_vec();
            restored.insert(key, value);
        }
        STORE.set(restored);
        Ok(())
    }
}

clawmesh_guest::export_skill!(KvV1);
