//! One cgroup per worker process: memory max, pids max, cpu weight.
//!
//! Detection prefers cgroup v2 when the unified hierarchy offers the
//! `memory`, `pids` and `cpu` controllers to the node's own cgroup, and falls
//! back to v1 (one hierarchy per controller). Worker cgroups are nested
//! under the node's *own* cgroup in each hierarchy
//! (`<own>/clawmesh/<node>/<worker>`), so limits set on the node by its
//! host still apply and only delegated subtrees are written. When neither
//! version can be used the manager says why ([`CgroupSupport::Unavailable`])
//! and workers run without limits — reported, never silent.
//!
//! v2's "no internal processes" rule: controllers can only be enabled for
//! children of a cgroup that holds no processes. If the node's own cgroup
//! holds the node itself, the node moves itself into a leaf
//! (`<own>/clawmesh-node`) first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

/// Controllers every worker cgroup needs.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Directory under the node's own cgroup that holds all clawmesh cgroups.
const CLAWMESH_DIR: &str = "clawmesh";

/// v2 leaf the node moves itself into so its own cgroup can delegate controllers.
const NODE_LEAF_DIR: &str = "clawmesh-node";

/// Longest cgroup directory name we create (well below NAME_MAX).
const MAX_NAME_LEN: usize = 96;

/// The v2 default cpu.weight; v1 cpu.shares is scaled so that this weight
/// maps to the v1 default of 1024.
pub const DEFAULT_CPU_WEIGHT: u32 = 100;

/// Limits applied to one worker's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CgroupLimits {
    /// Hard memory limit for the whole worker process (bytes).
    pub memory_max_bytes: u64,
    /// Most tasks (processes + threads) the worker may have.
    pub pids_max: u64,
    /// Relative cpu share, 1..=10000 (v2 `cpu.weight` scale).
    pub cpu_weight: u32,
}

impl Default for CgroupLimits {
    fn default() -> Self {
        Self {
            memory_max_bytes: 512 * 1024 * 1024,
            pids_max: 64,
            cpu_weight: DEFAULT_CPU_WEIGHT,
        }
    }
}

/// Which cgroup mechanism the node uses for its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "version", rename_all = "snake_case")]
pub enum CgroupSupport {
    /// Unified hierarchy; `node_dir` holds one directory per worker.
    V2 {
        /// `<own>/clawmesh/<node>` in the unified hierarchy.
        node_dir: PathBuf,
    },
    /// One hierarchy per controller.
    V1 {
        /// `<own>/clawmesh/<node>` in the memory hierarchy.
        memory_dir: PathBuf,
        /// `<own>/clawmesh/<node>` in the pids hierarchy.
        pids_dir: PathBuf,
        /// `<own>/clawmesh/<node>` in the cpu hierarchy.
        cpu_dir: PathBuf,
    },
    /// Workers run without cgroup limits.
    Unavailable {
        /// Why no cgroup can be used here.
        reason: String,
    },
}

impl CgroupSupport {
    /// Short name for status output: `v2`, `v1` or `unavailable`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::V2 { .. } => "v2",
            Self::V1 { .. } => "v1",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    /// Directories that hold this node's worker cgroups (one per hierarchy).
    fn node_dirs(&self) -> Vec<&Path> {
        match self {
            Self::V2 { node_dir } => vec![node_dir],
            Self::V1 {
                memory_dir,
                pids_dir,
                cpu_dir,
            } => vec![memory_dir, pids_dir, cpu_dir],
            Self::Unavailable { .. } => Vec::new(),
        }
    }
}

