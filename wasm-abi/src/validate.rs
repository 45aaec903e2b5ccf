//! Checks that bytes are a component targeting our world, so a refusal names
//! the problem instead of surfacing as a link or compile error.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::errors::LoadError;

/// The world every skill targets.
pub const WORLD: &str = "clawmesh:skill/skill@0.1.0";

/// The functions the world requires a skill to export.
pub const WORLD_EXPORTS: [&str; 4] = ["handle", "snapshot", "restore", "health"];

/// Largest component accepted, in bytes: far above any skill we expect, low
/// enough that compiling one cannot exhaust a worker.
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;

/// Import name prefixes the host grants. WASI is linked with nothing ambient
/// (no files, env, args, stdin or network); sockets, name lookup and HTTP are
/// not granted at all.
pub const GRANTED_IMPORT_PREFIXES: [&str; 6] = [
    "clawmesh:skill/host@0.1.",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Version and layer fields of a core module header (version 1, layer 0).
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
/// Layer field of a component header (the version bytes vary by draft).
const COMPONENT_LAYER: [u8; 2] = [1, 0];

/// Refuses bytes that are too large or not a component, by their header.
pub(crate) fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.len() > MAX_COMPONENT_BYTES {
        return Err(LoadError::TooLarge {
            size: wasm.len(),
            limit: MAX_COMPONENT_BYTES,
        });
    }
    if Engine::detect_precompiled(wasm).is_some() {
        return Err(LoadError::NotAComponent {
            what: "a precompiled wasmtime artifact (load the .wasm itself)",
        });
    }
    let Some((magic, rest)) = wasm.split_first_chunk::<4>() else {
        return Err(LoadError::NotAComponent {
            what: "too short to be WebAssembly",
        });
    };
    if magic != WASM_MAGIC {
        return Err(LoadError::NotAComponent {
            what: "not WebAssembly (no magic number)",
        });
    }
    match rest.first_chunk::<4>() {
        Some(version) if *version == CORE_MODULE_VERSION => Err(LoadError::NotAComponent {
            what: "core module",
        }),
        Some(version) if version[2..] == COMPONENT_LAYER => Ok(()),
        _ => Err(LoadError::NotAComponent {
            what: "unknown WebAssembly version or layer",
        }),
    }
}

/// Refuses a component that imports anything the host does not grant.
pub(crate) fn check_imports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if !GRANTED_IMPORT_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Err(LoadError::UngrantedImport {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// Refuses a component missing one of the world's exports, or exporting it as
/// something other than a function. Types are checked when the bindings are
/// built (see [`wrong_export_type`]).
pub(crate) fn check_exports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    for name in WORLD_EXPORTS {
        match ty.get_export(engine, name) {
            None => return Err(LoadError::MissingExport { name }),
            Some(export) if !matches!(export.ty, ComponentItem::ComponentFunc(_)) => {
                return Err(LoadError::WrongExportType {
                    name: name.to_owned(),
                    detail: "it is not a function".to_owned(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Turns the bindings' type-check failure into an error naming the export
/// (the bindings' message has the form "type-checking export func `name`").
pub(crate) fn wrong_export_type(err: &wasmtime::Error) -> LoadError {
    let detail = format!("{err:#}");
    let name = WORLD_EXPORTS
        .iter()
        .find(|name| detail.contains(&format!("`{name}`")))
        .map_or_else(|| "?".to_owned(), |name| (*name).to_owned());
    LoadError::WrongExportType { name, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_what_the_bytes_are() {
        let core = b"\0asm\x01\0\0\0";
        let garbage = b"hello world";
        let component = b"\0asm\x0d\0\x01\0";
        assert!(matches!(
            check_header(core),
            Err(LoadError::NotAComponent {
                what: "core module"
            })
        ));
        let err = check_header(garbage)
            .map(|()| "accepted")
            .unwrap_or_else(|e| {
                assert!(e.to_string().contains("no magic number"), "{e}");
                "refused"
            });
        assert_eq!(err, "refused");
        assert!(check_header(component).is_ok());
        assert!(matches!(
            check_header(b"\0as"),
            Err(LoadError::NotAComponent { .. })
        ));
    }

    #[test]
    fn oversized_bytes_are_refused_before_parsing() {
        let big = vec![0u8; MAX_COMPONENT_BYTES + 1];
        assert!(matches!(
            check_header(&big),
            Err(LoadError::TooLarge { .. })
        ));
    }
}
