//! End-to-end hot swap on real processes (issue 5): a swap under load
//! fails no request and keeps the state; a version whose restore traps is
//! refused while the old one keeps serving; rollback keeps every
//! acknowledged increment; killing a worker or the node at each swap step
//! loses no acknowledged state (node kills: none beyond the last durable
//! checkpoint, which the test takes explicitly).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clawmesh_e2e::{NodeProcess, Publisher, admin, http_post};

const COUNTER: &str = "dev.clawmesh.counter";

fn deploy(node_dir: &Path, version: &str) -> Result<serde_json::Value, (String, String)> {
    admin(
        node_dir,
        serde_json::json!({"op": "deploy", "package": COUNTER, "version": version}),
    )
}

fn invoke(node: &NodeProcess, op: &str, body: &[u8]) -> (u16, String) {
    let (status, body) = http_post(&format!("{}/v1/skills/{COUNTER}/{op}", node.http()), body);
    (status, String::from_utf8_lossy(&body).trim().to_string())
}

fn get(node: &NodeProcess) -> u64 {
    let (status, body) = invoke(node, "get", b"");
    assert_eq!(status, 200, "get: {body}");
    body.parse().unwrap()
}

/// `get` once the skill answers again (a killed worker is being restarted),
/// within a bounded wait.
fn get_when_serving(node: &NodeProcess) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = invoke(node, "get", b"");
        if status == 200 {
            return body.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "counter never served again: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn add(node: &NodeProcess, n: u64) {
    for _ in 0..n {
        let (status, body) = invoke(node, "add", b"1");
        assert_eq!(status, 200, "add: {body}");
    }
}

fn swap_status(node_dir: &Path) -> serde_json::Value {
    let status = admin(node_dir, serde_json::json!({"op": "status"})).unwrap();
    status["swap"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["package"] == COUNTER)
        .cloned()
        .unwrap()
}

fn active_version(node_dir: &Path) -> String {
    active_version_of(node_dir, COUNTER)
}

fn active_version_of(node_dir: &Path, package: &str) -> String {
    let status = admin(node_dir, serde_json::json!({"op": "status"})).unwrap();
    status["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["package"] == package && s["role"] == "active")
        .map(|s| s["version"].as_str().unwrap().to_string())
        .unwrap()
}

/// Closed-loop `add 1` load on `threads` connections; returns (acknowledged, failed).
struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Load {
    fn start(node: &NodeProcess, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let url = format!("{}/v1/skills/{COUNTER}/add", node.http());
        let handles = (0..threads)
            .map(|_| {
                let (stop, ok, failed, url) =
                    (stop.clone(), ok.clone(), failed.clone(), url.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) = http_post(&url, b"1");
                        if status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            eprintln!("failed call: {status} {}", String::from_utf8_lossy(&body));
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            handles,
            ok,
            failed,
        }
    }

    /// Waits until at least `n` more calls were acknowledged.
    fn wait_for(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "load made no progress");
            std::thread::yield_now();
        }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn setup(dir: &Path, extra: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let node_dir = dir.join("node");
    let publisher = Publisher::new(dir, &[&node_dir]);
    publisher.publish(&node_dir, "counter.wasm", COUNTER, "1.0.0", &[]);
    publisher.publish(&node_dir, "counter_v2.wasm", COUNTER, "2.0.0", &[]);
    for (file, name, version) in extra {
        publisher.publish(&node_dir, file, name, version, &[]);
    }
    node_dir
}

#[test]
fn swap_under_load_fails_no_request_and_keeps_every_increment() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = setup(dir.path(), &[]);
    let node = NodeProcess::start(&node_dir, &[]);
    deploy(&node_dir, "1.0.0").unwrap();
    add(&node, 5);

    let load = Load::start(&node, 8);
    load.wait_for(50);
    let swapped = deploy(&node_dir, "2.0.0").unwrap();
    load.wait_for(50);
    let back = deploy(&node_dir, "1.0.0");
    // v1 cannot restore schema 2: that swap is refused, v2 keeps serving.
    assert_eq!(back.unwrap_err().0, "swap_aborted");
    load.wait_for(50);
    let (acknowledged, failed) = load.finish();

    assert_eq!(failed, 0, "no request may fail during a swap");
    assert_eq!(
        get(&node),
        5 + acknowledged,
        "every acknowledged increment is kept"
    );
    assert_eq!(active_version(&node_dir), "2.0.0");
    let timings = &swapped["swap"]["timings"];
    assert!(timings["pause_us"].as_u64().is_some(), "{swapped}");
    assert_eq!(swapped["swap"]["state_path"], "migration");
    // v2 counts adds since its state came across (the migration starts it at 0).
    let (status, _) = invoke(&node, "adds", b"");
    assert_eq!(status, 200);
}

#[test]
fn a_version_whose_restore_traps_is_refused_and_the_old_one_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = setup(
        dir.path(),
        &[("fixture_trap_restore.wasm", COUNTER, "3.0.0")],
    );
    let node = NodeProcess::start(&node_dir, &[]);
    deploy(&node_dir, "1.0.0").unwrap();
    add(&node, 7);
    let (code, message) = deploy(&node_dir, "3.0.0").unwrap_err();
    assert_eq!(code, "swap_aborted", "{message}");
    assert!(message.contains("restore"), "{message}");
    assert_eq!(get(&node), 7);
    assert_eq!(active_version(&node_dir), "1.0.0");
    let status = swap_status(&node_dir);
    assert_eq!(status["last_failure"]["kind"], "swap_failed", "{status}");
    add(&node, 1);
    assert_eq!(get(&node), 8);
}