/// Why a worker cgroup could not be made or removed.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// Creating the worker's directory failed.
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing a limit file failed.
    #[error("cannot write {value:?} to {path}: {source}")]
    WriteLimit {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        source: io::Error,
    },
    /// Opening `cgroup.procs` for the child failed.
    #[error("cannot open {path}: {source}")]
    OpenProcs {
        /// The control file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Removing the worker's directory failed.
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Where the kernel's view of cgroups is read from; [`ProcView::current`]
/// for the real process, hand-written text in tests.
#[derive(Debug, Clone)]
pub struct ProcView {
    /// Contents of `/proc/self/mountinfo`.
    pub mountinfo: String,
    /// Contents of `/proc/self/cgroup`.
    pub proc_cgroup: String,
}

impl ProcView {
    /// Reads the running process's mount table and cgroup membership.
    pub fn current() -> io::Result<Self> {
        Ok(Self {
            mountinfo: fs::read_to_string("/proc/self/mountinfo")?,
            proc_cgroup: fs::read_to_string("/proc/self/cgroup")?,
        })
    }
}

/// Creates, limits, measures and removes worker cgroups for one node.
#[derive(Debug)]
pub struct CgroupManager {
    support: CgroupSupport,
}

impl CgroupManager {
    /// Detects cgroup support for the running process and prepares
    /// `<own>/clawmesh/<node>`; never fails, the outcome is in [`Self::support`].
    pub fn detect(node_name: &str) -> Self {
        match ProcView::current() {
            Ok(view) => Self::detect_from(&view, node_name),
            Err(error) => Self::unavailable(format!("cannot read /proc/self cgroup data: {error}")),
        }
    }

    /// Detection from a given view of the kernel (tests pass fake trees).
    pub fn detect_from(view: &ProcView, node_name: &str) -> Self {
        let node = sanitize_name(node_name);
        let mounts = parse_mountinfo(&view.mountinfo);
        let membership = parse_proc_cgroup(&view.proc_cgroup);
        let v2 = match prepare_v2(&mounts, &membership, &node) {
            Ok(support) => return Self { support },
            Err(reason) => reason,
        };
        match prepare_v1(&mounts, &membership, &node) {
            Ok(support) => Self { support },
            Err(v1) => Self::unavailable(format!("cgroup v2: {v2}; cgroup v1: {v1}")),
        }
    }

    /// A manager that never creates cgroups, for hosts (or tests) where the
    /// operator turned them off; `reason` is reported like a detection failure.
    pub fn unavailable(reason: String) -> Self {
        tracing::warn!(%reason, "workers run without cgroup limits");
        Self {
            support: CgroupSupport::Unavailable { reason },
        }
    }

    /// What this node can do.
    pub fn support(&self) -> &CgroupSupport {
        &self.support
    }

    /// Creates the cgroup for one worker and writes its limits. `Ok(None)`
    /// when cgroups are unavailable (already reported by [`Self::support`]).
    pub fn create(
        &self,
        worker_name: &str,
        limits: &CgroupLimits,
    ) -> Result<Option<WorkerCgroup>, CgroupError> {
        let name = sanitize_name(worker_name);
        let (dirs, writes) = match &self.support {
            CgroupSupport::Unavailable { .. } => return Ok(None),
            CgroupSupport::V2 { node_dir } => {
                let dir = node_dir.join(&name);
                let writes = vec![
                    (dir.join("memory.max"), limits.memory_max_bytes.to_string()),
                    (dir.join("pids.max"), limits.pids_max.to_string()),
                    (
                        dir.join("cpu.weight"),
                        limits.cpu_weight.clamp(1, 10_000).to_string(),
                    ),
                ];
                (vec![dir], writes)
            }
            CgroupSupport::V1 {
                memory_dir,
                pids_dir,
                cpu_dir,
            } => {
                let (memory, pids, cpu) = (
                    memory_dir.join(&name),
                    pids_dir.join(&name),
                    cpu_dir.join(&name),
                );
                let writes = vec![
                    (
                        memory.join("memory.limit_in_bytes"),
                        limits.memory_max_bytes.to_string(),
                    ),
                    (pids.join("pids.max"), limits.pids_max.to_string()),
                    (
                        cpu.join("cpu.shares"),
                        cpu_weight_to_shares(limits.cpu_weight).to_string(),
                    ),
                ];
                (vec![memory, pids, cpu], writes)
            }
        };
        let mut cgroup = WorkerCgroup {
            dirs: Vec::with_capacity(dirs.len()),
            version: self.support.label(),
            limits: *limits,
        };
        for dir in dirs {
            // A directory left by a worker of a crashed node is reused.
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Create { path: dir, source }),
            }
            cgroup.dirs.push(dir);
        }
        for (path, value) in writes {
            if let Err(source) = write_control(&path, &value) {
                // Leave nothing half-made behind.
                let _ = cgroup.remove();
                return Err(CgroupError::WriteLimit {
                    path,
                    value,
                    source,
                });
            }
        }
        if let CgroupSupport::V2 { .. } = self.support
            && let Some(dir) = cgroup.dirs.first()
        {
            // Without swap limits a v2 worker over memory.max would swap
            // instead of being killed; best effort, swap may be off.
            let _ = write_control(&dir.join("memory.swap.max"), "0");
        }
        Ok(Some(cgroup))
    }

    /// Removes the node's (empty) directory in every hierarchy; best effort,
    /// for a clean shutdown.
    pub fn remove_node_dirs(&self) {
        for dir in self.support.node_dirs() {
            let _ = fs::remove_dir(dir);
            // The shared `clawmesh` parent goes too once no node uses it.
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// The cgroup of one worker process.
#[derive(Debug)]
pub struct WorkerCgroup {
    /// One directory per hierarchy (v2: one; v1: memory, pids, cpu).
    dirs: Vec<PathBuf>,
    version: &'static str,
    limits: CgroupLimits,
}

impl WorkerCgroup {
    /// The worker's directories (the first holds the memory controller).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The limits written at creation.
    pub fn limits(&self) -> &CgroupLimits {
        &self.limits
    }

    /// Opens each hierarchy's `cgroup.procs` (close-on-exec) so a child can
    /// join with [`join_current_process`] between fork and exec.
    pub fn open_procs(&self) -> Result<CgroupJoin, CgroupError> {
        let files = self
            .dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| CgroupError::OpenProcs { path, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CgroupJoin { files })
    }

    /// Moves an already running process in (used when a process was not
    /// spawned through [`CgroupJoin`]).
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            let value = pid.to_string();
            write_control(&path, &value).map_err(|source| CgroupError::WriteLimit {
                path,
                value,
                source,
            })?;
        }
        Ok(())
    }

    /// Current memory use of everything in the cgroup, bytes.
    pub fn memory_bytes(&self) -> Option<u64> {
        let dir = self.dirs.first()?;
        let file = if self.version == "v2" {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_u64(&dir.join(file))
    }

    /// How many times the kernel's OOM killer fired in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.dirs.first()?;
        let file = if self.version == "v2" {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = fs::read_to_string(dir.join(file)).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Removes the worker's directories; the worker must have exited (and
    /// been reaped) first, or the kernel refuses with EBUSY.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in &self.dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_error.get_or_insert(CgroupError::Remove {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Open `cgroup.procs` files a freshly forked child writes itself into.
#[derive(Debug)]
pub struct CgroupJoin {
    files: Vec<File>,
}

impl CgroupJoin {
    /// Raw fds for [`join_current_process`]; valid while `self` lives.
    pub fn fds(&self) -> Vec<i32> {
        self.files.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Writes "0" (the calling process) to each `cgroup.procs` fd. Only a
/// `write(2)` per fd, so it is safe to call between fork and exec.
pub fn join_current_process(fds: &[i32]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: the fds come from a live `CgroupJoin` owned by the parent;
        // the forked child holds copies of them until exec (they are
        // close-on-exec) and only borrows them for this write.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::unistd::write(fd, b"0").map_err(io::Error::from)?;
    }
    Ok(())
}

/// v2 `cpu.weight` (1..=10000, default 100) → v1 `cpu.shares` (default 1024).
pub fn cpu_weight_to_shares(weight: u32) -> u64 {
    (u64::from(weight.clamp(1, 10_000)) * 1024 / u64::from(DEFAULT_CPU_WEIGHT)).max(2)
}

/// A cgroup filesystem mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    /// Path inside the hierarchy that is mounted (usually `/`).
    root: String,
    mount_point: PathBuf,
    /// `cgroup` or `cgroup2`.
    fstype: String,
    /// Super options: for v1, the controllers of the hierarchy.
    super_options: Vec<String>,
}

/// The node's membership from /proc/self/cgroup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Membership {
    /// `0::<path>` line.
    unified: Option<String>,
    /// (controllers, path) of each v1 hierarchy.
    v1: Vec<(Vec<String>, String)>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let root = unescape_mount_path(fields.get(3)?);
            let mount_point = PathBuf::from(unescape_mount_path(fields.get(4)?));
            let mut after = after.split(' ');
            let fstype = after.next()?.to_string();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let _source = after.next()?;
            let super_options = after
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect();
            Some(CgroupMount {
                root,
                mount_point,
                fstype,
                super_options,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn parse_proc_cgroup(text: &str) -> Membership {
    let mut membership = Membership::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            membership.unified = Some(path.to_string());
        } else {
            membership.v1.push((
                controllers.split(',').map(str::to_string).collect(),
                path.to_string(),
            ));
        }
    }
    membership
}

/// Where the process's cgroup `path` (relative to the hierarchy root) is
/// found under `mount`, if the mount covers it.
fn own_dir(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        path
    } else {
        let rest = path.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    Some(mount.mount_point.join(relative.trim_start_matches('/')))
}

fn prepare_v2(
    mounts: &[CgroupMount],
    membership: &Membership,
    node: &str,
) -> Result<CgroupSupport, String> {
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or("no cgroup2 mount")?;
    let path = membership
        .unified
        .as_deref()
        .ok_or("process is in no unified cgroup")?;
    let own = own_dir(mount, path)
        .ok_or_else(|| format!("own cgroup {path} is outside the cgroup2 mount"))?;
    let available = fs::read_to_string(own.join("cgroup.controllers")).map_err(|error| {
        format!(
            "cannot read {}: {error}",
            own.join("cgroup.controllers").display()
        )
    })?;
    let available: Vec<&str> = available.split_whitespace().collect();
    let missing: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !available.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "controllers {} not available in {}",
            missing.join(", "),
            own.display()
        ));
    }
    enable_v2_controllers(&own)?;
    let clawmesh = own.join(CLAWMESH_DIR);
    make_dir(&clawmesh)?;
    enable_v2_controllers(&clawmesh)?;
    let node_dir = clawmesh.join(node);
    make_dir(&node_dir)?;
    enable_v2_controllers(&node_dir)?;
    remove_stale_children(&node_dir);
    Ok(CgroupSupport::V2 { node_dir })
}

