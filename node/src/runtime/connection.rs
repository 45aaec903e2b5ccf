//! The node's end of one worker's Unix socket: pipelined calls matched by
//! request id, bounded in flight, written in batches by one task and read
//! by another, so no lock is ever held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

// axum re-exports the `bytes` crate's type; bodies flow to HTTP without a copy.
use axum::body::Bytes;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::frame::{self, FailureCode, FrameError, HEADER, LENGTH_PREFIX, Request, Response};
use super::frame_reader::{FrameReader, Next};

/// Default bound on calls in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// A write batch's scratch buffer is shrunk back to this after a big frame,
/// so one large body does not pin memory for the connection's life.
const RETAINED_WRITE_BUFFER: usize = 1024 * 1024;

/// A worker's failure, owned so it can leave the reader task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFailure {
    /// Stable classification.
    pub code: FailureCode,
    /// The skill's own code for [`FailureCode::Skill`].
    pub skill_code: String,
    /// Human-readable detail.
    pub message: String,
}

impl From<frame::WorkerFailure<'_>> for OwnedFailure {
    fn from(failure: frame::WorkerFailure<'_>) -> Self {
        Self {
            code: failure.code,
            skill_code: failure.skill_code.to_string(),
            message: failure.message.to_string(),
        }
    }
}

/// Why a call on a connection did not produce an answer from the skill.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CallError {
    /// The worker answered with a failure.
    #[error("{}", .0.message)]
    Worker(OwnedFailure),
    /// The connection is closed (the worker exited or broke the protocol).
    #[error("worker connection closed: {reason}")]
    Closed {
        /// What closed it.
        reason: String,
    },
    /// Every in-flight slot stayed taken for the whole queue wait.
    #[error("worker has {max_in_flight} calls in flight")]
    Overloaded {
        /// The bound that was reached.
        max_in_flight: usize,
    },
    /// No answer arrived within the call timeout.
    #[error("no answer from the worker within {timeout:?}")]
    TimedOut {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The request cannot be framed (too large, op name too long).
    #[error("request refused: {0}")]
    Frame(FrameError),
}

/// Bounds of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Calls in flight at once; more wait up to `queue_wait`.
    pub max_in_flight: usize,
    /// How long a call may wait for an in-flight slot.
    pub queue_wait: Duration,
    /// How long a call may wait for its answer once sent.
    pub call_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            queue_wait: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
        }
    }
}

type Reply = Result<Bytes, CallError>;
type Pending = Arc<Mutex<PendingCalls>>;

#[derive(Default)]
struct PendingCalls {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the reader stops; later calls fail at once.
    closed: Option<String>,
}

/// A request on its way to the writer task.
enum Outgoing {
    /// The hot path: framed by the writer straight into its batch buffer.
    Invoke { id: u64, op: String, input: Bytes },
    /// Anything else, framed by the caller.
    Encoded(Vec<u8>),
    /// A framed request with an fd riding on its first byte (SCM_RIGHTS).
    WithFd(Vec<u8>, std::os::fd::OwnedFd),
}

/// Pipelined client for one worker socket.
#[derive(Debug)]
pub struct WorkerConnection {
    next_id: AtomicU64,
    pending: Pending,
    outgoing: mpsc::Sender<Outgoing>,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    shut: AtomicBool,
}