/// A node (with `env`) that ran counter 1.0.0, took 3 increments, and
/// swapped to 2.0.0: the warm window of that swap is open.
fn counter_swapped_to_v2(dir: &Path, env: &[(&str, &str)]) -> (NodeProcess, std::path::PathBuf) {
    let node_dir = setup(dir, &[]);
    let node = NodeProcess::start_with_env(&node_dir, &[], env);
    deploy(&node_dir, "1.0.0").unwrap();
    add(&node, 3);
    deploy(&node_dir, "2.0.0").unwrap();
    (node, node_dir)
}

/// Rolls the counter back while `load` runs (calls before and after it);
/// returns the rollback event and the load's (acknowledged, failed).
fn rollback_under(load: Load, node_dir: &Path) -> (serde_json::Value, u64, u64) {
    load.wait_for(100);
    let rolled = admin(
        node_dir,
        serde_json::json!({"op": "rollback", "package": COUNTER}),
    )
    .unwrap();
    load.wait_for(50);
    let (acknowledged, failed) = load.finish();
    (rolled, acknowledged, failed)
}

#[test]
fn rollback_keeps_every_acknowledged_increment() {
    let dir = tempfile::tempdir().unwrap();
    let (node, node_dir) = counter_swapped_to_v2(dir.path(), &[]);
    assert_eq!(swap_status(&node_dir)["rollback_to"], "1.0.0");

    let load = Load::start(&node, 8);
    let (rolled, acknowledged, failed) = rollback_under(load, &node_dir);

    assert_eq!(failed, 0);
    assert_eq!(
        rolled["state_path"], "replay",
        "v1 has no down-migration: {rolled}"
    );
    assert!(rolled["replayed"].as_u64().unwrap() > 0, "{rolled}");
    assert_eq!(active_version(&node_dir), "1.0.0");
    assert_eq!(get(&node), 3 + acknowledged);
    assert_eq!(
        swap_status(&node_dir)["window_closed"],
        "a rollback used it"
    );
    // No window any more: a second rollback is a swap forward to 2.0.0.
    let again = admin(
        &node_dir,
        serde_json::json!({"op": "rollback", "package": COUNTER}),
    )
    .unwrap();
    assert_eq!(again["kind"], "rollback", "{again}");
    assert_eq!(active_version(&node_dir), "2.0.0");
    assert_eq!(get(&node), 3 + acknowledged);
}

// The journal since a swap is emptied by every checkpoint (periodic ones
// run each second under load). The standby follows the calls, so a
// rollback after checkpoints is still a flip: v1 cannot read v2's state,
// so a swap back would be refused.
#[test]
fn rollback_after_checkpoints_in_the_warm_window_keeps_every_acknowledged_increment() {
    for env in [&[][..], &[EARLY_ALWAYS][..]] {
        let dir = tempfile::tempdir().unwrap();
        let (node, node_dir) = counter_swapped_to_v2(dir.path(), env);
        let load = Load::start(&node, 8);
        // Two checkpoints (and the periodic ones): the journal since the
        // swap was emptied, the pre-swap state has left the segment.
        for _ in 0..2 {
            load.wait_for(200);
            let checkpoint = admin(
                &node_dir,
                serde_json::json!({"op": "checkpoint", "package": COUNTER}),
            )
            .unwrap();
            assert_eq!(checkpoint["kind"], "checkpoint", "{checkpoint}");
            assert_eq!(swap_status(&node_dir)["rollback_to"], "1.0.0", "{env:?}");
        }
        let (rolled, acknowledged, failed) = rollback_under(load, &node_dir);
        assert_eq!(failed, 0);
        assert_eq!(rolled["kind"], "rollback", "{rolled}");
        assert_eq!(rolled["state_path"], "replay", "{rolled}");
        assert_eq!(active_version(&node_dir), "1.0.0");
        assert_eq!(get(&node), 3 + acknowledged, "{env:?}");
        // The rollback's checkpoint is the standby's state: a worker crash
        // now recovers from it and the calls since.
        add(&node, 5);
        kill_active(&node_dir, COUNTER);
        assert_eq!(get_when_serving(&node), 3 + acknowledged + 5);
    }
}

// A standby killed after a checkpoint lost the calls it followed, and the
// journal no longer holds them: the window closes, a rollback is a swap,
// which v1 refuses (it cannot read v2's state); v2 keeps serving with all
// of it.
#[test]
fn a_standby_that_cannot_be_brought_back_closes_the_window_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (node, node_dir) = counter_swapped_to_v2(dir.path(), &[]);
    add(&node, 4);
    admin(
        &node_dir,
        serde_json::json!({"op": "checkpoint", "package": COUNTER}),
    )
    .unwrap();
    kill_standby(&node_dir);
    add(&node, 2);
    let back = admin(
        &node_dir,
        serde_json::json!({"op": "rollback", "package": COUNTER}),
    );
    let error = back.expect_err("v1 cannot read v2's state");
    assert!(error.1.contains("schema"), "{error:?}");
    assert_eq!(active_version(&node_dir), "2.0.0");
    assert_eq!(get(&node), 9);
    let status = swap_status(&node_dir);
    assert!(status["rollback_to"].is_null());
    let why = status["window_closed"].as_str().unwrap_or_default();
    assert!(why.contains("restarted"), "{status}");
}

