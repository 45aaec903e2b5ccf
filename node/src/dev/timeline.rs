//! The one-line timeline `clawmesh dev` prints per swap.

use std::fmt::Write;

/// Formats microseconds as µs below 1 ms, ms with one decimal above.
pub fn human_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

/// One line for a deploy answer (`Deployed` as JSON) of the admin socket.
pub fn timeline_line(deployed: &serde_json::Value) -> String {
    let swap = &deployed["swap"];
    let t = &swap["timings"];
    let us = |key: &str| human_us(t[key].as_u64().unwrap_or(0));
    let mut line = String::new();
    match swap["kind"].as_str() {
        Some("deployed") => {
            let _ = write!(
                line,
                "started {}: prewarm {}",
                deployed["version"].as_str().unwrap_or("?"),
                us("prewarm_us")
            );
        }
        _ => {
            let _ = write!(
                line,
                "swap {} → {}: prewarm {} · pause {} (drain {}, snapshot {}, restore {}, health {}, flip {})",
                swap["from_version"].as_str().unwrap_or("?"),
                swap["to_version"].as_str().unwrap_or("?"),
                us("prewarm_us"),
                us("pause_us"),
                us("drain_us"),
                us("snapshot_us"),
                us("restore_us"),
                us("health_us"),
                us("flip_us"),
            );
        }
    }
    let _ = write!(
        line,
        " · state {} B kept",
        swap["state_bytes"].as_u64().unwrap_or(0)
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_line_names_every_step() {
        let answer = serde_json::json!({
            "version": "0.0.0-dev+b",
            "swap": {"kind": "swap", "from_version": "a", "to_version": "b", "state_bytes": 8,
                "timings": {"prewarm_us": 71000, "pause_us": 1200, "drain_us": 5, "snapshot_us": 900,
                    "restore_us": 250, "health_us": 40, "flip_us": 3}}
        });
        assert_eq!(
            timeline_line(&answer),
            "swap a → b: prewarm 71.0ms · pause 1.2ms (drain 5µs, snapshot 900µs, restore 250µs, health 40µs, flip 3µs) · state 8 B kept"
        );
    }
}
