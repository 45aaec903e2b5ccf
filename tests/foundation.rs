//! End-to-end: keys, trust roots, pack and publish on the real binary, and
//! every refusal leaves the store exactly as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clawmesh_crdt::proto::v1::PackageFile;
use clawmesh_e2e::{clawmesh, clawmesh_fails, clawmesh_ok, fingerprint, s, skill};
use prost::Message;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    key: PathBuf,
    node: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let key = root.join("alice.key");
    let id = clawmesh_ok(&["key", "gen", "--out", s(&key)]);
    assert_eq!(id.trim().len(), 16, "key gen prints the key id: {id:?}");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let node = root.join("node");
    fs::create_dir_all(&node).unwrap();
    let pubkey = root.join("alice.key.pub");
    clawmesh_ok(&[
        "trust",
        "init",
        "--key",
        s(&pubkey),
        "--out",
        s(&node.join("trust.toml")),
    ]);
    Setup {
        _dir: dir,
        root,
        key,
        node,
    }
}

/// `clawmesh pack` arguments for `wasm` as `name@version`, signed with the
/// setup's key, written to `out`.
fn pack_args(st: &Setup, wasm: &Path, name: &str, version: &str, out: &Path) -> Vec<String> {
    [
        "pack",
        s(wasm),
        "--name",
        name,
        "--version",
        version,
        "--key",
        s(&st.key),
        "-o",
        s(out),
    ]
    .map(String::from)
    .to_vec()
}

fn pack(st: &Setup, wasm: &Path, name: &str, version: &str, extra: &[&str]) -> PathBuf {
    let out = st.root.join(format!("{name}-{version}.pkg"));
    let args = pack_args(st, wasm, name, version, &out);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    clawmesh_ok(&args);
    out
}

fn publish_refused(st: &Setup, pkg: &Path, extra: &[&str], expect: &[&str]) {
    let before = fingerprint(&st.node);
    let mut args = vec!["publish", s(pkg), "--node", s(&st.node)];
    args.extend_from_slice(extra);
    let err = clawmesh_fails(&args, 1);
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert_eq!(
        fingerprint(&st.node),
        before,
        "a refused publish changed the store"
    );
}

#[test]
fn pack_publish_and_every_refusal_leaves_the_store_untouched() {
    let st = setup();
    let counter = skill("counter.wasm");
    let pkg = pack(&st, &counter, "dev.clawmesh.counter", "1.0.0", &[]);
    let out = clawmesh_ok(&["publish", s(&pkg), "--node", s(&st.node), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sha = v["sha256"].as_str().unwrap().to_string();
    assert_eq!(
        sha,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            fs::read(&counter).unwrap()
        ))
    );
    assert_eq!(v["newly_stored"], true);

    // Wrong --sha256: names expected and actual.
    let wrong = "ab".repeat(32);
    publish_refused(
        &st,
        &pkg,
        &["--sha256", &wrong],
        &["sha256 mismatch", &wrong, &sha],
    );
    // The right --sha256 is accepted (idempotently).
    clawmesh_ok(&["publish", s(&pkg), "--sha256", &sha, "--node", s(&st.node)]);

    // A bad signature: one bit flipped in the signature.
    let mut file = PackageFile::decode(fs::read(&pkg).unwrap().as_slice()).unwrap();
    let mut forged = file.clone();
    forged.manifest.as_mut().unwrap().signatures[0].signature[0] ^= 1;
    let bad_sig = st.root.join("bad-sig.pkg");
    fs::write(&bad_sig, forged.encode_to_vec()).unwrap();
    publish_refused(&st, &bad_sig, &[], &["manifest refused", "signature"]);

    // A blob swapped under a valid manifest.
    file.blob[100] ^= 0xff;
    let swapped = st.root.join("swapped.pkg");
    fs::write(&swapped, file.encode_to_vec()).unwrap();
    publish_refused(
        &st,
        &swapped,
        &[],
        &["does not match its manifest", "sha256"],
    );

    // Truncated and malformed files.
    let bytes = fs::read(&pkg).unwrap();
    let truncated = st.root.join("truncated.pkg");
    fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    publish_refused(&st, &truncated, &[], &["truncated"]);
    let garbage = st.root.join("garbage.pkg");
    fs::write(&garbage, b"\xff\xff\xff\xff not protobuf").unwrap();
    publish_refused(&st, &garbage, &[], &["not a clawmesh package"]);

    // Oversized: a sparse file past the limit is refused before it is read.
    let huge = st.root.join("huge.pkg");
    fs::File::create(&huge).unwrap().set_len(300 << 20).unwrap();
    publish_refused(&st, &huge, &[], &["more than the", "limit"]);
}

#[test]
fn a_key_outside_the_trust_root_is_refused() {
    let st = setup();
    let stranger = st.root.join("mallory.key");
    clawmesh_ok(&["key", "gen", "--out", s(&stranger)]);
    let out = st.root.join("mallory.pkg");
    clawmesh_ok(&[
        "pack",
        s(&skill("counter.wasm")),
        "--name",
        "dev.clawmesh.counter",
        "--version",
        "6.6.6",
        "--key",
        s(&stranger),
        "-o",
        s(&out),
    ]);
    publish_refused(&st, &out, &[], &["manifest refused"]);
}

