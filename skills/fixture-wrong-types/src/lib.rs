//! Misbehaving fixture: exports `handle`, `snapshot`, `restore` and `health`,
//! but `handle` has another type than clawmesh:skill's, so the host refuses it
//! at load naming the export.

wit_bindgen::generate!({
    path: "wit",
    world: "almost",
});

struct Almost;

impl Guest for Almost {
    fn handle(op: String) -> String {
        op
    }

    fn snapshot() -> State {
        State {
            schema: 1,
            data: Vec::new(),
        }
    }

    fn restore(_s: State) -> Result<(), ()> {
        Ok(())
    }

    fn health() -> Result<(), ()> {
        Ok(())
    }
}

export!(Almost);