/// SIGKILL to the warm standby (the supervisor restarts it, stateless).
fn kill_standby(node_dir: &Path) {
    let status = admin(node_dir, serde_json::json!({"op": "status"})).unwrap();
    let standby = status["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"] == "standby")
        .map(|s| s["pid"].as_u64().unwrap() as i32)
        .expect("a standby after the swap");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(standby),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

// The same crash, when the standby's version reads the newer schema
// (counter 1.1 reads 2.0.0's): the restarted standby is brought back from
// the last checkpoint, migrated down, and follows again; the rollback
// stays a flip and keeps every increment.
#[test]
fn a_restarted_standby_that_reads_the_newer_schema_keeps_the_window_open() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = setup(dir.path(), &[("counter_v1_1.wasm", COUNTER, "1.1.0")]);
    let node = NodeProcess::start(&node_dir, &[]);
    deploy(&node_dir, "1.1.0").unwrap();
    add(&node, 3);
    deploy(&node_dir, "2.0.0").unwrap();
    add(&node, 4);
    admin(
        &node_dir,
        serde_json::json!({"op": "checkpoint", "package": COUNTER}),
    )
    .unwrap();
    kill_standby(&node_dir);
    add(&node, 2);
    let load = Load::start(&node, 8);
    let (rolled, acknowledged, failed) = rollback_under(load, &node_dir);
    assert_eq!(failed, 0);
    assert_eq!(rolled["state_path"], "replay", "still a flip: {rolled}");
    assert_eq!(active_version(&node_dir), "1.1.0");
    assert_eq!(get(&node), 9 + acknowledged);
}

// Two nodes share the steps: each kill of the serving worker counts
// against its restart budget (5 per minute), like any crash would.
#[test]
fn a_worker_killed_at_the_early_swap_steps_loses_no_acknowledged_call() {
    worker_kills_lose_nothing(&["prewarm", "pause", "snapshot"]);
}

#[test]
fn a_worker_killed_at_the_late_swap_steps_loses_no_acknowledged_call() {
    worker_kills_lose_nothing(&["restore", "health", "flip"]);
}

// With an early snapshot for every counter swap: an `add` replayed twice
// or lost around the early snapshot shows in the count.
const EARLY_ALWAYS: (&str, &str) = ("CLAWMESH_EARLY_SNAPSHOT_MIN_BYTES", "0");

#[test]
fn a_worker_killed_at_the_early_steps_of_an_early_snapshot_swap_loses_no_acknowledged_call() {
    worker_kills_lose_nothing_with(&["pause", "snapshot", "restore"], &[EARLY_ALWAYS]);
}

#[test]
fn a_worker_killed_at_the_late_steps_of_an_early_snapshot_swap_loses_no_acknowledged_call() {
    worker_kills_lose_nothing_with(&["health", "flip"], &[EARLY_ALWAYS]);
}

fn worker_kills_lose_nothing(steps: &[&str]) {
    worker_kills_lose_nothing_with(steps, &[]);
}

fn worker_kills_lose_nothing_with(steps: &[&str], env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = setup(dir.path(), &[]);
    let node = NodeProcess::start_with_env(&node_dir, &[], env);
    deploy(&node_dir, "1.0.0").unwrap();
    let mut expected = 0;
    // A plain SIGKILL of the serving worker first.
    add(&node, 4);
    expected += 4;
    kill_active(&node_dir, COUNTER);
    assert_eq!(get_when_serving(&node), expected);

    if env.contains(&EARLY_ALWAYS) {
        // A clean swap and rollback first: the path the faults hit.
        let swapped = deploy(&node_dir, "2.0.0").unwrap();
        assert_eq!(
            swapped["swap"]["state_path"], "migration+replay",
            "{swapped}"
        );
        admin(
            &node_dir,
            serde_json::json!({"op": "rollback", "package": COUNTER}),
        )
        .unwrap();
        assert_eq!(get_when_serving(&node), expected);
    }
    let mut version = "1.0.0";
    for step in steps {
        for who in ["kill-old", "kill-new"] {
            add(&node, 3);
            expected += 3;
            let fault = format!("{step}:{who}");
            admin(
                &node_dir,
                serde_json::json!({"op": "inject_fault", "spec": fault}),
            )
            .unwrap();
            let target = if version == "1.0.0" { "2.0.0" } else { "1.0.0" };
            let outcome = deploy(&node_dir, target);
            admin(&node_dir, serde_json::json!({"op": "inject_fault"})).unwrap();
            if outcome.is_ok() {
                version = target;
            }
            assert_eq!(
                get_when_serving(&node),
                expected,
                "after {fault} ({outcome:?})"
            );
            // v1 cannot read v2's state: go back through a rollback instead.
            if version == "2.0.0" {
                let back = admin(
                    &node_dir,
                    serde_json::json!({"op": "rollback", "package": COUNTER}),
                );
                assert!(back.is_ok(), "rollback after {fault}: {back:?}");
                version = "1.0.0";
                assert_eq!(
                    get_when_serving(&node),
                    expected,
                    "after {fault} and a rollback"
                );
            }
        }
    }
}

