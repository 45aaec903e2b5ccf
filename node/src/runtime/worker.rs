//! The `clawmesh worker` process: hosts one skill version and serves the
//! node's frames over a Unix socket.
//!
//! One serving thread: it reads whatever frames the node sent, runs them
//! one at a time against the (single-threaded) skill instance and writes
//! their answers back in one write (see [`serve`]). The worker connects to
//! the node first, then loads the skill and sends a `Hello` frame (id 0):
//! `Ok` when ready, `Err(LoadFailed)` naming the problem otherwise. It exits
//! when the node's end of the socket closes, and asks the kernel to kill it
//! if the node dies first, so no worker outlives its node.

use std::ffi::OsString;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawmesh_wasm_abi::{
    CallError, EngineConfig, HostClock, HostLog, SkillComponent, SkillEngine, SkillInstance,
    SkillState, SystemClock, TracingLog,
};

use super::frame::{self, FailureCode, LENGTH_PREFIX, Request, Response, WorkerFailure};
use crate::swap::worker_segment::{ReceivedFds, SegmentState};

/// Bytes read from the node's socket at once: many pipelined frames.
const READ_BUFFER: usize = 64 * 1024;

/// Answers gathered before one write to the node.
const WRITE_BUFFER: usize = 64 * 1024;

/// Frame buffers that grew past this are freed after use, so one large
/// frame does not pin memory.
const MAX_KEPT_CAPACITY: usize = 64 * 1024;

/// Answers are written at the latest this long after the first of them
/// was made, even while more frames are buffered (a slow call must not
/// hold back the answers before it).
const MAX_ANSWER_HOLD: Duration = Duration::from_millis(1);

/// The serving thread's timer slack (the kernel's default is 50 µs).
const TIMER_SLACK_NS: std::ffi::c_ulong = 1_000;

/// Default call deadline in milliseconds (the 1 s).
pub const DEFAULT_DEADLINE_MS: u64 = 1000;

/// Arguments of the hidden `clawmesh worker` subcommand.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WorkerArgs {
    /// Unix socket the node listens on for this worker.
    #[arg(long)]
    pub socket: PathBuf,
    /// The skill's component file.
    #[arg(long)]
    pub wasm: PathBuf,
    /// Expected sha256 of the component file, hex.
    #[arg(long)]
    pub sha256: String,
    /// Directory for compiled components (shared by workers).
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// Most bytes of linear memory the skill instance may use.
    #[arg(long, default_value_t = EngineConfig::DEFAULT_MAX_MEMORY_BYTES)]
    pub max_memory: u64,
    /// Deadline of one call in milliseconds.
    #[arg(long, default_value_t = DEFAULT_DEADLINE_MS)]
    pub deadline_ms: u64,
    /// Name the skill's log lines are tagged with (`package@version`).
    #[arg(long, default_value = "skill")]
    pub name: String,
}

impl WorkerArgs {
    /// The command-line arguments after `worker` that parse back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            "--socket".into(),
            self.socket.clone().into(),
            "--wasm".into(),
            self.wasm.clone().into(),
            "--sha256".into(),
            self.sha256.clone().into(),
            "--cache-dir".into(),
            self.cache_dir.clone().into(),
            "--max-memory".into(),
            self.max_memory.to_string().into(),
            "--deadline-ms".into(),
            self.deadline_ms.to_string().into(),
            "--name".into(),
            self.name.clone().into(),
        ]
    }
}

