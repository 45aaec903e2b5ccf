//! Misbehaving fixture: `handle` opens a TCP connection, so the component
//! imports `wasi:sockets/*` and the host must refuse it at load, naming the
//! import.

use clawmesh_guest::{Skill, SkillError, State};

struct Sockets;

impl Skill for Sockets {
    fn handle(_op: &str, input: &[u8]) -> Result<Vec<u8>, SkillError> {
        let addr = std::str::from_utf8(input)
            .map_err(|_| SkillError::bad_input("address is not UTF-8"))?;
        std::net::TcpStream::connect(addr)
            .map(|_| Vec::new())
            .map_err(|e| SkillError::new("connect-failed", e.to_string()))
    }

    fn snapshot() -> State {
        State {
            schema: 1,
            data: Vec::new(),
        }
    }

    fn restore(_state: State) -> Result<(), SkillError> {
        Ok(())
    }
}

clawmesh_guest::export_skill!(Sockets);
