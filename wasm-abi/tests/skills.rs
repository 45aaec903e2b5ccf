//! End-to-end tests against the sample skills and fixtures built by
//! `scripts/build-skills` (wasm32-wasip2). A missing file fails the test with
//! a message to run the script; nothing is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawmesh_wasm_abi::{
    CacheOutcome, CallError, EngineConfig, HostClock, HostLog, LoadError, LogLevel, SkillEngine,
    SkillInstance, SkillState, SystemClock,
};
use sha2::{Digest, Sha256};

/// Where the built skills are: `CLAWMESH_SKILLS_DIR`, or the skills
/// workspace's release output.
fn skills_dir() -> PathBuf {
    std::env::var_os("CLAWMESH_SKILLS_DIR").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../skills/target/wasm32-wasip2/release"
            ))
        },
        PathBuf::from,
    )
}

/// The bytes of built skill `name` (file stem, e.g. `counter_v2`).
fn skill_bytes(name: &str) -> Vec<u8> {
    let path = skills_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run scripts/build-skills first (or set CLAWMESH_SKILLS_DIR)",
            path.display()
        )
    })
}

/// Collects log lines so tests can see what a skill logged.
#[derive(Default)]
struct RecordingLog {
    lines: Mutex<Vec<(LogLevel, String)>>,
    dropped: AtomicU64,
}

