//! Sample stateless skill: text transforms, through the private `textops`
//! crate (a dependency linked into this skill only).
//!
//! Ops (input and output are UTF-8 text): `slug`, `title`, `upper`, `lower`,
//! `words` (the count, as decimal text). Two ops exercise the host imports:
//! `now` returns the host clock's `now-ms` as decimal text, and `log` logs its
//! input at info level and returns nothing.

use clawmesh_guest::{Skill, SkillError, State};

/// This skill keeps no state; its snapshot is empty under schema 1.
const SCHEMA: u32 = 1;

/// Largest input accepted, in bytes.
const MAX_INPUT_BYTES: usize = 1 << 20;

struct Transform;

impl Skill for Transform {
    fn handle(op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        if input.len() > MAX_INPUT_BYTES {
            return Err(SkillError::bad_input(format!(
                "input is {} bytes, over the {MAX_INPUT_BYTES}-byte limit",
                input.len()
            )));
        }
        let text = std::str::from_utf8(input)
            .map_err(|_| SkillError::bad_input("input is not UTF-8 text"))?;
        let out = match op {
            "slug" => textops::slugify(text),
            "title" => textops::title_case(text),
            "upper" => text.to_uppercase(),
            "lower" => text.to_lowercase(),
            "words" => textops::word_count(text).to_string(),
            "now" => clawmesh_guest::now_ms().to_string(),
            "log" => {
                clawmesh_guest::log::info(text);
                String::new()
            }
            other => return Err(SkillError::unknown_op(other)),
        };
        Ok(out.into_bytes())
    }

    fn snapshot() -> State {
        State {
            schema: SCHEMA,
            data: Vec::new(),
        }
    }

    fn restore(state: State) -> Result<(), SkillError> {
        if state.schema != SCHEMA {
            return Err(SkillError::unsupported_schema(state.schema, &[SCHEMA]));
        }
        Ok(())
    }
}

clawmesh_guest::export_skill!(Transform);
