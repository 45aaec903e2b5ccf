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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

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

/// Where a connection records the calls its worker ran `Ok`, in the order
/// the worker ran them: the order of its answers, since a worker runs
/// frames one at a time in arrival order. The reader task records each one
/// before handing its answer to the caller, so a call is logged before it
/// is acknowledged, and the log's order never depends on how the callers'
/// tasks were scheduled. The route's journal is one.
pub trait CallLog: Send + Sync {
    /// `op` ran with `input` and answered `Ok`.
    fn ran_ok(&self, op: String, input: Bytes);
    /// A logged call's caller stopped waiting before its answer: the call
    /// is still logged when the answer comes, so whoever waits for the
    /// log to be complete (a drain before a snapshot or a flip) must wait
    /// for it too, until [`CallLog::orphan_settled`].
    fn orphaned(&self);
    /// An orphaned call's answer came (and was logged if `Ok`), or the
    /// connection closed without it.
    fn orphan_settled(&self);
}

/// A call logged once it runs `Ok`.
struct LoggedCall {
    log: Arc<dyn CallLog>,
    op: String,
    input: Bytes,
}

/// A call sent and not answered yet.
struct Waiter {
    /// Gone once the caller stopped waiting (dropped or timed out): a
    /// logged call then still waits for its answer, because the worker
    /// runs it all the same and the log must say what the worker's state
    /// holds. Such orphans are bounded by the requests the worker has not
    /// answered yet (the bounded queue plus the socket's buffer).
    reply: Option<oneshot::Sender<Reply>>,
    logged: Option<LoggedCall>,
    /// A call of [`WorkerConnection::call_in_order`] holds its in-flight
    /// slot here, given back when its answer arrives (the batch sends its
    /// later calls before it awaits any answer).
    slot: Option<OwnedSemaphorePermit>,
}

/// One call of an ordered batch ([`WorkerConnection::call_in_order`]).
#[derive(Debug)]
pub enum OrderedCall<'a> {
    /// An invoke (not logged: batches replay calls already journaled).
    Invoke {
        /// The operation.
        op: &'a str,
        /// Its input.
        input: Bytes,
    },
    /// A control request.
    Request(Request<'a>),
}