impl HostLog for RecordingLog {
    fn log(&self, level: LogLevel, message: &str) {
        self.lines.lock().unwrap().push((level, message.to_owned()));
    }
    fn dropped(&self, bytes: usize) {
        self.dropped.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// A clock the test sets by hand.
struct FixedClock(AtomicU64);

impl HostClock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn engine_with(cfg: EngineConfig) -> SkillEngine {
    SkillEngine::new(cfg).expect("engine")
}

fn engine() -> SkillEngine {
    engine_with(EngineConfig::default())
}

fn instance(engine: &SkillEngine, name: &str) -> SkillInstance {
    let component = engine.load(&skill_bytes(name)).expect("load");
    engine
        .instantiate(
            &component,
            SystemClock::shared(),
            Arc::new(RecordingLog::default()),
        )
        .expect("instantiate")
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[test]
fn counter_adds_gets_snapshots_and_restores() {
    let engine = engine();
    let mut counter = instance(&engine, "counter");
    assert_eq!(text(counter.handle("add", b"").unwrap()), "1");
    assert_eq!(text(counter.handle("add", b"41").unwrap()), "42");
    assert_eq!(text(counter.handle("get", b"").unwrap()), "42");
    counter.health().unwrap();

    let state = counter.snapshot().unwrap();
    assert_eq!(state.schema, 1);

    let mut fresh = instance(&engine, "counter");
    assert_eq!(text(fresh.handle("get", b"").unwrap()), "0");
    fresh.restore(&state).unwrap();
    assert_eq!(text(fresh.handle("get", b"").unwrap()), "42");
}

#[test]
fn skill_errors_do_not_poison() {
    let engine = engine();
    let mut counter = instance(&engine, "counter");
    let err = counter.handle("add", b"many").unwrap_err();
    assert!(
        matches!(&err, CallError::Skill { code, .. } if code == "bad-input"),
        "{err}"
    );
    let err = counter.handle("frobnicate", b"").unwrap_err();
    assert!(
        matches!(&err, CallError::Skill { code, .. } if code == "unknown-op"),
        "{err}"
    );
    let err = counter
        .restore(&SkillState {
            schema: 9,
            data: vec![],
        })
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Skill { code, .. } if code == "unsupported-schema"),
        "{err}"
    );
    assert!(!counter.is_poisoned());
    assert_eq!(text(counter.handle("add", b"").unwrap()), "1");
}

#[test]
fn counter_v2_migrates_schema_1_and_v1_refuses_schema_2() {
    let engine = engine();
    let mut v1 = instance(&engine, "counter");
    v1.handle("add", b"7").unwrap();
    let state = v1.snapshot().unwrap();

    let mut v2 = instance(&engine, "counter_v2");
    v2.restore(&state).unwrap();
    assert_eq!(text(v2.handle("get", b"").unwrap()), "7");
    assert_eq!(text(v2.handle("adds", b"").unwrap()), "0");
    v2.handle("add", b"").unwrap();
    let state2 = v2.snapshot().unwrap();
    assert_eq!(state2.schema, 2);

    let mut v2b = instance(&engine, "counter_v2");
    v2b.restore(&state2).unwrap();
    assert_eq!(text(v2b.handle("get", b"").unwrap()), "8");
    assert_eq!(text(v2b.handle("adds", b"").unwrap()), "1");

    let err = v1.restore(&state2).unwrap_err();
    assert!(
        matches!(&err, CallError::Skill { code, .. } if code == "unsupported-schema"),
        "{err}"
    );
}

#[test]
fn kv_v1_state_migrates_into_kv_v2() {
    let engine = engine();
    let mut v1 = instance(&engine, "kv_v1");
    v1.handle("put", b"alpha\none").unwrap();
    v1.handle("put", b"beta\n\x00\x01binary").unwrap();
    v1.handle("put", b"gone\nx").unwrap();
    assert_eq!(text(v1.handle("delete", b"gone").unwrap()), "1");
    assert_eq!(text(v1.handle("list", b"").unwrap()), "alpha\nbeta");
    let err = v1.handle("get", b"gone").unwrap_err();
    assert!(
        matches!(&err, CallError::Skill { code, .. } if code == "not-found"),
        "{err}"
    );
    let state = v1.snapshot().unwrap();
    assert_eq!(state.schema, 1);

    let mut v2 = instance(&engine, "kv_v2");
    v2.restore(&state).unwrap();
    assert_eq!(v2.handle("get", b"alpha").unwrap(), b"one");
    assert_eq!(v2.handle("get", b"beta").unwrap(), b"\x00\x01binary");
    assert_eq!(text(v2.handle("version", b"alpha").unwrap()), "1");
    assert_eq!(text(v2.handle("put", b"alpha\ntwo").unwrap()), "2");

    let state2 = v2.snapshot().unwrap();
    assert_eq!(state2.schema, 2);
    let mut v2b = instance(&engine, "kv_v2");
    v2b.restore(&state2).unwrap();
    assert_eq!(text(v2b.handle("version", b"alpha").unwrap()), "2");
    assert_eq!(text(v2b.handle("list", b"").unwrap()), "alpha\nbeta");
}

#[test]
fn transform_uses_its_private_dependency() {
    let engine = engine();
    let mut transform = instance(&engine, "transform");
    assert_eq!(
        text(transform.handle("slug", b"Hello, Mesh World!").unwrap()),
        "hello-mesh-world"
    );
    assert_eq!(
        text(transform.handle("words", b"one two  three").unwrap()),
        "3"
    );
    assert_eq!(
        text(transform.handle("title", b"hELLO wORLD").unwrap()),
        "Hello World"
    );
}

#[test]
fn infinite_loop_hits_the_deadline_and_the_engine_serves_on() {
    let deadline = Duration::from_millis(200);
    let engine = engine_with(EngineConfig {
        call_deadline: deadline,
        ..EngineConfig::default()
    });
    let mut looping = instance(&engine, "fixture_loop");
    let started = Instant::now();
    let err = looping.handle("spin", b"").unwrap_err();
    println!(
        "loop interrupted after {:?} (deadline {deadline:?})",
        started.elapsed()
    );
    assert_eq!(err, CallError::DeadlineExceeded { deadline });
    assert!(looping.is_poisoned());
    assert_eq!(
        looping.handle("spin", b"").unwrap_err(),
        CallError::Poisoned
    );

    let mut counter = instance(&engine, "counter");
    assert_eq!(text(counter.handle("add", b"").unwrap()), "1");
    let mut again = instance(&engine, "fixture_loop");
    again.health().unwrap();
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let limit = 16 << 20;
    let engine = engine_with(EngineConfig {
        max_memory_bytes: limit,
        ..EngineConfig::default()
    });
    let mut alloc = instance(&engine, "fixture_alloc");
    let err = alloc.handle("grow", b"").unwrap_err();
    assert_eq!(err, CallError::MemoryLimit { limit });
    assert!(alloc.is_poisoned());
    let mut counter = instance(&engine, "counter");
    assert_eq!(text(counter.handle("get", b"").unwrap()), "0");
}

#[test]
fn trap_in_restore_is_a_trap() {
    let engine = engine();
    let mut broken = instance(&engine, "fixture_trap_restore");
    assert_eq!(text(broken.handle("add", b"").unwrap()), "1");
    let err = broken
        .restore(&SkillState {
            schema: 1,
            data: 5u64.to_le_bytes().to_vec(),
        })
        .unwrap_err();
    assert!(matches!(&err, CallError::Trap(_)), "{err}");
    assert!(broken.is_poisoned());
}

#[test]
fn trap_in_handle_poisons_the_instance() {
    let engine = engine();
    let mut skill = instance(&engine, "fixture_trap_handle");
    assert_eq!(text(skill.handle("add", b"").unwrap()), "1");
    let err = skill.handle("boom", b"").unwrap_err();
    assert!(
        matches!(&err, CallError::Trap(message) if message.contains("unreachable")),
        "{err}"
    );
    assert!(skill.is_poisoned());
    assert_eq!(skill.handle("get", b"").unwrap_err(), CallError::Poisoned);
    let mut fresh = instance(&engine, "fixture_trap_handle");
    assert_eq!(text(fresh.handle("get", b"").unwrap()), "0");
}

#[test]
fn not_a_component_is_refused_naming_it() {
    let engine = engine();
    let err = engine
        .load(&skill_bytes("fixture_not_a_component"))
        .unwrap_err();
    assert_eq!(err.to_string(), "not a WebAssembly component: core module");
    let err = engine.load(b"#!/bin/sh\necho not wasm\n").unwrap_err();
    assert!(matches!(err, LoadError::NotAComponent { .. }), "{err}");
    assert!(err.to_string().contains("no magic number"), "{err}");
}

#[test]
fn wrong_world_is_refused_naming_the_missing_export() {
    let engine = engine();
    let err = engine
        .load(&skill_bytes("fixture_wrong_world"))
        .unwrap_err();
    assert!(
        matches!(err, LoadError::MissingExport { name: "handle" }),
        "{err}"
    );
    assert!(err.to_string().contains("missing export `handle`"), "{err}");
}

#[test]
fn second_cached_load_is_a_hit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..EngineConfig::default()
    };
    let wasm = skill_bytes("kv_v2");
    let sha256: [u8; 32] = Sha256::digest(&wasm).into();

    let first = engine_with(cfg.clone());
    let started = Instant::now();
    let (_, outcome) = first.load_cached(&wasm, &sha256).unwrap();
    let miss = started.elapsed();
    assert_eq!(outcome, CacheOutcome::Miss);
    drop(first);

    // A second engine with the same config stands for a restarted worker.
    let second = engine_with(cfg);
    let started = Instant::now();
    let (component, outcome) = second.load_cached(&wasm, &sha256).unwrap();
    let hit = started.elapsed();
    assert_eq!(outcome, CacheOutcome::Hit);
    println!("kv_v2 load: miss {miss:?}, hit {hit:?}");
    let mut kv = second
        .instantiate(
            &component,
            SystemClock::shared(),
            Arc::new(RecordingLog::default()),
        )
        .unwrap();
    assert_eq!(text(kv.handle("put", b"k\nv").unwrap()), "1");

    let mut wrong = sha256;
    wrong[0] ^= 1;
    assert!(matches!(
        second.load_cached(&wasm, &wrong),
        Err(LoadError::DigestMismatch { .. })
    ));
}

