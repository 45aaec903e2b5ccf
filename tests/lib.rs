//! Helpers shared by the end-to-end tests in this directory: where the
//! `clawmesh` binary and the sample skills are, running commands, and
//! fingerprinting directories to prove that a refusal changed nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The `clawmesh` binary of this build (`CLAWMESH_BIN` overrides).
pub fn clawmesh_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAWMESH_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps/; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("clawmesh");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p clawmesh-node`, or run scripts/test)",
        bin.display()
    );
    bin
}

/// Directory of the built sample skills (`CLAWMESH_SKILLS_DIR` overrides).
pub fn skills_dir() -> PathBuf {
    std::env::var_os("CLAWMESH_SKILLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../skills/target/wasm32-wasip2/release"
            ))
        })
}

/// A built sample skill; fails (never skips) when it is missing.
pub fn skill(file: &str) -> PathBuf {
    let p = skills_dir().join(file);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-skills",
        p.display()
    );
    p
}

/// Runs `clawmesh` with `args` (NO_COLOR set, logs quiet) and returns its output.
pub fn clawmesh(args: &[&str]) -> Output {
    Command::new(clawmesh_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("spawn clawmesh")
}

/// Runs `clawmesh` and asserts success; returns stdout.
pub fn clawmesh_ok(args: &[&str]) -> String {
    let out = clawmesh(args);
    assert!(
        out.status.success(),
        "clawmesh {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `clawmesh`, asserts it failed with `code`, returns stderr.
pub fn clawmesh_fails(args: &[&str], code: i32) -> String {
    let out = clawmesh(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "clawmesh {args:?}: expected exit {code}:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir` with the sha256 of its contents (lock files aside).
pub fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                out.insert(
                    p.clone(),
                    hex::encode(Sha256::digest(fs::read(&p).unwrap())),
                );
            }
        }
    }
    out
}

/// Path as &str for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A `clawmesh node` child process, stopped (SIGTERM, then SIGKILL) on drop.
pub struct NodeProcess {
    child: std::process::Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its `node.json`, read once it announced it was serving.
    pub info: serde_json::Value,
}

