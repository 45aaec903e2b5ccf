//! The mesh driver: owns a `PeerCore<PeerId>`, feeds it network events, local
//! writes and a `Tick` whenever the core's `poll_timeout` falls due (at least
//! every `DriverConfig::tick`), and carries out its actions over a
//! `MeshHandle` and a `DocStore`.
//!
//! All decisions are the core's; this task only does I/O. It runs the core
//! and its actions strictly in order on one task, so persisted bytes land in
//! the order the core produced them.

use std::collections::HashSet;
use std::time::Duration;

use clawmesh_crdt::documents::LoadError;
use clawmesh_crdt::status_board::StatusRecordError;
use clawmesh_crdt::{DocumentId, PeerAction, PeerConfig, PeerCore, PeerInput, TrustRoot};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::doc_store::{DocStore, DocStoreError};
use super::event::NetEvent;
use super::handle::{MeshHandle, SendError};

/// Default `DriverConfig::tick`.
pub const DEFAULT_TICK: Duration = Duration::from_millis(500);
/// Local inputs and inspections queued to the driver.
pub const DRIVER_QUEUE: usize = 256;
/// Notices queued for the driver's consumer; beyond this they are dropped.
pub const NOTICE_QUEUE: usize = 1024;

/// How to run the driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The core's tuning.
    pub peer: PeerConfig,
    /// The mesh's trust root.
    pub trust: TrustRoot,
    /// Longest wait between two `Tick`s of the core; it gets them sooner
    /// when its `poll_timeout` asks (delayed pushes, pulls, anti-entropy).
    /// Lost sync sessions are restarted on these ticks.
    pub tick: Duration,
    /// Seed of the core's anti-entropy choices and actor id: fresh per start.
    pub seed: u64,
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The document files could not be read.
    #[error("loading mesh documents: {0}")]
    Store(#[from] DocStoreError),
    /// The status board's file does not load; it is left as it is.
    #[error("status board ({path}) does not load: {source}")]
    LoadStatusBoard {
        /// Its file.
        path: std::path::PathBuf,
        /// The core's complaint.
        source: StatusRecordError,
    },
    /// A document file does not load; it is left as it is.
    #[error("mesh document {doc} ({path}) does not load: {source}")]
    Load {
        /// The document.
        doc: String,
        /// Its file.
        path: std::path::PathBuf,
        /// The core's complaint.
        source: LoadError,
    },
    /// `tick` is zero.
    #[error("driver config field `tick` must be greater than zero")]
    ZeroTick,
}

/// The driver task has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the mesh driver has stopped")]
pub struct DriverStopped;

/// What the driver reports to the rest of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverNotice {
    /// A document's bytes were persisted (its content changed).
    Persisted(DocumentId),
    /// Persisting a document failed; the in-memory document is ahead of the file.
    PersistFailed {
        /// The document.
        doc: DocumentId,
        /// What went wrong.
        error: String,
    },
    /// A core action that is information for the node: targets changed, an
    /// entry rejected, a peer's frame refused, a local write refused.
    Core(PeerAction<PeerId>),
}

type Inspect = Box<dyn FnOnce(&mut PeerCore<PeerId>) + Send>;

enum DriverInput {
    Local(Box<PeerInput<PeerId>>),
    Inspect(Inspect),
}

/// A cloneable handle to a running driver.
#[derive(Clone)]
pub struct DriverHandle {
    inputs: mpsc::Sender<DriverInput>,
}

impl DriverHandle {
    /// Feeds a local write (publish, intent, status) to the core.
    pub async fn submit(&self, input: PeerInput<PeerId>) -> Result<(), DriverStopped> {
        self.inputs
            .send(DriverInput::Local(Box::new(input)))
            .await
            .map_err(|_| DriverStopped)
    }

    /// Runs `f` on the core between events (status queries).
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PeerCore<PeerId>) -> R + Send + 'static,
    ) -> Result<R, DriverStopped> {
        let (reply, answer) = oneshot::channel();
        let job: Inspect = Box::new(move |core| {
            let _ = reply.send(f(core));
        });
        self.inputs
            .send(DriverInput::Inspect(job))
            .await
            .map_err(|_| DriverStopped)?;
        answer.await.map_err(|_| DriverStopped)
    }
}

/// Loads the documents from `store` into a new core and starts the driver
/// task. It stops when the mesh's event stream ends or every handle is dropped.
pub fn spawn_driver(
    cfg: DriverConfig,
    mesh: MeshHandle,
    events: mpsc::Receiver<NetEvent>,
    store: DocStore,
) -> Result<(DriverHandle, mpsc::Receiver<DriverNotice>), DriverError> {
    if cfg.tick.is_zero() {
        return Err(DriverError::ZeroTick);
    }
    let local = mesh.local_peer_id();
    let mut core = PeerCore::new(cfg.peer, local.to_string(), cfg.trust, cfg.seed);
    for (doc, bytes) in store.load_all()? {
        core.load_document(doc, &bytes)
            .map_err(|source| DriverError::Load {
                doc: doc.name(),
                path: store.path(doc),
                source,
            })?;
    }
    if let Some(bytes) = store.load_status_board()? {
        let skipped =
            core.load_status_board(&bytes)
                .map_err(|source| DriverError::LoadStatusBoard {
                    path: store.status_board_path(),
                    source,
                })?;
        if skipped > 0 {
            warn!(
                skipped,
                "saved status records skipped (invalid or past the board's bounds)"
            );
        }
    }
    let (input_tx, inputs) = mpsc::channel(DRIVER_QUEUE);
    let (notice_tx, notices) = mpsc::channel(NOTICE_QUEUE);
    let driver = Driver {
        core,
        mesh,
        store,
        notices: notice_tx,
        connected: HashSet::new(),
        restart: HashSet::new(),
        started: Instant::now(),
    };
    let span = info_span!("mesh_driver", local = %local);
    tokio::spawn(driver.run(events, inputs, cfg.tick).instrument(span));
    Ok((DriverHandle { inputs: input_tx }, notices))
}