#[test]
fn refused_components_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..EngineConfig::default()
    });
    let wasm = skill_bytes("fixture_wrong_world");
    let sha256: [u8; 32] = Sha256::digest(&wasm).into();
    assert!(engine.load_cached(&wasm, &sha256).is_err());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .map(Iterator::count)
            .unwrap_or(0),
        0
    );
}

#[test]
fn pool_bounds_live_instances() {
    let engine = engine_with(EngineConfig {
        max_instances: 1,
        ..EngineConfig::default()
    });
    let component = engine.load(&skill_bytes("counter")).unwrap();
    let log: Arc<dyn HostLog> = Arc::new(RecordingLog::default());
    let first = engine
        .instantiate(&component, SystemClock::shared(), log.clone())
        .unwrap();
    let err = engine
        .instantiate(&component, SystemClock::shared(), log.clone())
        .unwrap_err();
    assert!(err.to_string().contains("instance slots"), "{err}");
    drop(first);
    engine
        .instantiate(&component, SystemClock::shared(), log)
        .unwrap();
}

#[test]
fn clock_and_log_are_the_hosts() {
    let engine = engine_with(EngineConfig {
        max_log_bytes_per_call: 8,
        ..EngineConfig::default()
    });
    let component = engine.load(&skill_bytes("transform")).unwrap();
    let clock = Arc::new(FixedClock(AtomicU64::new(1_234)));
    let log = Arc::new(RecordingLog::default());
    let mut skill = engine
        .instantiate(&component, clock.clone(), log.clone())
        .unwrap();
    assert_eq!(text(skill.handle("now", b"").unwrap()), "1234");
    clock.0.store(5_000, Ordering::Relaxed);
    assert_eq!(text(skill.handle("now", b"").unwrap()), "5000");

    skill.handle("log", b"hello world!").unwrap();
    assert_eq!(
        *log.lines.lock().unwrap(),
        vec![(LogLevel::Info, "hello wo".to_owned())]
    );
    assert_eq!(log.dropped.load(Ordering::Relaxed), 4);
    skill.handle("log", b"again").unwrap();
    assert_eq!(log.lines.lock().unwrap().len(), 2, "the bound is per call");
}

#[test]
fn ungranted_import_is_refused_naming_it() {
    let engine = engine();
    let err = engine.load(&skill_bytes("fixture_sockets")).unwrap_err();
    assert!(
        matches!(&err, LoadError::UngrantedImport { name } if name.starts_with("wasi:sockets/")),
        "{err}"
    );
    assert!(
        err.to_string().contains("which this host does not grant"),
        "{err}"
    );
    println!("{err}");
}

#[test]
fn export_with_the_wrong_type_is_refused_naming_it() {
    let engine = engine();
    let err = engine
        .load(&skill_bytes("fixture_wrong_types"))
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::WrongExportType { name, .. } if name == "handle"),
        "{err}"
    );
    println!("{err}");
}