impl std::fmt::Debug for PendingCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCalls")
            .field("waiting", &self.waiting.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl WorkerConnection {
    /// Starts the reader and writer tasks on an accepted socket whose
    /// handshake is done.
    pub fn start(stream: UnixStream, limits: ConnectionLimits) -> Self {
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (outgoing, queue) = mpsc::channel(limits.max_in_flight.max(1));
        tokio::spawn(write_loop(write, queue, pending.clone()));
        tokio::spawn(read_loop(read, pending.clone()));
        Self {
            // 0 is the worker's hello.
            next_id: AtomicU64::new(frame::HELLO_ID + 1),
            pending,
            outgoing,
            slots: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            limits,
            shut: AtomicBool::new(false),
        }
    }

    /// Calls taking an in-flight slot right now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_in_flight.max(1) - self.slots.available_permits()
    }

    /// Invokes `op` on the skill.
    pub async fn invoke(&self, op: String, input: Bytes) -> Reply {
        self.invoke_then(op, input, || {}).await
    }

    /// Invokes `op` on the skill; `queued` runs once the request is in the
    /// connection's queue (any request queued later reaches the worker
    /// after it), not at all if it never got there.
    pub async fn invoke_then(&self, op: String, input: Bytes, queued: impl FnOnce()) -> Reply {
        if op.len() > frame::MAX_OP_LEN {
            return Err(CallError::Frame(FrameError::OpTooLong { length: op.len() }));
        }
        let length = HEADER + 2 + op.len() + input.len();
        if length > frame::MAX_FRAME {
            return Err(CallError::Frame(FrameError::TooLarge { length }));
        }
        self.call(|id| Ok(Outgoing::Invoke { id, op, input }), queued)
            .await
    }

    /// Sends any other request and waits for its answer.
    pub async fn request(&self, request: &Request<'_>) -> Reply {
        self.call(
            |id| {
                let mut bytes = Vec::new();
                frame::encode_request(id, request, &mut bytes).map_err(CallError::Frame)?;
                Ok(Outgoing::Encoded(bytes))
            },
            || {},
        )
        .await
    }

    /// Sends a request with `fd` attached to its first byte (SCM_RIGHTS)
    /// and waits for its answer.
    pub async fn request_with_fd(&self, request: &Request<'_>, fd: std::os::fd::OwnedFd) -> Reply {
        self.call(
            |id| {
                let mut bytes = Vec::new();
                frame::encode_request(id, request, &mut bytes).map_err(CallError::Frame)?;
                Ok(Outgoing::WithFd(bytes, fd))
            },
            || {},
        )
        .await
    }

    /// Stops sending: later calls fail as closed. Calls already sent still
    /// get their answers.
    pub fn close(&self) {
        self.shut.store(true, Ordering::Release);
    }

    async fn call(
        &self,
        make: impl FnOnce(u64) -> Result<Outgoing, CallError>,
        queued: impl FnOnce(),
    ) -> Reply {
        if self.shut.load(Ordering::Acquire) {
            return Err(CallError::Closed {
                reason: "connection is shutting down".into(),
            });
        }
        let _permit = self.slot().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outgoing = make(id)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(reason) = &pending.closed {
                return Err(CallError::Closed {
                    reason: reason.clone(),
                });
            }
            pending.waiting.insert(id, tx);
        }
        // Removes the entry if this future is dropped or times out first.
        let guard = PendingGuard {
            pending: &self.pending,
            id,
        };
        if self.outgoing.send(outgoing).await.is_err() {
            return Err(CallError::Closed {
                reason: "writer stopped".into(),
            });
        }
        queued();
        let reply = match tokio::time::timeout(self.limits.call_timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(CallError::Closed {
                reason: "connection dropped the call".into(),
            }),
            Err(_) => Err(CallError::TimedOut {
                timeout: self.limits.call_timeout,
            }),
        };
        drop(guard);
        reply
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, CallError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let overloaded = CallError::Overloaded {
            max_in_flight: self.limits.max_in_flight,
        };
        match tokio::time::timeout(self.limits.queue_wait, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(overloaded),
        }
    }
}

struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
            .remove(&self.id);
    }
}

/// Reads one frame (after its length prefix) into a fresh buffer.
pub async fn read_frame(read: &mut (impl AsyncReadExt + Unpin)) -> Result<Vec<u8>, String> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    read.read_exact(&mut prefix)
        .await
        .map_err(|error| format!("reading frame length: {error}"))?;
    let length = frame::frame_length(prefix).map_err(|error| error.to_string())?;
    let mut body = vec![0u8; length];
    read.read_exact(&mut body)
        .await
        .map_err(|error| format!("reading {length}-byte frame: {error}"))?;
    Ok(body)
}

