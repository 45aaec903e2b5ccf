//! Sample stateful skill: a key-value store, version 2, with a version counter
//! per key.
//!
//! Ops as in kv-v1 (`put`, `get`, `delete`, `list`, same input formats), except
//! that `put` returns the key's new version as decimal text (1 for a new key),
//! plus `version`: input `KEY`, returns its version or error `not-found`.
//!
//! State schema 2: for each entry in key order, length-prefixed fields key,
//! value, and version (8 little-endian bytes). `restore` accepts schema 1
//! (kv-v1's: key and value) and migrates it by giving every key version 1.

use std::cell::RefCell;
use std::collections::BTreeMap;

use clawmesh_guest::{Skill, SkillError, State, codes};

const SCHEMA: u32 = 2;
const PREVIOUS_SCHEMA: u32 = 1;
/// Most entries the store holds.
const MAX_KEYS: usize = 10_000;
/// Longest key, in bytes.
const MAX_KEY_BYTES: usize = 256;
/// Longest value, in bytes.
const MAX_VALUE_BYTES: usize = 64 << 10;

/// A value and how many times its key has been written.
struct Entry {
    value: Vec<u8>,
    version: u64,
}

thread_local! {
    static STORE: RefCell<BTreeMap<String, Entry>> = const { RefCell::new(BTreeMap::new()) };
}

struct KvV2;

fn parse_key(bytes: &[u8]) -> Result<String, SkillError> {
    let key = std::str::from_utf8(bytes).map_err(|_| SkillError::bad_input("key is not UTF-8"))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\n') {
        return Err(SkillError::bad_input(format!(
            "key must be 1..={MAX_KEY_BYTES} bytes without a newline"
        )));
    }
    Ok(key.to_owned())
}

fn not_found(key: &str) -> SkillError {
    SkillError::new(codes::NOT_FOUND, format!("no key `{key}`"))
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
        let entry = store.entry(key).or_insert(Entry {
            value: Vec::new(),
            version: 0,
        });
        entry.value = value.to_vec();
        entry.version = entry.version.saturating_add(1);
        Ok(entry.version.to_string().into_bytes())
    })
}

impl Skill for KvV2 {
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        match op {
            "put" => put(input),
            "get" => {
                let key = parse_key(input)?;
                STORE
                    .with_borrow(|store| store.get(&key).map(|e| e.value.clone()))
                    .ok_or_else(|| not_found(&key))
            }
            "version" => {
                let key = parse_key(input)?;
                STORE
                    .with_borrow(|store| {
                        store.get(&key).map(|e| e.version.to_string().into_bytes())
                    })
                    .ok_or_else(|| not_found(&key))
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
            for (key, entry) in store {
                lenprefix::put(&mut data, key.as_bytes());
                lenprefix::put(&mut data, &entry.value);
                lenprefix::put(&mut data, &entry.version.to_le_bytes());
            }
        });
        State {
            schema: SCHEMA,
            data,
        }
    }

    fn restore(state: State) -> Result<(), SkillError> {
        if state.schema != SCHEMA && state.schema != PREVIOUS_SCHEMA {
            return Err(SkillError::unsupported_schema(
                state.schema,
                &[PREVIOUS_SCHEMA, SCHEMA],
            ));
        }
        let truncated = |_| SkillError::corrupt_state("state ends inside an entry");
        let mut reader = lenprefix::Reader::new(&state.data);
        let mut restored = BTreeMap::new();
        while !reader.is_empty() {
            let key = parse_key(reader.field().map_err(truncated)?)?;
            let value = reader.field().map_err(truncated)?.to_vec();
            let version = if state.schema == PREVIOUS_SCHEMA {
                // Migration: schema 1 kept no versions; every key starts at 1.
                1
            } else {
                let bytes: [u8; 8] = reader
                    .field()
                    .map_err(truncated)?
                    .try_into()
                    .map_err(|_| SkillError::corrupt_state("version field must be 8 bytes"))?;
                u64::from_le_bytes(bytes)
            };
            restored.insert(key, Entry { value, version });
        }
        STORE.set(restored);
        Ok(())
    }
}

clawmesh_guest::export_skill!(KvV2);