/// Runs a worker until the node closes the socket or sends `Shutdown`.
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    // Killed with the node even if the socket close were missed.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("setting the parent-death signal")?;
    // A restore waiting for another process's snapshot sleeps on the
    // segment's futex; where the kernel refuses the futex it polls with
    // 20 µs sleeps instead, which the default 50 µs slack would stretch.
    if let Err(error) = nix::sys::prctl::set_timerslack(TIMER_SLACK_NS) {
        tracing::debug!(%error, "timer slack unchanged");
    }
    let stream = UnixStream::connect(&args.socket)
        .with_context(|| format!("connecting to the node at {}", args.socket.display()))?;
    let mut hello = Vec::new();
    let skill = match Skill::load(&args) {
        Ok(skill) => skill,
        Err(error) => {
            let message = format!("{error:#}");
            let failure = WorkerFailure {
                code: FailureCode::LoadFailed,
                skill_code: "",
                message: &message,
            };
            frame::encode_response(frame::HELLO_ID, &Response::Err(failure), &mut hello)?;
            // The node may already be gone; the error is returned either way.
            let _ = (&stream).write_all(&hello);
            return Err(error);
        }
    };
    frame::encode_response(frame::HELLO_ID, &Response::Ok(&[]), &mut hello)?;
    (&stream).write_all(&hello).context("sending hello")?;

    let reader = stream.try_clone().context("cloning the socket")?;
    let fds = ReceivedFds::default();
    let mut skill = skill;
    skill.segment = SegmentState::new(fds.clone());
    serve(
        skill,
        BufReader::with_capacity(
            READ_BUFFER,
            FdReader {
                stream: reader,
                fds,
            },
        ),
        BufWriter::with_capacity(WRITE_BUFFER, stream),
    )
}

/// The loaded skill and what is needed to replace a poisoned instance.
struct Skill {
    engine: SkillEngine,
    component: SkillComponent,
    instance: SkillInstance,
    clock: Arc<dyn HostClock>,
    log: Arc<dyn HostLog>,
    /// The state segment, the calls since the instance's last checkpoint,
    /// and what a trapped instance is recovered from.
    segment: SegmentState,
}

impl Skill {
    fn load(args: &WorkerArgs) -> anyhow::Result<Self> {
        let expected: [u8; 32] = hex::decode(&args.sha256)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .with_context(|| format!("--sha256 {:?} is not 64 hex digits", args.sha256))?;
        let size = std::fs::metadata(&args.wasm)
            .with_context(|| format!("reading {}", args.wasm.display()))?
            .len();
        if size > clawmesh_wasm_abi::MAX_COMPONENT_BYTES as u64 {
            bail!(
                "{} is {size} bytes, over the {}-byte component limit",
                args.wasm.display(),
                clawmesh_wasm_abi::MAX_COMPONENT_BYTES
            );
        }
        let wasm = std::fs::read(&args.wasm)
            .with_context(|| format!("reading {}", args.wasm.display()))?;
        let config = EngineConfig {
            max_memory_bytes: args.max_memory,
            call_deadline: Duration::from_millis(args.deadline_ms),
            cache_dir: Some(args.cache_dir.clone()),
            ..EngineConfig::default()
        };
        let engine = SkillEngine::new(config).context("building the wasm engine")?;
        let (component, cache) = engine.load_cached(&wasm, &expected).with_context(|| {
            format!(
                "loading {} (the engine checks its sha256 first)",
                args.wasm.display()
            )
        })?;
        tracing::debug!(?cache, skill = %args.name, "component loaded");
        let clock = SystemClock::shared();
        let log: Arc<dyn HostLog> = Arc::new(TracingLog::new(args.name.clone()));
        let instance = engine
            .instantiate(&component, clock.clone(), log.clone())
            .context("instantiating the component")?;
        Ok(Self {
            engine,
            component,
            instance,
            clock,
            log,
            segment: SegmentState::new(ReceivedFds::default()),
        })
    }

    /// Replaces a poisoned instance and brings its state back: the last
    /// checkpoint from the segment, then the calls acknowledged since it,
    /// replayed in the order they ran. Returns what the recovery did.
    fn reinstantiate(&mut self) -> anyhow::Result<String> {
        self.instance = self
            .engine
            .instantiate(&self.component, self.clock.clone(), self.log.clone())
            .context("re-instantiating after a trap")?;
        Ok(self.segment.recover(&mut self.instance))
    }
}