async fn read_loop(mut read: OwnedReadHalf, pending: Pending) {
    let mut frames = FrameReader::new();
    // Answers of one read, completed under one lock.
    let mut answered: Vec<(u64, Reply)> = Vec::new();
    let mut waiters: Vec<(oneshot::Sender<Reply>, Reply)> = Vec::new();
    let reason = 'read: loop {
        loop {
            let (id, reply) = match frames.next_frame() {
                Ok(Next::NeedMore) => break,
                Ok(Next::Frame(body)) => match answer_of(body, Bytes::copy_from_slice) {
                    Ok(answer) => answer,
                    Err(error) => break 'read format!("worker sent a bad frame: {error}"),
                },
                Ok(Next::Large {
                    mut started,
                    missing,
                }) => {
                    let have = started.len();
                    started.resize(have + missing, 0);
                    if let Err(error) = read.read_exact(&mut started[have..]).await {
                        break 'read format!("reading {}-byte frame: {error}", have + missing);
                    }
                    let body = Bytes::from(started);
                    match answer_of(&body, |payload| body.slice_ref(payload)) {
                        Ok(answer) => answer,
                        Err(error) => break 'read format!("worker sent a bad frame: {error}"),
                    }
                }
                Err(error) => break 'read error.to_string(),
            };
            answered.push((id, reply));
        }
        if !answered.is_empty() {
            {
                let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (id, reply) in answered.drain(..) {
                    if let Some(waiter) = pending.waiting.remove(&id) {
                        waiters.push((waiter, reply));
                    }
                }
            }
            for (waiter, reply) in waiters.drain(..) {
                // The caller may have given up; nothing to do then.
                let _ = waiter.send(reply);
            }
        }
        match read.read(frames.spare()).await {
            Ok(0) => break "worker closed the socket".to_string(),
            Ok(count) => frames.filled(count),
            Err(error) => break format!("reading from worker: {error}"),
        }
    };
    let waiting = {
        let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.closed = Some(reason.clone());
        std::mem::take(&mut pending.waiting)
    };
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(CallError::Closed {
            reason: reason.clone(),
        }));
    }
}

/// The request id and reply carried by a response frame; `payload` turns
/// the `Ok` payload (borrowed from `body`) into the body handed to HTTP.
fn answer_of(
    body: &[u8],
    payload: impl FnOnce(&[u8]) -> Bytes,
) -> Result<(u64, Reply), FrameError> {
    Ok(match frame::decode_response(body)? {
        frame::Frame {
            id,
            body: Response::Ok(bytes),
        } => (id, Ok(payload(bytes))),
        frame::Frame {
            id,
            body: Response::Err(failure),
        } => (id, Err(CallError::Worker(failure.into()))),
    })
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    pending: Pending,
) {
    let mut batch = Vec::new();
    // A request with an fd met while batching: sent right after the batch.
    let mut carried: Option<Outgoing> = None;
    loop {
        let first = match carried.take() {
            Some(next) => next,
            None => match queue.recv().await {
                Some(next) => next,
                None => break,
            },
        };
        batch.clear();
        let written = match first {
            Outgoing::WithFd(bytes, fd) => send_with_fd(&mut write, &bytes, fd).await,
            first => {
                append(&mut batch, first);
                // Lets the calls that are ready to run queue theirs too, so
                // under load one write carries many frames (and wakes the
                // worker once); idle, this returns at once.
                tokio::task::yield_now().await;
                // Everything already queued goes out in the same write.
                while batch.len() < RETAINED_WRITE_BUFFER {
                    match queue.try_recv() {
                        Ok(next @ Outgoing::WithFd(..)) => {
                            carried = Some(next);
                            break;
                        }
                        Ok(next) => append(&mut batch, next),
                        Err(_) => break,
                    }
                }
                write.write_all(&batch).await
            }
        };
        if let Err(error) = written {
            let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending
                .closed
                .get_or_insert_with(|| format!("writing to worker: {error}"));
            break;
        }
        if batch.capacity() > RETAINED_WRITE_BUFFER {
            batch = Vec::new();
        }
    }
}

/// Sends `bytes` with `fd` riding on the first of them, then the rest.
async fn send_with_fd(
    write: &mut OwnedWriteHalf,
    bytes: &[u8],
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let stream: &UnixStream = write.as_ref();
    let sent = stream
        .async_io(tokio::io::Interest::WRITABLE, || {
            clawmesh_shm::send_fd(stream, fd.as_fd(), bytes).map_err(Into::into)
        })
        .await?;
    write.write_all(&bytes[sent..]).await
}

