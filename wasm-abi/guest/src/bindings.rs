//! Bindings generated from `wasm-abi/wit` by wit-bindgen. Skills never use this
//! module directly: [`crate::export_skill!`] wires a [`crate::Skill`] into it.
#![allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]

wit_bindgen::generate!({
    path: "../wit",
    world: "clawmesh:skill/skill@0.1.0",
    // The export macro is used from skill crates, so it must be public and
    // find these bindings through this crate's path.
    pub_export_macro: true,
    default_bindings_module: "clawmesh_guest::bindings",
    export_macro_name: "export",
});