/// Enables the worker controllers for the children of `dir`, moving the node
/// into a leaf first if `dir` holds it (the no-internal-processes rule).
fn enable_v2_controllers(dir: &Path) -> Result<(), String> {
    let control = dir.join("cgroup.subtree_control");
    let wanted = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
    match write_control(&control, &wanted) {
        Ok(()) => Ok(()),
        Err(error) if error.raw_os_error() == Some(nix::libc::EBUSY) => {
            let leaf = dir.join(NODE_LEAF_DIR);
            make_dir(&leaf)?;
            let procs = leaf.join("cgroup.procs");
            write_control(&procs, &std::process::id().to_string()).map_err(|error| {
                format!("cannot move the node into {}: {error}", leaf.display())
            })?;
            write_control(&control, &wanted).map_err(|error| {
                format!("cannot enable {wanted} in {} (other processes share the node's cgroup?): {error}", control.display())
            })
        }
        Err(error) => Err(format!(
            "cannot enable {wanted} in {}: {error}",
            control.display()
        )),
    }
}

fn prepare_v1(
    mounts: &[CgroupMount],
    membership: &Membership,
    node: &str,
) -> Result<CgroupSupport, String> {
    let mut dirs = Vec::with_capacity(CONTROLLERS.len());
    for controller in CONTROLLERS {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == controller))
            .ok_or_else(|| format!("no v1 hierarchy with the {controller} controller"))?;
        let path = membership
            .v1
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
            .map(|(_, path)| path.as_str())
            .ok_or_else(|| format!("process is in no {controller} cgroup"))?;
        let own = own_dir(mount, path)
            .ok_or_else(|| format!("own {controller} cgroup {path} is outside its mount"))?;
        let node_dir = own.join(CLAWMESH_DIR).join(node);
        make_dir(&own.join(CLAWMESH_DIR))?;
        make_dir(&node_dir)?;
        remove_stale_children(&node_dir);
        dirs.push(node_dir);
    }
    let [memory_dir, pids_dir, cpu_dir]: [PathBuf; 3] = dirs
        .try_into()
        .map_err(|_| "internal: wrong number of v1 hierarchies".to_string())?;
    Ok(CgroupSupport::V1 {
        memory_dir,
        pids_dir,
        cpu_dir,
    })
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(format!("cannot create {}: {error}", dir.display())),
    }
}