fn append(batch: &mut Vec<u8>, outgoing: Outgoing) {
    match outgoing {
        Outgoing::Invoke { id, op, input } => {
            // Sizes were checked in `invoke`, so this cannot fail.
            let _ = frame::encode_request(
                id,
                &Request::Invoke {
                    op: &op,
                    input: &input,
                },
                batch,
            );
        }
        Outgoing::Encoded(bytes) => batch.extend_from_slice(&bytes),
        // Never batched: write_loop sends these on their own.
        Outgoing::WithFd(..) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake worker answering each invoke with its input reversed, in
    /// reverse order of arrival within each read, to prove id matching.
    async fn fake_worker(mut stream: UnixStream) {
        loop {
            let Ok(body) = read_frame(&mut stream).await else {
                return;
            };
            let frame = frame::decode_request(&body).unwrap();
            let mut out = Vec::new();
            match frame.body {
                Request::Invoke { op: "fail", .. } => {
                    let failure = frame::WorkerFailure {
                        code: FailureCode::Skill,
                        skill_code: "nope",
                        message: "refused",
                    };
                    frame::encode_response(frame.id, &Response::Err(failure), &mut out).unwrap();
                }
                Request::Invoke { op: "hang", .. } => continue,
                Request::Invoke { input, .. } => {
                    let reversed: Vec<u8> = input.iter().rev().copied().collect();
                    frame::encode_response(frame.id, &Response::Ok(&reversed), &mut out).unwrap();
                }
                _ => frame::encode_response(frame.id, &Response::Ok(b""), &mut out).unwrap(),
            }
            stream.write_all(&out).await.unwrap();
        }
    }

    #[tokio::test]
    async fn pipelined_calls_get_their_own_answers() {
        let (node, worker) = UnixStream::pair().unwrap();
        tokio::spawn(fake_worker(worker));
        let connection = Arc::new(WorkerConnection::start(node, ConnectionLimits::default()));
        let calls = (0..200u32).map(|i| {
            let connection = connection.clone();
            tokio::spawn(async move {
                (
                    i,
                    connection
                        .invoke("echo".into(), Bytes::from(i.to_be_bytes().to_vec()))
                        .await,
                )
            })
        });
        for call in calls {
            let (i, reply) = call.await.unwrap();
            let mut expected = i.to_be_bytes();
            expected.reverse();
            assert_eq!(reply.unwrap(), Bytes::copy_from_slice(&expected));
        }
        let failure = connection
            .invoke("fail".into(), Bytes::new())
            .await
            .unwrap_err();
        assert!(
            matches!(failure, CallError::Worker(OwnedFailure { code: FailureCode::Skill, ref skill_code, .. }) if skill_code == "nope")
        );
        assert_eq!(connection.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_closed_socket_fails_waiting_and_later_calls() {
        let (node, worker) = UnixStream::pair().unwrap();
        let connection = Arc::new(WorkerConnection::start(node, ConnectionLimits::default()));
        let waiting = {
            let connection = connection.clone();
            tokio::spawn(async move { connection.request(&Request::Health).await })
        };
        // The worker reads the request, then dies without answering.
        let mut worker = worker;
        read_frame(&mut worker).await.unwrap();
        drop(worker);
        assert!(matches!(
            waiting.await.unwrap(),
            Err(CallError::Closed { .. })
        ));
        assert!(matches!(
            connection.request(&Request::Health).await,
            Err(CallError::Closed { .. })
        ));
    }

    #[tokio::test]
    async fn calls_beyond_the_in_flight_bound_are_refused_after_the_queue_wait() {
        let (node, worker) = UnixStream::pair().unwrap();
        tokio::spawn(fake_worker(worker));
        let limits = ConnectionLimits {
            max_in_flight: 1,
            queue_wait: Duration::ZERO,
            call_timeout: Duration::from_secs(60),
        };
        let connection = Arc::new(WorkerConnection::start(node, limits));
        let hanging = {
            let connection = connection.clone();
            tokio::spawn(async move { connection.invoke("hang".into(), Bytes::new()).await })
        };
        // Wait until the hanging call holds the only slot.
        while connection.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            connection.invoke("echo".into(), Bytes::new()).await,
            Err(CallError::Overloaded { max_in_flight: 1 })
        );
        hanging.abort();
    }

    #[tokio::test]
    async fn oversized_input_is_refused_before_sending() {
        let (node, _worker) = UnixStream::pair().unwrap();
        let connection = WorkerConnection::start(node, ConnectionLimits::default());
        let input = Bytes::from(vec![0u8; frame::MAX_FRAME]);
        assert!(matches!(
            connection.invoke("x".into(), input).await,
            Err(CallError::Frame(FrameError::TooLarge { .. }))
        ));
    }
}