#[test]
fn a_node_killed_at_any_swap_step_comes_back_from_its_last_durable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = setup(dir.path(), &[]);
    let mut durable = 0;
    // Periodic checkpoints off: the test decides what is durable.
    let interval = ("CLAWMESH_CHECKPOINT_INTERVAL_MS", "3600000");
    for step in ["prewarm", "pause", "snapshot", "restore", "health", "flip"] {
        let mut node = NodeProcess::start_with_env(&node_dir, &[], &[interval]);
        if step == "prewarm" {
            deploy(&node_dir, "1.0.0").unwrap();
        }
        assert_eq!(get_when_serving(&node), durable, "restarted before {step}");
        assert_eq!(active_version(&node_dir), "1.0.0");
        add(&node, 5);
        admin(
            &node_dir,
            serde_json::json!({"op": "checkpoint", "package": COUNTER}),
        )
        .unwrap();
        durable += 5;
        assert!(
            swap_status(&node_dir)["durable_checkpoint_age_ms"]
                .as_u64()
                .is_some()
        );
        add(&node, 2); // acknowledged, journaled, not durable
        admin(
            &node_dir,
            serde_json::json!({"op": "inject_fault", "spec": format!("{step}:kill-node")}),
        )
        .unwrap();
        let outcome = deploy(&node_dir, "2.0.0");
        assert!(outcome.is_err(), "the node died at {step}: {outcome:?}");
        let status = node.wait_exit();
        assert!(!status.success(), "the node was expected to die by SIGKILL");
    }
    let node = NodeProcess::start_with_env(&node_dir, &[], &[interval]);
    assert_eq!(get_when_serving(&node), durable);
    let age = swap_status(&node_dir)["checkpoint_age_ms"].as_u64();
    assert!(age.is_some(), "status says how old the checkpoint is");
}

#[test]
fn the_sidecar_swaps_a_raw_component_in_place_and_events_stream_it() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = setup(dir.path(), &[]);
    let node = NodeProcess::start(&node_dir, &[]);
    deploy(&node_dir, "1.0.0").unwrap();
    add(&node, 9);

    // Subscribe before the swap; the first event line must be that swap.
    let events = UnixStream::connect(node_dir.join("admin.sock")).unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (&events)
        .write_all(b"{\"op\":\"events\",\"package\":\"dev.clawmesh.counter\"}\n")
        .unwrap();
    let mut lines = BufReader::new(events).lines();
    let subscribed: serde_json::Value =
        serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(subscribed["ok"]["subscribed"], true);

    let wasm = clawmesh_e2e::skill("counter_v2.wasm");
    let out = clawmesh_e2e::clawmesh_ok(&[
        "dev",
        "--watch",
        clawmesh_e2e::s(&wasm),
        "--name",
        COUNTER,
        "--node",
        clawmesh_e2e::s(&node_dir),
        "--once",
    ]);
    assert!(out.starts_with("swap 1.0.0 → 0.0.0-dev+"), "{out}");
    for step in [
        "prewarm",
        "pause",
        "snapshot",
        "restore",
        "flip",
        "state 8 B kept",
    ] {
        assert!(out.contains(step), "{step} missing from {out}");
    }
    assert_eq!(get(&node), 9, "state kept across the sidecar's swap");
    let event: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(event["ok"]["kind"], "swap", "{event}");
    assert!(
        event["ok"]["to_version"]
            .as_str()
            .unwrap()
            .starts_with("0.0.0-dev+"),
        "{event}"
    );
}

const KV: &str = "dev.clawmesh.kv";

fn kv_call(node: &NodeProcess, op: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http_post(&format!("{}/v1/skills/{KV}/{op}", node.http()), body)
}