#[derive(Default)]
struct PendingCalls {
    waiting: HashMap<u64, Waiter>,
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
    /// Turns true once the reader task has handled everything the worker
    /// sent and failed the calls left.
    reader_done: watch::Receiver<bool>,
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
        let (done, reader_done) = watch::channel(false);
        tokio::spawn(read_loop(read, pending.clone(), done));
        Self {
            // 0 is the worker's hello.
            next_id: AtomicU64::new(frame::HELLO_ID + 1),
            pending,
            outgoing,
            slots: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            limits,
            shut: AtomicBool::new(false),
            reader_done,
        }
    }

    /// Calls taking an in-flight slot right now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_in_flight.max(1) - self.slots.available_permits()
    }

    /// Invokes `op` on the skill.
    pub async fn invoke(&self, op: String, input: Bytes) -> Reply {
        self.invoke_then(op, input, || {}, None).await
    }

    /// Invokes `op` on the skill; `queued` runs once the request is in the
    /// connection's queue (any request queued later reaches the worker
    /// after it), not at all if it never got there. With a `log`, the
    /// call is recorded there if the worker runs it `Ok` (see [`CallLog`]),
    /// even if this future is dropped or times out before the answer.
    pub async fn invoke_then(
        &self,
        op: String,
        input: Bytes,
        queued: impl FnOnce(),
        log: Option<Arc<dyn CallLog>>,
    ) -> Reply {
        if op.len() > frame::MAX_OP_LEN {
            return Err(CallError::Frame(FrameError::OpTooLong { length: op.len() }));
        }
        let length = HEADER + 2 + op.len() + input.len();
        if length > frame::MAX_FRAME {
            return Err(CallError::Frame(FrameError::TooLarge { length }));
        }
        let logged = log.map(|log| LoggedCall {
            log,
            op: op.clone(),
            input: input.clone(),
        });
        self.call(|id| Ok(Outgoing::Invoke { id, op, input }), queued, logged)
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
            None,
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
            None,
        )
        .await
    }

    /// Sends `calls` in this order (the worker runs them in it), at most
    /// the in-flight bound of them unanswered at once, and returns their
    /// answers in the same order. Each call is queued only after the one
    /// before it, from this one future: calls made concurrently from many
    /// futures reach the socket in whatever order those are polled and
    /// get their slots. If a call cannot be sent, none after it is, and
    /// they all answer with its error.
    pub async fn call_in_order(&self, calls: &[OrderedCall<'_>]) -> Vec<Reply> {
        let mut waiting = Vec::with_capacity(calls.len());
        let mut guards = Vec::with_capacity(calls.len());
        let mut unsent = None;
        for call in calls {
            match self.send_ordered(call).await {
                Ok((guard, answer)) => {
                    guards.push(guard);
                    waiting.push(answer);
                }
                Err(error) => {
                    unsent = Some(error);
                    break;
                }
            }
        }
        let mut replies = Vec::with_capacity(calls.len());
        let dropped = || CallError::Closed {
            reason: "connection dropped the call".into(),
        };
        let timed_out = CallError::TimedOut {
            timeout: self.limits.call_timeout,
        };
        // Each answer gets the call timeout from the one before; once one
        // does not come, the later ones (run after it) are not waited for.
        let mut stalled = false;
        for mut answer in waiting {
            replies.push(if stalled {
                match answer.try_recv() {
                    Ok(reply) => reply,
                    Err(oneshot::error::TryRecvError::Empty) => Err(timed_out.clone()),
                    Err(oneshot::error::TryRecvError::Closed) => Err(dropped()),
                }
            } else {
                match tokio::time::timeout(self.limits.call_timeout, answer).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => Err(dropped()),
                    Err(_) => {
                        stalled = true;
                        Err(timed_out.clone())
                    }
                }
            });
        }
        drop(guards);
        if let Some(error) = unsent {
            replies.resize(calls.len(), Err(error));
        }
        replies
    }

    /// Queues one call of [`WorkerConnection::call_in_order`]; its slot
    /// travels with its waiter, which the returned guard removes if the
    /// batch is dropped before the answer (or before the send).
    async fn send_ordered(
        &self,
        call: &OrderedCall<'_>,
    ) -> Result<(PendingGuard<'_>, oneshot::Receiver<Reply>), CallError> {
        if self.shut.load(Ordering::Acquire) {
            return Err(CallError::Closed {
                reason: "connection is shutting down".into(),
            });
        }
        let slot = self.slot().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::new();
        let request = match call {
            OrderedCall::Invoke { op, input } => Request::Invoke { op, input },
            OrderedCall::Request(request) => request.clone(),
        };
        frame::encode_request(id, &request, &mut bytes).map_err(CallError::Frame)?;
        let (mut guard, rx) = self.register(id, None, Some(slot))?;
        self.enqueue(&mut guard, Outgoing::Encoded(bytes)).await?;
        Ok((guard, rx))
    }

    /// Puts a waiter for call `id` in the map (unless the connection is
    /// closed); the guard removes it if the caller stops waiting.
    fn register(
        &self,
        id: u64,
        logged: Option<LoggedCall>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<(PendingGuard<'_>, oneshot::Receiver<Reply>), CallError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = &pending.closed {
            return Err(CallError::Closed {
                reason: reason.clone(),
            });
        }
        pending.waiting.insert(
            id,
            Waiter {
                reply: Some(tx),
                logged,
                slot,
            },
        );
        let guard = PendingGuard {
            pending: &self.pending,
            id,
            sent: false,
        };
        Ok((guard, rx))
    }

    /// Queues `outgoing` for the writer and marks its guard sent.
    async fn enqueue(
        &self,
        guard: &mut PendingGuard<'_>,
        outgoing: Outgoing,
    ) -> Result<(), CallError> {
        if self.outgoing.send(outgoing).await.is_err() {
            return Err(CallError::Closed {
                reason: "writer stopped".into(),
            });
        }
        guard.sent = true;
        Ok(())
    }

    /// Waits until the reader has handled every answer the worker sent
    /// before its socket closed (journaled them, woken their callers) and
    /// failed the calls left: once a worker died, its journal is complete
    /// only after this.
    pub async fn reader_finished(&self) {
        let mut done = self.reader_done.clone();
        // An error means the reader is gone, which is finished too.
        let _ = done.wait_for(|finished| *finished).await;
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
        logged: Option<LoggedCall>,
    ) -> Reply {
        if self.shut.load(Ordering::Acquire) {
            return Err(CallError::Closed {
                reason: "connection is shutting down".into(),
            });
        }
        let _permit = self.slot().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outgoing = make(id)?;
        // The guard removes the entry if this future is dropped or times
        // out first.
        let (mut guard, rx) = self.register(id, logged, None)?;
        self.enqueue(&mut guard, outgoing).await?;
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
    /// Whether the request is in the writer's queue (so it reaches the
    /// worker, or the connection closes). Only then does a caller that
    /// gives up leave an orphan: before, the request is never sent.
    sent: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let std::collections::hash_map::Entry::Occupied(mut waiter) =
            pending.waiting.entry(self.id)
        else {
            return; // answered
        };
        if let (Some(call), true) = (&waiter.get().logged, self.sent) {
            call.log.orphaned();
            waiter.get_mut().reply = None;
        } else {
            waiter.remove();
        }
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

async fn read_loop(mut read: OwnedReadHalf, pending: Pending, done: watch::Sender<bool>) {
    let mut frames = FrameReader::new();
    // Answers of one read, completed under one lock.
    let mut answered: Vec<(u64, Reply)> = Vec::new();
    let mut callers: Vec<(oneshot::Sender<Reply>, Reply)> = Vec::new();
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
                // Logged under the lock, in answer order (the worker's):
                // a caller that gives up after its waiter left the map
                // finds no entry, counts no orphan, and its call is
                // already in the log when its route's count drops.
                let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (id, reply) in answered.drain(..) {
                    let Some(Waiter {
                        reply: caller,
                        logged,
                        slot,
                    }) = pending.waiting.remove(&id)
                    else {
                        continue;
                    };
                    // A batch call's slot is free before its caller hears.
                    drop(slot);
                    if let Some(call) = logged {
                        if reply.is_ok() {
                            call.log.ran_ok(call.op, call.input);
                        }
                        if caller.is_none() {
                            call.log.orphan_settled();
                        }
                    }
                    if let Some(caller) = caller {
                        callers.push((caller, reply));
                    }
                }
            }
            for (caller, reply) in callers.drain(..) {
                // The caller may have given up since; nothing to do then.
                let _ = caller.send(reply);
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
    for waiter in waiting.into_values() {
        match (waiter.reply, waiter.logged) {
            (Some(caller), _) => {
                let _ = caller.send(Err(CallError::Closed {
                    reason: reason.clone(),
                }));
            }
            (None, Some(call)) => call.log.orphan_settled(),
            (None, None) => {}
        }
    }
    done.send_replace(true);
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

    /// The calls a connection logged, in order, and its orphans not
    /// settled yet.
    #[derive(Default)]
    struct TestLog(Mutex<Vec<(String, Bytes)>>, AtomicU64);

    impl CallLog for TestLog {
        fn ran_ok(&self, op: String, input: Bytes) {
            self.0.lock().unwrap().push((op, input));
        }

        fn orphaned(&self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }

        fn orphan_settled(&self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A worker running calls one at a time in arrival order, as real ones
    /// do: it notes each invoke's input as it runs it, answers `fail` with
    /// an error and everything else `Ok`; on `slow` it first says so on
    /// `arrived` and waits for `release`.
    async fn sequential_worker(
        mut stream: UnixStream,
        ran: Arc<Mutex<Vec<Bytes>>>,
        arrived: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
    ) {
        while let Ok(body) = read_frame(&mut stream).await {
            let frame = frame::decode_request(&body).unwrap();
            let mut out = Vec::new();
            let Request::Invoke { op, input } = frame.body else {
                panic!("only invokes are sent");
            };
            if op == "slow" {
                arrived.notify_one();
                release.notified().await;
            }
            if op == "fail" {
                let failure = frame::WorkerFailure {
                    code: FailureCode::Skill,
                    skill_code: "nope",
                    message: "refused",
                };
                frame::encode_response(frame.id, &Response::Err(failure), &mut out).unwrap();
            } else {
                ran.lock().unwrap().push(Bytes::copy_from_slice(input));
                frame::encode_response(frame.id, &Response::Ok(b""), &mut out).unwrap();
            }
            stream.write_all(&out).await.unwrap();
        }
    }

    /// What a test sees of a [`sequential_worker`].
    struct Sequential {
        ran: Arc<Mutex<Vec<Bytes>>>,
        arrived: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
    }

    /// A [`sequential_worker`] on one end of a socket pair; the node's end.
    fn sequential() -> (UnixStream, Sequential) {
        let (node, worker) = UnixStream::pair().unwrap();
        let seen = Sequential {
            ran: Arc::default(),
            arrived: Arc::default(),
            release: Arc::default(),
        };
        tokio::spawn(sequential_worker(
            worker,
            seen.ran.clone(),
            seen.arrived.clone(),
            seen.release.clone(),
        ));
        (node, seen)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_are_logged_in_the_order_the_worker_ran_them() {
        let (node, Sequential { ran, .. }) = sequential();
        let connection = Arc::new(WorkerConnection::start(node, ConnectionLimits::default()));
        let log = Arc::new(TestLog::default());
        let calls: Vec<_> = (0..500u32)
            .map(|i| {
                let (connection, log) = (connection.clone(), log.clone());
                tokio::spawn(async move {
                    let op = if i % 7 == 0 { "fail" } else { "set" };
                    let input = Bytes::from(i.to_be_bytes().to_vec());
                    connection
                        .invoke_then(op.into(), input, || {}, Some(log as Arc<dyn CallLog>))
                        .await
                })
            })
            .collect();
        for call in calls {
            let _ = call.await.unwrap();
        }
        let logged: Vec<Bytes> = log
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, i)| i.clone())
            .collect();
        let ran = ran.lock().unwrap().clone();
        assert_eq!(
            ran.len(),
            500 - 500usize.div_ceil(7),
            "failed calls are not run Ok"
        );
        assert_eq!(logged, ran, "the log must follow the worker's order");
    }

    #[tokio::test]
    async fn a_call_whose_caller_gave_up_is_still_logged_in_its_place() {
        let (
            node,
            Sequential {
                ran,
                arrived,
                release,
            },
        ) = sequential();
        let connection = Arc::new(WorkerConnection::start(node, ConnectionLimits::default()));
        let log = Arc::new(TestLog::default());
        let logged = {
            let log = log.clone();
            move |op: &'static str| {
                let (connection, log) = (connection.clone(), log.clone());
                async move {
                    connection
                        .invoke_then(
                            op.into(),
                            Bytes::from(op),
                            || {},
                            Some(log as Arc<dyn CallLog>),
                        )
                        .await
                }
            }
        };
        logged("before").await.unwrap();
        let abandoned = tokio::spawn(logged("slow"));
        arrived.notified().await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        assert_eq!(log.1.load(Ordering::SeqCst), 1, "one orphan, not settled");
        release.notify_one();
        logged("after").await.unwrap();
        assert!(logged("fail").await.is_err());
        let ran = ran.lock().unwrap().clone();
        assert_eq!(ran, [&b"before"[..], b"slow", b"after"]);
        let logged: Vec<Bytes> = log
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, i)| i.clone())
            .collect();
        assert_eq!(
            logged, ran,
            "the abandoned call ran, so it is logged in its place"
        );
        assert_eq!(log.1.load(Ordering::SeqCst), 0, "the orphan settled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ordered_batch_beyond_the_in_flight_bound_runs_in_its_order() {
        // `slow` is never released here: it stands for a stuck worker.
        let (node, Sequential { ran, .. }) = sequential();
        let limits = ConnectionLimits {
            max_in_flight: 4,
            call_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        };
        let connection = WorkerConnection::start(node, limits);
        let inputs: Vec<Bytes> = (0..300u32)
            .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
            .collect();
        let calls: Vec<OrderedCall<'_>> = inputs
            .iter()
            .map(|input| OrderedCall::Invoke {
                op: "set",
                input: input.clone(),
            })
            .collect();
        let replies = connection.call_in_order(&calls).await;
        assert!(replies.iter().all(Result::is_ok));
        assert_eq!(*ran.lock().unwrap(), inputs);
        assert_eq!(connection.in_flight(), 0, "every slot came back");
        // A worker that stops answering: every call of the batch says so
        // (only the first is waited for; the others run after it).
        let stuck = (0..3)
            .map(|_| OrderedCall::Invoke {
                op: "slow",
                input: Bytes::new(),
            })
            .collect::<Vec<_>>();
        let replies = connection.call_in_order(&stuck).await;
        assert_eq!(replies.len(), 3);
        assert!(
            replies
                .iter()
                .all(|r| matches!(r, Err(CallError::TimedOut { .. }))),
            "{replies:?}"
        );
        // A batch that cannot be sent answers every call with why.
        connection.close();
        let replies = connection.call_in_order(&calls[..3]).await;
        assert_eq!(replies.len(), 3);
        assert!(
            replies
                .iter()
                .all(|r| matches!(r, Err(CallError::Closed { .. })))
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_before_its_request_is_queued_leaves_no_orphan() {
        let (
            node,
            Sequential {
                arrived, release, ..
            },
        ) = sequential();
        // Two slots, so the writer's queue holds two requests.
        let limits = ConnectionLimits {
            max_in_flight: 2,
            queue_wait: Duration::from_secs(60),
            call_timeout: Duration::from_secs(60),
        };
        let connection = Arc::new(WorkerConnection::start(node, limits));
        let log = Arc::new(TestLog::default());
        let call = |op: &'static str, size: usize| {
            let (connection, log) = (connection.clone(), log.clone());
            tokio::spawn(async move {
                connection
                    .invoke_then(
                        op.into(),
                        Bytes::from(vec![op.as_bytes()[0]; size]),
                        || {},
                        Some(log as Arc<dyn CallLog>),
                    )
                    .await
            })
        };
        let waiters = || connection.pending.lock().unwrap().waiting.len();
        let orphans = || log.1.load(Ordering::SeqCst);
        // `a` holds the worker, which reads nothing more; `b` (1 MiB)
        // fills the socket and blocks the writer. Both callers give up:
        // their requests were queued, so they are orphans.
        let a = call("slow", 1);
        arrived.notified().await;
        let b = call("b", 1 << 20);
        while waiters() < 2 {
            tokio::task::yield_now().await;
        }
        let c = call("c", 1);
        for task in [a, b] {
            task.abort();
            let _ = task.await;
        }
        // `c` and `d` fill the writer's queue (two places) behind `b`.
        let d = call("d", 1);
        while waiters() < 4 {
            tokio::task::yield_now().await;
        }
        for task in [c, d] {
            task.abort();
            let _ = task.await;
        }
        assert_eq!(orphans(), 4);
        // `e` gets a slot but waits for a place in the full queue: its
        // caller gives up before the request is queued.
        let e = call("e", 1);
        // Its waiter is in the map once its task parked on the send (one
        // poll inserts it and tries the send: this runtime has one thread).
        while waiters() < 5 {
            tokio::task::yield_now().await;
        }
        e.abort();
        let _ = e.await;
        assert_eq!(orphans(), 4, "a request never queued is no orphan");
        assert_eq!(waiters(), 4);
        // The worker goes on: the four queued calls run and are logged.
        release.notify_one();
        while orphans() > 0 {
            tokio::task::yield_now().await;
        }
        let logged: Vec<String> = log
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(op, _)| op.clone())
            .collect();
        assert_eq!(logged, ["slow", "b", "c", "d"]);
        assert_eq!(waiters(), 0);
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