/// Removes empty worker cgroups left by a node that died without cleanup.
fn remove_stale_children(node_dir: &Path) {
    let Ok(entries) = fs::read_dir(node_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // Fails harmlessly (EBUSY) when a process still lives there.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

fn write_control(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(value.as_bytes())
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Keeps `[A-Za-z0-9._-]`, maps the rest to `_`, bounds the length, and
/// never yields `.`/`..`/empty.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME_LEN)
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        out = format!("_{out}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 25 0:26 / ROOT/sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 25 0:27 / ROOT/sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 / ROOT/sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
33 25 0:29 / ROOT/sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 25 0:30 / ROOT/proc rw - proc proc rw
";
    const HYBRID_CGROUP: &str = "\
4:memory:/job/42
3:pids:/
2:cpu,cpuacct:/
0::/
";

    fn fake_tree(root: &Path, mountinfo: &str) -> ProcView {
        ProcView {
            mountinfo: mountinfo.replace("ROOT", &root.display().to_string()),
            proc_cgroup: String::new(),
        }
    }

    #[test]
    fn parses_mounts_and_membership() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(mounts.len(), 4, "the proc mount is skipped");
        assert_eq!(mounts[3].super_options, ["rw", "cpu", "cpuacct"]);
        let membership = parse_proc_cgroup(HYBRID_CGROUP);
        assert_eq!(membership.unified.as_deref(), Some("/"));
        assert_eq!(
            membership.v1[0],
            (vec!["memory".to_string()], "/job/42".to_string())
        );
    }

    #[test]
    fn own_dir_accounts_for_a_mount_of_a_subtree() {
        let mount = CgroupMount {
            root: "/job".into(),
            mount_point: "/sys/fs/cgroup/memory".into(),
            fstype: "cgroup".into(),
            super_options: vec![],
        };
        assert_eq!(
            own_dir(&mount, "/job/42"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/42"))
        );
        assert_eq!(own_dir(&mount, "/jobs"), None);
    }

    #[test]
    fn hybrid_host_without_v2_controllers_picks_v1_under_own_cgroups() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for dir in [
            "sys/fs/cgroup/unified",
            "sys/fs/cgroup/memory/job/42",
            "sys/fs/cgroup/pids",
            "sys/fs/cgroup/cpu,cpuacct",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(
            root.join("sys/fs/cgroup/unified/cgroup.controllers"),
            "hugetlb\n",
        )
        .unwrap();
        let mut view = fake_tree(root, HYBRID_MOUNTINFO);
        view.proc_cgroup = HYBRID_CGROUP.to_string();
        let manager = CgroupManager::detect_from(&view, "node/a");
        let CgroupSupport::V1 {
            memory_dir,
            pids_dir,
            cpu_dir,
        } = manager.support().clone()
        else {
            panic!("expected v1, got {:?}", manager.support());
        };
        assert_eq!(
            memory_dir,
            root.join("sys/fs/cgroup/memory/job/42/clawmesh/node_a")
        );
        assert_eq!(pids_dir, root.join("sys/fs/cgroup/pids/clawmesh/node_a"));
        assert_eq!(
            cpu_dir,
            root.join("sys/fs/cgroup/cpu,cpuacct/clawmesh/node_a")
        );

        // A fake tree has no kernel to create control files in new directories.
        for (dir, file) in [
            (&memory_dir, "memory.limit_in_bytes"),
            (&pids_dir, "pids.max"),
            (&cpu_dir, "cpu.shares"),
        ] {
            fs::create_dir_all(dir.join("counter_1.0.0_1")).unwrap();
            fs::write(dir.join("counter_1.0.0_1").join(file), "").unwrap();
        }
        let limits = CgroupLimits {
            memory_max_bytes: 1 << 26,
            pids_max: 16,
            cpu_weight: 50,
        };
        let worker = manager.create("counter@1.0.0#1", &limits).unwrap().unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(
            read(memory_dir.join("counter_1.0.0_1/memory.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(read(pids_dir.join("counter_1.0.0_1/pids.max")), "16");
        assert_eq!(read(cpu_dir.join("counter_1.0.0_1/cpu.shares")), "512");
        assert_eq!(worker.version(), "v1");
    }

    #[test]
    fn v2_with_controllers_is_preferred_and_enables_them_down_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let own = root.join("sys/fs/cgroup/svc");
        fs::create_dir_all(&own).unwrap();
        fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let view = ProcView {
            mountinfo: format!(
                "30 25 0:26 / {}/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                root.display()
            ),
            proc_cgroup: "0::/svc\n".into(),
        };
        // A fake tree has no kernel to create control files in new directories.
        let clawmesh = own.join(CLAWMESH_DIR);
        fs::create_dir_all(clawmesh.join("n1")).unwrap();
        for dir in [&own, &clawmesh, &clawmesh.join("n1")] {
            fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        }
        let manager = CgroupManager::detect_from(&view, "n1");
        assert_eq!(
            manager.support(),
            &CgroupSupport::V2 {
                node_dir: clawmesh.join("n1")
            }
        );
        for dir in [&own, &clawmesh, &clawmesh.join("n1")] {
            assert_eq!(
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
                "+memory +pids +cpu"
            );
        }
    }

    #[test]
    fn nothing_usable_is_reported_with_both_reasons() {
        let view = ProcView {
            mountinfo: String::new(),
            proc_cgroup: "0::/\n".into(),
        };
        let manager = CgroupManager::detect_from(&view, "n");
        let CgroupSupport::Unavailable { reason } = manager.support() else {
            panic!("expected unavailable")
        };
        assert!(reason.contains("no cgroup2 mount"), "{reason}");
        assert!(
            reason.contains("no v1 hierarchy with the memory controller"),
            "{reason}"
        );
        assert!(
            manager
                .create("w", &CgroupLimits::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn cpu_weight_scales_to_shares() {
        assert_eq!(cpu_weight_to_shares(100), 1024);
        assert_eq!(cpu_weight_to_shares(0), 10);
        assert_eq!(cpu_weight_to_shares(10_000), 102_400);
    }

    #[test]
    fn names_are_safe_directory_names() {
        assert_eq!(
            sanitize_name("com.example/kv@1.2.3"),
            "com.example_kv_1.2.3"
        );
        assert_eq!(sanitize_name(".."), "_..");
        assert_eq!(sanitize_name(""), "_");
        assert_eq!(sanitize_name(&"x".repeat(500)).len(), MAX_NAME_LEN);
    }
}