fn kv_value(i: usize) -> Vec<u8> {
    (0..64 * 1024).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn a_state_larger_than_a_frame_swaps_and_rolls_back_through_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    let publisher = Publisher::new(dir.path(), &[&node_dir]);
    let memory = ["--max-memory-mib", "512"];
    publisher.publish(&node_dir, "kv_v1.wasm", KV, "1.0.0", &memory);
    publisher.publish(&node_dir, "kv_v2.wasm", KV, "2.0.0", &memory);
    // No periodic checkpoint: the test decides when the state is
    // snapshotted. A debug build moving 20 MiB under parallel tests needs
    // more than the default 1 s per step.
    let node = NodeProcess::start_with_env(
        &node_dir,
        &[],
        &[
            ("CLAWMESH_CHECKPOINT_INTERVAL_MS", "3600000"),
            ("CLAWMESH_SWAP_STEP_TIMEOUT_MS", "10000"),
        ],
    );
    admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": KV, "version": "1.0.0"}),
    )
    .unwrap();
    // 320 values of 64 KiB: a state of 20 MiB, over the 16 MiB frame limit.
    let keys = 320;
    for i in 0..keys {
        let mut body = format!("k{i:04}\n").into_bytes();
        body.extend_from_slice(&kv_value(i));
        let (status, answer) = kv_call(&node, "put", &body);
        assert_eq!(status, 200, "put: {}", String::from_utf8_lossy(&answer));
    }
    // The checkpoint finds the 64 KiB segment too small and grows it.
    let checkpoint = admin(
        &node_dir,
        serde_json::json!({"op": "checkpoint", "package": KV}),
    )
    .unwrap();
    assert!(checkpoint["state_bytes"].as_u64().unwrap() > 16 << 20);
    let swapped = admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": KV, "version": "2.0.0"}),
    )
    .unwrap();
    let bytes = swapped["swap"]["state_bytes"].as_u64().unwrap();
    assert!(
        bytes > 16 << 20,
        "state of {bytes} bytes is not over a frame"
    );
    // Over 64 KiB: migrated before the pause, the calls since replayed.
    assert_eq!(swapped["swap"]["state_path"], "migration+replay");
    for i in [0, keys / 2, keys - 1] {
        let (status, value) = kv_call(&node, "get", format!("k{i:04}").as_bytes());
        assert_eq!(status, 200);
        assert!(value == kv_value(i), "value {i} changed across the swap");
    }
    // A key written on v2 survives the rollback to v1 (which cannot read
    // schema 2: pre-swap state from the other buffer + replay).
    let mut body = b"late\n".to_vec();
    body.extend_from_slice(&kv_value(7));
    assert_eq!(kv_call(&node, "put", &body).0, 200);
    let back = admin(
        &node_dir,
        serde_json::json!({"op": "rollback", "package": KV}),
    )
    .unwrap();
    assert_eq!(back["state_path"], "replay", "{back}");
    let (status, value) = kv_call(&node, "get", b"late");
    assert_eq!(status, 200);
    assert!(value == kv_value(7));
    let (_, list) = kv_call(&node, "list", b"");
    assert_eq!(list.split(|&b| b == b'\n').count(), keys + 1);
}

#[test]
fn a_trap_inside_handle_keeps_every_acknowledged_call() {
    const TRAPS: &str = "dev.clawmesh.traps";
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    let publisher = Publisher::new(dir.path(), &[&node_dir]);
    publisher.publish(&node_dir, "fixture_trap_handle.wasm", TRAPS, "1.0.0", &[]);
    // No periodic checkpoint: the state since the deploy's checkpoint lives
    // only in the journal, which the worker replays into the new instance.
    let node = NodeProcess::start_with_env(
        &node_dir,
        &[],
        &[("CLAWMESH_CHECKPOINT_INTERVAL_MS", "3600000")],
    );
    admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": TRAPS, "version": "1.0.0"}),
    )
    .unwrap();
    let call = |op: &str| {
        let (status, body) = http_post(&format!("{}/v1/skills/{TRAPS}/{op}", node.http()), b"");
        (status, String::from_utf8_lossy(&body).trim().to_string())
    };
    for _ in 0..8 {
        assert_eq!(call("add").0, 200);
    }
    let (status, body) = call("boom");
    assert_ne!(status, 200);
    assert!(body.contains("recovered"), "{body}");
    assert_eq!(call("get"), (200, "8".to_string()));
    assert_eq!(call("add"), (200, "9".to_string()));
    // After a checkpoint the journal starts over: only the call since it is
    // replayed onto the restored checkpoint (this fixture's `restore`
    // ignores the state it is given, so the checkpoint itself reads as 0).
    admin(
        &node_dir,
        serde_json::json!({"op": "checkpoint", "package": TRAPS}),
    )
    .unwrap();
    assert_eq!(call("add"), (200, "10".to_string()));
    let (_, body) = call("boom");
    assert!(body.contains("+ 1 calls"), "{body}");
    assert_eq!(call("get"), (200, "1".to_string()));
}

/// A kv node with v1 and v2 published (v2 with `v2_memory`), no periodic
/// checkpoint, `values` values of 64 KiB put (keys `k0000`...).
fn kv_node(dir: &Path, v2_memory: &[&str], values: usize) -> (NodeProcess, std::path::PathBuf) {
    kv_node_with(dir, v2_memory, values, true)
}

/// [`kv_node`], with the checkpoint after the puts or without it.
fn kv_node_with(
    dir: &Path,
    v2_memory: &[&str],
    values: usize,
    checkpoint: bool,
) -> (NodeProcess, std::path::PathBuf) {
    let node_dir = dir.join("node");
    let publisher = Publisher::new(dir, &[&node_dir]);
    publisher.publish(
        &node_dir,
        "kv_v1.wasm",
        KV,
        "1.0.0",
        &["--max-memory-mib", "512"],
    );
    publisher.publish(&node_dir, "kv_v2.wasm", KV, "2.0.0", v2_memory);
    let node = NodeProcess::start_with_env(
        &node_dir,
        &[],
        &[
            ("CLAWMESH_CHECKPOINT_INTERVAL_MS", "3600000"),
            ("CLAWMESH_SWAP_STEP_TIMEOUT_MS", "10000"),
        ],
    );
    admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": KV, "version": "1.0.0"}),
    )
    .unwrap();
    for i in 0..values {
        let mut body = format!("k{i:04}\n").into_bytes();
        body.extend_from_slice(&kv_value(i));
        let (status, answer) = kv_call(&node, "put", &body);
        assert_eq!(status, 200, "put: {}", String::from_utf8_lossy(&answer));
    }
    if checkpoint {
        // The checkpoint the swap's early snapshot starts from.
        admin(
            &node_dir,
            serde_json::json!({"op": "checkpoint", "package": KV}),
        )
        .unwrap();
    }
    (node, node_dir)
}