impl NodeProcess {
    /// Starts a node on `data_dir` with `extra` arguments and waits until it
    /// says it serves (its stderr line), with a bounded wait.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`NodeProcess::start`] with extra environment variables for the node.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(&[], data_dir, extra, env)
    }

    /// [`NodeProcess::start_with_env`] with the node run through `wrapper`
    /// (e.g. `["ip", "netns", "exec", NAME]`), which must exec the node so
    /// that the child's pid is the node's.
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let bin = clawmesh_bin();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = command
            .arg("node")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clawmesh node");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut announced = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[node] {line}");
                if !announced && line.contains(" serving on ") {
                    announced = true;
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("node on {} did not start within 60 s", data_dir.display());
        }
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(data_dir.join("node.json")).expect("node.json"))
                .expect("node.json is JSON");
        Self {
            child,
            data_dir: data_dir.to_path_buf(),
            info,
        }
    }

    /// The node's HTTP base URL.
    pub fn http(&self) -> String {
        self.info["http"]
            .as_str()
            .expect("http in node.json")
            .to_string()
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a node that is expected to exit by itself (a fault
    /// injection that kills it) and returns how it exited.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("waiting for the node")
    }

    /// Stops the node with SIGTERM and waits for it (bounded), returning
    /// whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// POSTs `body` to `url` with curl-free plain HTTP/1.1 and returns (status, body).
pub fn http_post(url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    parse_response(&response)
}

/// GETs `url`; returns (status, body).
pub fn http_get(url: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> (u16, Vec<u8>) {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .expect("status code");
    let mut body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// A publisher key, a trust root in `node_dir`, and a helper to pack and
/// publish sample skills into it.
pub struct Publisher {
    /// Scratch directory.
    pub root: PathBuf,
    /// The secret key file.
    pub key: PathBuf,
}

impl Publisher {
    /// Makes a key in `root` and a trust root trusting it in each of `node_dirs`.
    pub fn new(root: &Path, node_dirs: &[&Path]) -> Self {
        let key = root.join("publisher.key");
        clawmesh_ok(&["key", "gen", "--out", s(&key)]);
        let public = root.join("publisher.key.pub");
        for dir in node_dirs {
            fs::create_dir_all(dir).unwrap();
            clawmesh_ok(&[
                "trust",
                "init",
                "--key",
                s(&public),
                "--out",
                s(&dir.join("trust.toml")),
                "--force",
            ]);
        }
        Self {
            root: root.to_path_buf(),
            key,
        }
    }

    /// Packs `skill_file` as `name@version` and returns the package path.
    pub fn pack(&self, skill_file: &str, name: &str, version: &str, extra: &[&str]) -> PathBuf {
        let out = self.root.join(format!("{name}-{version}.pkg"));
        let wasm = skill(skill_file);
        let mut args = vec![
            "pack",
            s(&wasm),
            "--name",
            name,
            "--version",
            version,
            "--key",
            s(&self.key),
            "-o",
            s(&out),
        ];
        args.extend_from_slice(extra);
        clawmesh_ok(&args);
        out
    }

    /// Packs and publishes into `node_dir`'s store.
    pub fn publish(
        &self,
        node_dir: &Path,
        skill_file: &str,
        name: &str,
        version: &str,
        extra: &[&str],
    ) -> PathBuf {
        let pkg = self.pack(skill_file, name, version, extra);
        clawmesh_ok(&["publish", s(&pkg), "--node", s(node_dir)]);
        pkg
    }
}

/// Polls `probe` until it returns `Some`, or panics after `timeout` with
/// `what` and the last value seen. This waits on an observable condition;
/// the interval only paces the polling.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if std::time::Instant::now() >= deadline => {
                panic!("timed out waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Waits (up to `timeout`) until the node at `node_dir` lists `version` of
/// `package` in its catalog; `what` names the wait in the panic.
pub fn wait_catalog_lists(
    what: &str,
    node_dir: &Path,
    package: &str,
    version: &str,
    timeout: std::time::Duration,
) {
    wait_for(what, timeout, || {
        match admin(
            node_dir,
            serde_json::json!({"op": "catalog", "package": package}),
        ) {
            Ok(v)
                if v["versions"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|x| x == version)) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    });
}

/// `clawmesh status --json` of a node.
pub fn status_json(node_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&clawmesh_ok(&["status", "--json", "--node", s(node_dir)]))
        .expect("status JSON")
}

/// Sends one raw admin request line and returns the parsed answer.
pub fn admin_raw(node_dir: &Path, line: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut stream =
        std::os::unix::net::UnixStream::connect(node_dir.join("admin.sock")).expect("admin socket");
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).expect("admin answer is JSON")
}

/// One admin request as JSON; `Ok(the "ok" value)` or `Err((code, message))`.
pub fn admin(
    node_dir: &Path,
    request: serde_json::Value,
) -> Result<serde_json::Value, (String, String)> {
    use std::io::{BufRead, BufReader, Write};
    let stream =
        std::os::unix::net::UnixStream::connect(node_dir.join("admin.sock")).expect("admin socket");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let mut line = serde_json::to_vec(&request).unwrap();
    line.push(b'\n');
    (&stream).write_all(&line).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    if answer.is_empty() {
        return Err(("closed".into(), "the node closed the connection".into()));
    }
    let v: serde_json::Value = serde_json::from_str(&answer).expect("admin answer is JSON");
    match (v.get("ok"), v.get("error")) {
        (Some(ok), _) => Ok(ok.clone()),
        (_, Some(e)) => Err((
            e["code"].as_str().unwrap_or_default().into(),
            e["message"].as_str().unwrap_or_default().into(),
        )),
        _ => panic!("not an admin response: {v}"),
    }
}

/// A mesh of `n` nodes on loopback: node 0 is the bootstrap peer, the others
/// know only its address. All trust one publisher.
pub struct Mesh {
    /// Scratch directory.
    pub dir: tempfile::TempDir,
    /// The publisher.
    pub publisher: Publisher,
    /// The nodes (None while stopped).
    pub nodes: Vec<Option<NodeProcess>>,
    /// Data directories.
    pub dirs: Vec<PathBuf>,
    /// Node 0's p2p address.
    pub bootstrap: String,
}

impl Mesh {
    /// Starts `n` nodes.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..n)
            .map(|i| dir.path().join(format!("node{i}")))
            .collect();
        let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let publisher = Publisher::new(dir.path(), &refs);
        let first = NodeProcess::start(&dirs[0], &[]);
        let bootstrap = first.info["p2p"][0]
            .as_str()
            .expect("p2p address")
            .to_string();
        let mut nodes = vec![Some(first)];
        for d in &dirs[1..] {
            nodes.push(Some(NodeProcess::start(d, &["--bootstrap", &bootstrap])));
        }
        Self {
            dir,
            publisher,
            nodes,
            dirs,
            bootstrap,
        }
    }

    /// Stops node `i` (SIGTERM).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.stop();
        }
    }

    /// Restarts node `i` on its data dir.
    pub fn restart(&mut self, i: usize) {
        let extra: Vec<&str> = if i == 0 {
            vec![]
        } else {
            vec!["--bootstrap", &self.bootstrap]
        };
        self.nodes[i] = Some(NodeProcess::start(&self.dirs[i], &extra));
    }

    /// Data dir of node `i` as &str.
    pub fn node(&self, i: usize) -> &str {
        s(&self.dirs[i])
    }

    /// Waits until every live node sees `package` targeted at `version`.
    pub fn wait_target(&self, package: &str, version: &str, timeout: std::time::Duration) {
        for (i, d) in self.dirs.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            wait_for(
                &format!("node{i} to target {package}@{version}"),
                timeout,
                || {
                    let st = status_json(d);
                    let got = st["mesh"]["targets"][package]["version"].clone();
                    if got == version {
                        Ok(())
                    } else {
                        Err(format!("target {got}"))
                    }
                },
            );
        }
    }

    /// Waits until every live node reports `package` Active at `version`
    /// for itself.
    pub fn wait_active(&self, package: &str, version: &str, timeout: std::time::Duration) {
        for (i, d) in self.dirs.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            wait_for(
                &format!("node{i} to run {package}@{version}"),
                timeout,
                || {
                    let st = status_json(d);
                    let local = &st["mesh"]["local"][package];
                    if local["state"] == "active" && local["running"] == version {
                        Ok(())
                    } else {
                        Err(format!("{local}"))
                    }
                },
            );
        }
    }
}