/// Reads the socket with `recvmsg`, so an fd passed with SCM_RIGHTS (the
/// state segment) is kept rather than dropped by the kernel as a plain
/// `read` would; fds queue in arrival order for the `AttachSegment` frame
/// whose first byte carried them.
struct FdReader {
    stream: UnixStream,
    fds: ReceivedFds,
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (read, fd) = clawmesh_shm::recv_fd(&self.stream, buf)?;
        if let Some(fd) = fd {
            self.fds.push(fd);
        }
        Ok(read)
    }
}

/// Serves frames on this one thread until the node goes away or says
/// `Shutdown`: each read takes whatever the node has sent (often many
/// pipelined frames), the frames run one after the other against the
/// (single-threaded) instance, and their answers leave in one write before
/// the thread would wait on the socket again. No thread hand-offs per call.
fn serve(
    mut skill: Skill,
    mut reader: BufReader<FdReader>,
    mut writer: BufWriter<UnixStream>,
) -> anyhow::Result<()> {
    let mut body = Vec::new();
    let mut out = Vec::new();
    // When the oldest answer not yet written was made.
    let mut holding_since: Option<Instant> = None;
    loop {
        if reader.buffer().len() < LENGTH_PREFIX {
            flush(&mut writer, &mut holding_since)?;
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        if reader.read_exact(&mut prefix).is_err() {
            break; // node closed the socket: time to go
        }
        let length = match frame::frame_length(prefix) {
            Ok(length) => length,
            Err(error) => {
                tracing::error!(%error, "node sent a bad frame length; closing");
                break;
            }
        };
        if reader.buffer().len() < length {
            flush(&mut writer, &mut holding_since)?;
        }
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            break;
        }
        out.clear();
        let flow = answer(&mut skill, &body, &mut out)?;
        writer.write_all(&out).context("writing to the node")?;
        if let Flow::Stop = flow {
            break;
        }
        let now = Instant::now();
        if now.duration_since(*holding_since.get_or_insert(now)) >= MAX_ANSWER_HOLD {
            flush(&mut writer, &mut holding_since)?;
        }
        for buffer in [&mut body, &mut out] {
            if buffer.capacity() > MAX_KEPT_CAPACITY {
                *buffer = Vec::new();
            }
        }
    }
    // The node may be gone already; nothing is left to tell it otherwise.
    let _ = writer.flush();
    Ok(())
}

/// Writes the answers held so far.
fn flush(
    writer: &mut BufWriter<UnixStream>,
    holding_since: &mut Option<Instant>,
) -> anyhow::Result<()> {
    if holding_since.take().is_some() {
        writer.flush().context("writing to the node")?;
    }
    Ok(())
}

/// Whether to keep serving after an answer.
enum Flow {
    Continue,
    Stop,
}