// The last checkpoint was taken on an empty state; the puts since grew it
// to 2 MiB. The swap asks the old worker how large its state is, and moves
// it before the pause rather than inside it.
#[test]
fn a_state_grown_since_the_last_checkpoint_is_moved_before_the_pause() {
    let dir = tempfile::tempdir().unwrap();
    let (node, node_dir) = kv_node_with(dir.path(), &["--max-memory-mib", "512"], 32, false);
    let swapped = admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": KV, "version": "2.0.0"}),
    )
    .unwrap();
    assert_eq!(
        swapped["swap"]["state_path"], "migration+replay",
        "{swapped}"
    );
    assert!(swapped["swap"]["state_bytes"].as_u64().unwrap() > 2 << 20);
    for i in [0, 31] {
        assert_eq!(
            kv_call(&node, "get", format!("k{i:04}").as_bytes()).1,
            kv_value(i)
        );
    }
}

#[test]
fn calls_made_between_the_early_snapshot_and_the_pause_survive_the_swap() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB of state: over the early-snapshot threshold, so the state moves
    // before the pause and only the calls since are replayed inside it.
    let (node, node_dir) = kv_node(dir.path(), &["--max-memory-mib", "512"], 32);
    // Writes run before, during and after the swap.
    let writers = KvWriters::start(&node, 4, false);
    let swapped = admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": KV, "version": "2.0.0"}),
    )
    .unwrap();
    let acknowledged = writers.finish();
    assert_eq!(
        swapped["swap"]["state_path"], "migration+replay",
        "{swapped}"
    );
    assert!(
        swapped["swap"]["replayed"].as_u64().unwrap() > 0,
        "the writes after the early snapshot were replayed into v2: {swapped}"
    );
    assert_eq!(active_version_of(&node_dir, KV), "2.0.0");
    for key in &acknowledged {
        let (status, value) = kv_call(&node, "get", key.as_bytes());
        assert_eq!(status, 200, "acknowledged {key} lost by the swap");
        let n = key.rsplit('-').next().unwrap();
        assert_eq!(value, n.as_bytes(), "{key}");
    }
    assert!(kv_call(&node, "get", b"k0031").1 == kv_value(31));
    // A crash of v2 now restores the early snapshot and replays the journal.
    kill_active(&node_dir, KV);
    assert_kv_holds(&node, &acknowledged, "the crash");
    // And a rollback to v1 (no down-migration) keeps them too.
    let back = admin(
        &node_dir,
        serde_json::json!({"op": "rollback", "package": KV}),
    )
    .unwrap();
    assert_eq!(back["state_path"], "replay", "{back}");
    for key in &acknowledged {
        assert_eq!(
            kv_call(&node, "get", key.as_bytes()).0,
            200,
            "{key} lost by the rollback"
        );
    }
}

/// Closed-loop kv writers, each putting `w<i>-<n>` = `n`; `finish` returns
/// the keys acknowledged.
struct KvWriters {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl KvWriters {
    /// Starts `threads` writers and waits until the first wrote 20 keys.
    /// With `worker_killed`, a 5xx (a call cut by the kill, not
    /// acknowledged) is allowed; otherwise every call must succeed.
    fn start(node: &NodeProcess, threads: usize, worker_killed: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{}/v1/skills/{KV}/put", node.http());
        let handles = (0..threads)
            .map(|w| {
                let (stop, url) = (stop.clone(), url.clone());
                std::thread::spawn(move || {
                    let mut acknowledged = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{w}-{n}");
                        let (status, body) = http_post(&url, format!("{key}\n{n}").as_bytes());
                        if status == 200 {
                            acknowledged.push(key);
                        } else {
                            assert!(
                                worker_killed && status >= 500,
                                "put {key}: {status} {}",
                                String::from_utf8_lossy(&body)
                            );
                        }
                        n += 1;
                    }
                    acknowledged
                })
            })
            .collect();
        while kv_call(node, "get", b"w0-20").0 != 200 {
            std::thread::yield_now();
        }
        Self { stop, handles }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    }
}