/// A mesh of nodes split into two groups by a network the test owns: each
/// node in a network namespace of its own, its veth on its group's bridge,
/// the two bridges joined by one veth pair in a namespace of the test's.
/// Taking that pair down partitions the groups; bringing it up heals them.
/// Every namespace (and with it every link) is deleted on drop, panics included.
pub struct NetnsLab {
    /// The bridges' namespace.
    pub bridge_ns: String,
    /// Per node: its namespace.
    pub node_ns: Vec<String>,
    created: Vec<String>,
}

/// Subnet of the lab's nodes (the namespaces isolate it from the host's).
const LAB_SUBNET: &str = "10.77.0";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsLab {
    /// Builds the lab for nodes `0..n`, `group_a` on one bridge and the
    /// rest on the other. `Err` says why namespaces are not available here
    /// (not root, no iproute2, no permission); nothing is left behind.
    pub fn create(n: usize, group_a: &[usize]) -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root".into());
        }
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("cmt-{}-{run}", std::process::id());
        let mut lab = Self {
            bridge_ns: format!("{id}-br"),
            node_ns: (0..n).map(|i| format!("{id}-n{i}")).collect(),
            created: Vec::new(),
        };
        lab.build(group_a)?;
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    fn build(&mut self, group_a: &[usize]) -> Result<(), String> {
        let br = self.bridge_ns.clone();
        self.add_ns(&br)?;
        for bridge in ["bra", "brb"] {
            ip(&["-n", &br, "link", "add", bridge, "type", "bridge"])?;
            ip(&["-n", &br, "link", "set", bridge, "up"])?;
        }
        ip(&[
            "-n", &br, "link", "add", "xa", "type", "veth", "peer", "name", "xb",
        ])?;
        ip(&["-n", &br, "link", "set", "xa", "master", "bra"])?;
        ip(&["-n", &br, "link", "set", "xb", "master", "brb"])?;
        for (i, ns) in self.node_ns.clone().iter().enumerate() {
            self.add_ns(ns)?;
            let port = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            let bridge = if group_a.contains(&i) { "bra" } else { "brb" };
            ip(&["-n", &br, "link", "set", &port, "master", bridge])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        self.heal()
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{LAB_SUBNET}.{}", i + 1)
    }

    /// The wrapper that runs a command in node `i`'s namespace. `nsenter
    /// --net` switches the network namespace only; `ip netns exec` (used when
    /// util-linux's nsenter is missing) also remounts /sys, which hides the
    /// cgroup hierarchy from the node (its skills then run without limits).
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        let ns = &self.node_ns[i];
        let nsenter = Command::new("nsenter")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if nsenter {
            vec![
                "nsenter".into(),
                format!("--net=/run/netns/{ns}"),
                "--".into(),
            ]
        } else {
            vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()]
        }
    }

    /// Takes the link between the two groups down.
    pub fn split(&self) {
        for end in ["xa", "xb"] {
            ip(&["-n", &self.bridge_ns, "link", "set", end, "down"]).unwrap();
        }
    }

    /// Brings the link between the two groups back up.
    pub fn heal(&self) -> Result<(), String> {
        for end in ["xa", "xb"] {
            ip(&["-n", &self.bridge_ns, "link", "set", end, "up"])?;
        }
        Ok(())
    }
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the links in it (and their veth peers).
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}