struct Driver {
    core: PeerCore<PeerId>,
    mesh: MeshHandle,
    store: DocStore,
    notices: mpsc::Sender<DriverNotice>,
    /// Peers the mesh reports connected.
    connected: HashSet<PeerId>,
    /// Connected peers whose frames were lost: their sync restarts on the next tick.
    restart: HashSet<PeerId>,
    started: Instant,
}

impl Driver {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut inputs: mpsc::Receiver<DriverInput>,
        tick: Duration,
    ) {
        // Peers that connected before the driver started sent their
        // PeerConnected to whoever read the events then.
        match self.mesh.connected_peers().await {
            Ok(peers) => {
                for peer in peers {
                    if self.connected.insert(peer) {
                        self.feed(PeerInput::Connected(peer)).await;
                    }
                }
            }
            Err(error) => warn!(%error, "mesh already stopped"),
        }
        let mut next_tick = Instant::now() + tick;
        loop {
            let wake = self.core_wake(next_tick);
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_net_event(event).await,
                    None => break,
                },
                input = inputs.recv() => match input {
                    Some(DriverInput::Local(input)) => self.feed(*input).await,
                    Some(DriverInput::Inspect(job)) => job(&mut self.core),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_tick {
                        next_tick = Instant::now() + tick;
                    }
                    self.on_tick().await;
                }
            }
        }
        debug!("mesh driver stopped");
    }

    /// When the core wants its next tick, but no later than `fallback`.
    fn core_wake(&self, fallback: Instant) -> Instant {
        self.core
            .poll_timeout()
            .map(|at_ms| self.started + Duration::from_millis(at_ms))
            .map_or(fallback, |at| at.min(fallback))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn on_net_event(&mut self, event: NetEvent) {
        let input = match event {
            NetEvent::Listening(_) => return,
            NetEvent::PeerConnected(peer) => {
                if !self.connected.insert(peer) {
                    return;
                }
                PeerInput::Connected(peer)
            }
            NetEvent::PeerDisconnected(peer) => {
                self.connected.remove(&peer);
                self.restart.remove(&peer);
                PeerInput::Disconnected(peer)
            }
            NetEvent::SyncFrame { from, bytes } => PeerInput::Message { from, bytes },
            NetEvent::Heads { from, bytes } => PeerInput::HeadsAnnounced { from, bytes },
            NetEvent::SyncUndelivered { to, frames } => {
                debug!(peer = %to, frames, "sync frames lost; restarting that sync next tick");
                self.restart.insert(to);
                return;
            }
        };
        self.feed(input).await;
    }

    /// Restarts the sync sessions that lost frames (the other end never saw
    /// them, so both sides' sync states are wrong), then ticks the core.
    async fn on_tick(&mut self) {
        let restart: Vec<PeerId> = self.restart.drain().collect();
        for peer in restart {
            if self.connected.contains(&peer) {
                self.feed(PeerInput::Disconnected(peer)).await;
                self.feed(PeerInput::Connected(peer)).await;
            }
        }
        self.feed(PeerInput::Tick).await;
    }

    async fn feed(&mut self, input: PeerInput<PeerId>) {
        let now = self.now_ms();
        for action in self.core.handle(now, input) {
            self.execute(action).await;
        }
    }

    async fn execute(&mut self, action: PeerAction<PeerId>) {
        match action {
            PeerAction::Send { to, bytes } => match self.mesh.send_sync(to, bytes).await {
                Ok(()) => {}
                Err(SendError::QueueFull { .. }) => {
                    // A frame is lost: the sync with this peer must restart.
                    self.restart.insert(to);
                }
                Err(error) => warn!(peer = %to, %error, "sync frame not sent"),
            },
            PeerAction::AnnounceHeads { bytes } => {
                if let Err(error) = self.mesh.publish_heads(bytes).await {
                    warn!(%error, "heads announcement not published");
                }
            }
            PeerAction::Persist { doc, bytes } => {
                let result = self.store.append(doc, &bytes);
                self.persisted(doc, result);
            }
            PeerAction::PersistCompacted { doc, bytes } => {
                let result = self.store.replace(doc, &bytes);
                self.persisted(doc, result);
            }
            PeerAction::PersistStatusBoard { bytes } => {
                // Lost statuses come back from peers; only the log says so.
                if let Err(error) = self.store.replace_status_board(&bytes) {
                    warn!(%error, "persisting the status board failed");
                }
            }
            other => {
                debug!(action = ?other, "core notice");
                self.notify(DriverNotice::Core(other));
            }
        }
    }

    fn persisted(&self, doc: DocumentId, result: Result<(), DocStoreError>) {
        match result {
            Ok(()) => self.notify(DriverNotice::Persisted(doc)),
            Err(error) => {
                warn!(doc = %doc.name(), %error, "persisting mesh document failed");
                self.notify(DriverNotice::PersistFailed {
                    doc,
                    error: error.to_string(),
                });
            }
        }
    }

    fn notify(&self, notice: DriverNotice) {
        if self.notices.try_send(notice).is_err() {
            debug!("driver notice dropped (queue full or nobody listening)");
        }
    }
}