/// Runs one frame and writes its answer frame into `out`.
fn answer(skill: &mut Skill, body: &[u8], out: &mut Vec<u8>) -> anyhow::Result<Flow> {
    let request = match frame::decode_request(body) {
        Ok(request) => request,
        Err(error) => {
            let id = body
                .first_chunk::<8>()
                .map_or(0, |id| u64::from_le_bytes(*id));
            let message = error.to_string();
            let failure = WorkerFailure {
                code: FailureCode::BadRequest,
                skill_code: "",
                message: &message,
            };
            frame::encode_response(id, &Response::Err(failure), out)?;
            return Ok(Flow::Continue);
        }
    };
    let id = request.id;
    let result = match request.body {
        Request::Invoke { op, input } => {
            let result = skill.instance.handle(op, input);
            if result.is_ok() {
                skill.segment.journal(op, input);
            }
            result
        }
        Request::Snapshot => skill.instance.snapshot().map(|state| {
            let mut payload = Vec::with_capacity(4 + state.data.len());
            frame::encode_state(state.schema, &state.data, &mut payload);
            payload
        }),
        Request::Restore { schema, data } => {
            // A state from outside the segment: a trap can no longer be
            // recovered from a checkpoint until the next one.
            skill.segment.forget_baseline();
            skill
                .instance
                .restore(&SkillState {
                    schema,
                    data: data.to_vec(),
                })
                .map(|()| Vec::new())
        }
        Request::Health => skill.instance.health().map(|()| Vec::new()),
        Request::Shutdown => {
            frame::encode_response(id, &Response::Ok(&[]), out)?;
            return Ok(Flow::Stop);
        }
        Request::AttachSegment => {
            match skill.segment.attach() {
                Ok(()) => frame::encode_response(id, &Response::Ok(&[]), out)?,
                Err(message) => bad_request(id, &message, out)?,
            }
            return Ok(Flow::Continue);
        }
        Request::SnapshotToSegment => match skill.instance.snapshot() {
            Ok(state) => {
                match skill.segment.publish(&state) {
                    Ok(write) => frame::encode_response(id, &Response::Ok(&write.encode()), out)?,
                    Err(message) => bad_request(id, &message, out)?,
                }
                return Ok(Flow::Continue);
            }
            Err(error) => Err(error),
        },
        Request::JournalSince { generation, from } => {
            let mut payload = Vec::new();
            match skill.segment.journal_since(generation, from, &mut payload) {
                Ok(()) => frame::encode_response(id, &Response::Ok(&payload), out)?,
                Err(message) => bad_request(id, &message, out)?,
            }
            return Ok(Flow::Continue);
        }
        Request::ProbeSnapshot => skill
            .instance
            .snapshot()
            .map(|state| (state.data.len() as u64).to_le_bytes().to_vec()),
        Request::RestoreFromSegment {
            generation,
            wait_ms,
        } => {
            let wait = Duration::from_millis(u64::from(wait_ms));
            match skill.segment.restore(&mut skill.instance, generation, wait) {
                Ok(result) => result.map(|()| Vec::new()),
                Err(message) => {
                    bad_request(id, &message, out)?;
                    return Ok(Flow::Continue);
                }
            }
        }
    };
    match result {
        Ok(payload) => frame::encode_response(id, &Response::Ok(&payload), out)?,
        Err(error) => {
            let (code, skill_code) = classify(&error);
            let mut message = error.to_string();
            // Replaced before answering, so the node never sees the failure
            // of a call while the fresh instance still lacks its state.
            if error.poisons_instance() || skill.instance.is_poisoned() {
                tracing::warn!(%error, "skill instance poisoned; instantiating a new one");
                let recovered = skill.reinstantiate()?;
                message.push_str(&format!(" (instance replaced; {recovered})"));
            }
            let failure = WorkerFailure {
                code,
                skill_code,
                message: &message,
            };
            frame::encode_response(id, &Response::Err(failure), out)?;
        }
    }
    Ok(Flow::Continue)
}

fn bad_request(id: u64, message: &str, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let failure = WorkerFailure {
        code: FailureCode::BadRequest,
        skill_code: "",
        message,
    };
    frame::encode_response(id, &Response::Err(failure), out)?;
    Ok(())
}

/// Stable failure code (and the skill's own code) of a call error.
fn classify(error: &CallError) -> (FailureCode, &str) {
    match error {
        CallError::Skill { code, .. } => (FailureCode::Skill, code),
        CallError::DeadlineExceeded { .. } => (FailureCode::DeadlineExceeded, ""),
        CallError::MemoryLimit { .. } | CallError::TableLimit { .. } => {
            (FailureCode::MemoryLimit, "")
        }
        CallError::Trap(_) | CallError::Poisoned => (FailureCode::Trap, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn worker_args_round_trip_through_the_command_line() {
        let args = WorkerArgs {
            socket: "/run/w.sock".into(),
            wasm: "/blobs/ab".into(),
            sha256: "ab".repeat(32),
            cache_dir: "/cache".into(),
            max_memory: 1 << 20,
            deadline_ms: 250,
            name: "counter@1.0.0".into(),
        };
        let mut argv: Vec<OsString> = vec!["worker".into()];
        argv.extend(args.to_args());
        assert_eq!(Cli::try_parse_from(argv).unwrap().worker, args);
    }
}
