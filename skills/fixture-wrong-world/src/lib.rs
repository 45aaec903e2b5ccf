//! Misbehaving fixture: a valid component that targets another world
//! (`clawmesh-fixture:greeter`), so the host refuses it at load.

wit_bindgen::generate!({
    path: "wit",
    world: "greeter",
});

struct Greeter;

impl exports::clawmesh_fixture::greeter::greet::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