#[test]
fn pack_refuses_bad_input_with_named_problems() {
    let st = setup();
    let counter = skill("counter.wasm");
    let out = st.root.join("x.pkg");
    let base = |name: &str, version: &str| pack_args(&st, &counter, name, version, &out);
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        clawmesh_fails(&refs, 1)
    };
    assert!(run(base("Not_A.Name", "1.0.0")).contains("--name"));
    assert!(run(base("dev.clawmesh.counter", "1.0")).contains("not a semantic version"));
    let mut bad_range = base("dev.clawmesh.counter", "1.0.0");
    bad_range.extend(["--dep".into(), "dev.clawmesh.kv@^1.x.y".into()]);
    assert!(run(bad_range).contains("version range"));
    // A core module is not a component.
    let core = st.root.join("core.wasm");
    fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = clawmesh_fails(
        &[
            "pack",
            s(&core),
            "--name",
            "dev.a.b",
            "--version",
            "1.0.0",
            "--key",
            s(&st.key),
            "-o",
            s(&out),
        ],
        1,
    );
    assert!(err.contains("core WebAssembly module"), "{err}");
    // A world-readable secret key is refused.
    fs::set_permissions(&st.key, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(run(base("dev.clawmesh.counter", "1.0.0")).contains("chmod 600"));
    assert!(!out.exists());
}

#[test]
fn resolve_unifies_shared_dependencies_and_names_conflicts() {
    let st = setup();
    let counter = skill("counter.wasm");
    for v in ["1.2.0", "1.5.0", "2.1.0"] {
        let p = pack(&st, &counter, "dev.clawmesh.codec", v, &[]);
        clawmesh_ok(&["publish", s(&p), "--node", s(&st.node)]);
    }
    let a = pack(
        &st,
        &counter,
        "dev.clawmesh.a",
        "1.0.0",
        &["--dep", "dev.clawmesh.codec@^1.2,shared"],
    );
    let b = pack(
        &st,
        &counter,
        "dev.clawmesh.b",
        "1.0.0",
        &["--dep", "dev.clawmesh.codec@>=1.4, <2,shared"],
    );
    let c = pack(
        &st,
        &counter,
        "dev.clawmesh.c",
        "1.0.0",
        &["--dep", "dev.clawmesh.codec@^2,shared"],
    );
    let d = pack(
        &st,
        &counter,
        "dev.clawmesh.d",
        "1.0.0",
        &["--dep", "dev.clawmesh.codec@~1.2"],
    );
    for p in [&a, &b, &c, &d] {
        clawmesh_ok(&["publish", s(p), "--node", s(&st.node)]);
    }
    let lock = clawmesh_ok(&[
        "resolve",
        "dev.clawmesh.a@1.0.0",
        "dev.clawmesh.b@1.0.0",
        "--node",
        s(&st.node),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&lock).unwrap();
    assert_eq!(v["shared"]["dev.clawmesh.codec"], "1.5.0", "{lock}");

    // A private dependency sits beside a shared one of another version.
    let lock = clawmesh_ok(&[
        "resolve",
        "dev.clawmesh.c@1.0.0",
        "dev.clawmesh.d@1.0.0",
        "--node",
        s(&st.node),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&lock).unwrap();
    assert_eq!(v["shared"]["dev.clawmesh.codec"], "2.1.0", "{lock}");
    assert_eq!(
        v["private"]["dev.clawmesh.d"]["dev.clawmesh.codec"], "1.2.0",
        "{lock}"
    );

    // A shared conflict names each requirer and range.
    let err = clawmesh_fails(
        &[
            "resolve",
            "dev.clawmesh.a@1.0.0",
            "dev.clawmesh.c@1.0.0",
            "--node",
            s(&st.node),
        ],
        1,
    );
    for needle in [
        "dev.clawmesh.codec",
        "dev.clawmesh.a@1.0.0",
        "^1.2",
        "dev.clawmesh.c@1.0.0",
        "^2",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}

#[test]
fn gc_drops_only_unreferenced_blobs() {
    let st = setup();
    let pkg = pack(
        &st,
        &skill("counter.wasm"),
        "dev.clawmesh.counter",
        "1.0.0",
        &[],
    );
    clawmesh_ok(&["publish", s(&pkg), "--node", s(&st.node)]);
    let stray = st.node.join("blobs/sha256/00");
    fs::create_dir_all(&stray).unwrap();
    let stray_blob = stray.join("00".repeat(32));
    fs::write(&stray_blob, b"unreferenced").unwrap();
    let out = clawmesh_ok(&["gc", "--node", s(&st.node), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["removed"].as_array().unwrap().len(), 1, "{out}");
    assert!(!stray_blob.exists());
    clawmesh_ok(&["publish", s(&pkg), "--node", s(&st.node)]);
}

#[test]
fn the_command_contract_holds() {
    for cmd in [
        "key",
        "trust",
        "pack",
        "publish",
        "node",
        "release",
        "rollback",
        "status",
        "invoke",
        "dev",
        "sim",
        "demo",
        "doctor",
        "deploy",
        "fetch",
        "bench",
        "resolve",
        "gc",
        "completions",
    ] {
        let out = clawmesh(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help failed");
    }
    let out = clawmesh_ok(&["completions", "bash"]);
    assert!(out.contains("clawmesh"));
    let missing = clawmesh(&["publish", "/nonexistent.pkg", "--node", "/nonexistent"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("trust root") && !err.contains("panicked"),
        "{err}"
    );
}