/// SIGKILL to the active worker of `package` (the supervisor restarts it).
fn kill_active(node_dir: &Path, package: &str) {
    let status = admin(node_dir, serde_json::json!({"op": "status"})).unwrap();
    let pid = status["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["package"] == package && s["role"] == "active")
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Every acknowledged key reads back its value (once the worker serves).
fn assert_kv_holds(node: &NodeProcess, acknowledged: &[String], after: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = acknowledged.last().unwrap();
    while kv_call(node, "get", last.as_bytes()).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never served again after {after}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for key in acknowledged {
        let (status, value) = kv_call(node, "get", key.as_bytes());
        assert_eq!(status, 200, "acknowledged {key} lost by {after}");
        let n = key.rsplit('-').next().unwrap();
        assert_eq!(value, n.as_bytes(), "{key} after {after}");
    }
}

// A large state is checkpointed while it serves: the pause only swaps the
// journal for the calls since. Calls around it, and a worker killed inside
// its pause, lose nothing.
#[test]
fn a_large_state_is_checkpointed_early_under_load_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (node, node_dir) = kv_node(dir.path(), &[], 32);
    let writers = KvWriters::start(&node, 4, true);
    for _ in 0..3 {
        let checkpoint = admin(
            &node_dir,
            serde_json::json!({"op": "checkpoint", "package": KV}),
        )
        .unwrap();
        assert_eq!(
            checkpoint["state_path"], "early_snapshot+journal",
            "{checkpoint}"
        );
        assert!(checkpoint["state_bytes"].as_u64().unwrap() > 2 << 20);
    }
    // Killed after its early snapshot, inside the pause: the checkpoint
    // fails or snapshots the restarted worker; either way nothing is lost.
    admin(
        &node_dir,
        serde_json::json!({"op": "inject_fault", "spec": "checkpoint:kill-old"}),
    )
    .unwrap();
    let killed = admin(
        &node_dir,
        serde_json::json!({"op": "checkpoint", "package": KV}),
    );
    admin(&node_dir, serde_json::json!({"op": "inject_fault"})).unwrap();
    eprintln!("checkpoint with its worker killed: {killed:?}");
    assert_kv_holds(&node, &[String::from("w0-20")], "the kill");
    let after = admin(
        &node_dir,
        serde_json::json!({"op": "checkpoint", "package": KV}),
    )
    .unwrap();
    eprintln!("next checkpoint: {after}");
    let acknowledged = writers.finish();
    assert_kv_holds(&node, &acknowledged, "checkpoints and a kill");
    assert!(kv_call(&node, "get", b"k0031").1 == kv_value(31));
    // A crash now restores the last early checkpoint and replays the journal.
    kill_active(&node_dir, KV);
    assert_kv_holds(&node, &acknowledged, "a crash after early checkpoints");
}

#[test]
fn a_version_too_small_for_the_state_is_refused_at_restore_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB of state; v2 may use 12 MiB of linear memory: not enough to
    // hold it.
    let (node, node_dir) = kv_node(dir.path(), &["--max-memory-mib", "12"], 128);
    let (code, message) = admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": KV, "version": "2.0.0"}),
    )
    .unwrap_err();
    assert_eq!(code, "swap_aborted", "{message}");
    assert!(
        message.contains("restore") && message.contains("out of memory"),
        "the failure names the step and the cause: {message}"
    );
    assert_eq!(active_version_of(&node_dir, KV), "1.0.0");
    let status = admin(&node_dir, serde_json::json!({"op": "status"})).unwrap();
    let workers: Vec<_> = status["skills"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["package"] == KV)
        .collect();
    assert_eq!(workers.len(), 1, "the new worker is gone: {workers:?}");
    assert_eq!(workers[0]["restarts"], 0, "no restart: {workers:?}");
    assert_eq!(workers[0]["state"], "ready");
    // The old version still has its state, and checkpoints it.
    for i in [0, 127] {
        let (status, value) = kv_call(&node, "get", format!("k{i:04}").as_bytes());
        assert_eq!(status, 200);
        assert!(value == kv_value(i), "value {i} changed");
    }
    admin(
        &node_dir,
        serde_json::json!({"op": "checkpoint", "package": KV}),
    )
    .unwrap();
    let last = swap_status_of(&node_dir, KV)["last_failure"].clone();
    assert_eq!(last["kind"], "swap_failed", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("out of memory"),
        "{last}"
    );
}

fn swap_status_of(node_dir: &Path, package: &str) -> serde_json::Value {
    let status = admin(node_dir, serde_json::json!({"op": "status"})).unwrap();
    status["swap"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["package"] == package)
        .cloned()
        .unwrap()
}

#[test]
fn a_worker_killed_during_an_early_snapshot_swap_loses_no_acknowledged_call() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB of state: every swap here takes the early-snapshot path.
    let (node, node_dir) = kv_node(dir.path(), &["--max-memory-mib", "512"], 32);
    let mut written = 0usize;
    let mut version = "1.0.0";
    let all_there = |written: usize, after: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while kv_call(&node, "get", format!("n{}", written - 1).as_bytes()).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "never served again after {after}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 0..written {
            let (status, value) = kv_call(&node, "get", format!("n{i}").as_bytes());
            assert_eq!(status, 200, "n{i} lost after {after}");
            assert_eq!(value, i.to_string().as_bytes(), "n{i} after {after}");
        }
        let (status, value) = kv_call(&node, "get", b"k0031");
        assert!(
            status == 200 && value == kv_value(31),
            "fill lost after {after}"
        );
    };
    for step in ["pause", "restore", "flip"] {
        for who in ["kill-old", "kill-new"] {
            for _ in 0..3 {
                let (status, _) =
                    kv_call(&node, "put", format!("n{written}\n{written}").as_bytes());
                assert_eq!(status, 200);
                written += 1;
            }
            let fault = format!("{step}:{who}");
            admin(
                &node_dir,
                serde_json::json!({"op": "inject_fault", "spec": fault}),
            )
            .unwrap();
            let outcome = admin(
                &node_dir,
                serde_json::json!({"op": "deploy", "package": KV, "version": "2.0.0"}),
            );
            admin(&node_dir, serde_json::json!({"op": "inject_fault"})).unwrap();
            if outcome.is_ok() {
                version = "2.0.0";
            }
            all_there(written, &format!("{fault} ({outcome:?})"));
            // v1 cannot read v2's state: back through a rollback.
            if version == "2.0.0" {
                let back = admin(
                    &node_dir,
                    serde_json::json!({"op": "rollback", "package": KV}),
                );
                assert!(back.is_ok(), "rollback after {fault}: {back:?}");
                version = "1.0.0";
                all_there(written, &format!("{fault} and a rollback"));
            }
        }
    }
}

/// `writers` threads overwrite the 16 keys `hot0`..`hot15`, each put
/// `w<i>-<n>`, `rounds` puts per writer, concurrently; returns each key's
/// value as the worker now holds it (read after every writer stopped).
fn overwrite_hot_keys(node: &NodeProcess, writers: usize, rounds: usize) -> Vec<Vec<u8>> {
    let url = format!("{}/v1/skills/{KV}/put", node.http());
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                for n in 0..rounds {
                    let body = format!("hot{}\nw{w}-{n}", (n + w) % 16);
                    let (status, answer) = http_post(&url, body.as_bytes());
                    assert_eq!(status, 200, "put: {}", String::from_utf8_lossy(&answer));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    hot_values(node)
}

fn hot_values(node: &NodeProcess) -> Vec<Vec<u8>> {
    (0..16)
        .map(|k| {
            let (status, value) = kv_call(node, "get", format!("hot{k}").as_bytes());
            assert_eq!(status, 200, "hot{k}");
            value
        })
        .collect()
}

// Concurrent overwrites of the same keys do not commute: replaying them
// gives the state the worker had only if the journal holds them in the
// order the worker ran them. A restarted worker and a rolled-back standby
// must both end with exactly the values the live worker held.
#[test]
fn concurrent_overwrites_replay_in_the_order_the_worker_ran_them() {
    let dir = tempfile::tempdir().unwrap();
    let (node, node_dir) = kv_node(dir.path(), &["--max-memory-mib", "512"], 0);
    for round in 0..3 {
        let live = overwrite_hot_keys(&node, 8, 60);
        kill_active(&node_dir, KV);
        let deadline = Instant::now() + Duration::from_secs(30);
        while kv_call(&node, "get", b"hot0").0 != 200 {
            assert!(Instant::now() < deadline, "never served after the kill");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            hot_values(&node),
            live,
            "round {round}: checkpoint + journal replay after a worker kill"
        );
    }
    // The warm standby follows the calls made on v2; a rollback replays
    // the last of them into it and flips.
    admin(
        &node_dir,
        serde_json::json!({"op": "deploy", "package": KV, "version": "2.0.0"}),
    )
    .unwrap();
    let live = overwrite_hot_keys(&node, 8, 60);
    let back = admin(
        &node_dir,
        serde_json::json!({"op": "rollback", "package": KV}),
    )
    .unwrap();
    assert_eq!(back["kind"], "rollback", "{back}");
    assert_eq!(active_version_of(&node_dir, KV), "1.0.0");
    assert_eq!(
        hot_values(&node),
        live,
        "the standby's replay before the flip"
    );
}

// After the warm window a rollback is a swap to the previous version, and
// that version's `restore` migrates the newer state down. Counter 1.1
// reads 2.0.0's schema 2, so the rollback keeps every increment, under
// load, with no failed request (1.0.0 refuses schema 2: see
// `a_standby_that_cannot_be_brought_back_closes_the_window_and_loses_nothing`).
#[test]
fn a_rollback_after_the_window_migrates_the_state_down_and_keeps_every_increment() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = setup(dir.path(), &[("counter_v1_1.wasm", COUNTER, "1.1.0")]);
    let node = NodeProcess::start_with_env(&node_dir, &[], &[("CLAWMESH_WARM_WINDOW_SECS", "1")]);
    deploy(&node_dir, "1.1.0").unwrap();
    add(&node, 3);
    deploy(&node_dir, "2.0.0").unwrap();
    let load = Load::start(&node, 8);
    load.wait_for(100);
    // The one-second window runs out while the load goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !swap_status(&node_dir)["rollback_to"].is_null() {
        assert!(Instant::now() < deadline, "the warm window never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = swap_status(&node_dir);
    assert_eq!(status["previous_version"], "1.1.0");
    assert_eq!(status["window_closed"], "the warm window's time ran out");
    let rolled = admin(
        &node_dir,
        serde_json::json!({"op": "rollback", "package": COUNTER}),
    )
    .unwrap();
    load.wait_for(50);
    let (acknowledged, failed) = load.finish();
    assert_eq!(failed, 0);
    assert_eq!(rolled["kind"], "rollback", "{rolled}");
    assert_eq!(rolled["to_version"], "1.1.0", "{rolled}");
    assert_eq!(
        rolled["state_path"], "migration",
        "a swap whose restore migrated schema 2 down: {rolled}"
    );
    assert_eq!(active_version(&node_dir), "1.1.0");
    assert_eq!(get(&node), 3 + acknowledged);
}
