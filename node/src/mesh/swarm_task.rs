//! The swarm task: the only owner of the libp2p `Swarm`. It turns swarm
//! events into `NetEvent`s, executes handle commands, runs discovery, and
//! hands sync frames to per-peer writer tasks without ever waiting on them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::behaviour::{MeshBehaviour, MeshBehaviourEvent, heads_topic};
use super::command::Command;
use super::config::{
    IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL, MAX_ADDRS_PER_PEER, MAX_KNOWN_PEERS,
    MAX_PENDING_LOOKUPS, MeshConfig,
};
use super::event::NetEvent;
use super::handle::{HeadsDelivery, LookupError, ProvideError, PublishError, SendError};
use super::metrics::MeshMetrics;
use super::providers::Stored;
use super::sync_out::SyncWriter;

/// A live writer task for one peer.
struct Outbound {
    frames: mpsc::Sender<Vec<u8>>,
    generation: u64,
}

/// A provider lookup in progress (`Command::GetProviders`).
struct Lookup {
    limit: usize,
    found: Vec<PeerId>,
    /// Found providers being dialled; the answer waits for their outcome.
    dialing: HashSet<PeerId>,
    /// Kad reported the query's last step (or we finished it).
    query_done: bool,
    deadline: tokio::time::Instant,
    started: Instant,
    reply: oneshot::Sender<Result<Vec<PeerId>, LookupError>>,
    span: tracing::Span,
}

/// Which background task ended.
enum TaskExit {
    Writer { peer: PeerId, generation: u64 },
    Acceptor,
}

pub(crate) struct SwarmTask {
    swarm: Swarm<MeshBehaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    metrics: MeshMetrics,
    control: libp2p_stream::Control,
    topic: gossipsub::IdentTopic,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    max_peers: usize,
    max_frame: usize,
    send_queue: usize,
    request_timeout: Duration,
    idle_timeout: Duration,
    bootstrap_interval: Duration,
    connected: HashSet<PeerId>,
    /// Listen addresses peers told us through identify, for redialling.
    known_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    outbound: HashMap<PeerId, Outbound>,
    next_generation: u64,
    tasks: JoinSet<TaskExit>,
    /// The latest heads announcement nobody was subscribed to receive.
    pending_heads: Option<Vec<u8>>,
    /// Provider lookups running, at most `MAX_PENDING_LOOKUPS`.
    lookups: HashMap<kad::QueryId, Lookup>,
    /// Our provider records whose last publication reached no peer (the
    /// routing table was empty, e.g. at start): published again on the next
    /// bootstrap tick with a peer connected, not an hour later. At most
    /// `MAX_PROVIDED_BLOBS` (each is one of our provided keys).
    unpublished: HashSet<kad::RecordKey>,
}

impl SwarmTask {
    pub(crate) fn new(
        swarm: Swarm<MeshBehaviour>,
        cfg: &MeshConfig,
        bootstrap: Vec<(PeerId, Multiaddr)>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        metrics: MeshMetrics,
        control: libp2p_stream::Control,
    ) -> Self {
        Self {
            swarm,
            commands,
            events,
            metrics,
            control,
            topic: heads_topic(),
            bootstrap,
            max_peers: cfg.max_peers,
            max_frame: cfg.max_frame,
            send_queue: cfg.send_queue,
            request_timeout: cfg.request_timeout,
            idle_timeout: cfg.idle_timeout,
            bootstrap_interval: cfg.bootstrap_interval,
            connected: HashSet::new(),
            known_addrs: HashMap::new(),
            outbound: HashMap::new(),
            next_generation: 0,
            tasks: JoinSet::new(),
            pending_heads: None,
            lookups: HashMap::new(),
            unpublished: HashSet::new(),
        }
    }

    /// Runs the task until shutdown or until every handle is dropped;
    /// `acceptor` (the inbound sync stream loop) lives and dies with it.
    pub(crate) fn run(
        mut self,
        acceptor: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let span = info_span!("mesh", local = %self.swarm.local_peer_id());
        self.tasks.spawn(
            async move {
                acceptor.await;
                TaskExit::Acceptor
            }
            .in_current_span(),
        );
        async move {
            for (peer, addr) in self.bootstrap.clone() {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                self.remember_addrs(peer, std::slice::from_ref(&addr));
            }
            let mut bootstrap_timer = tokio::time::interval(self.bootstrap_interval);
            bootstrap_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let shutdown_reply = loop {
                let next_deadline = self.lookups.values().map(|l| l.deadline).min();
                tokio::select! {
                    event = self.swarm.select_next_some() => self.on_swarm_event(event),
                    command = self.commands.recv() => match command {
                        Some(Command::Shutdown { reply }) => break Some(reply),
                        Some(command) => self.on_command(command),
                        None => break None,
                    },
                    _ = bootstrap_timer.tick() => self.on_bootstrap_tick(),
                    () = sleep_until_some(next_deadline) => self.on_lookup_deadlines(),
                    Some(exit) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                        self.on_task_exit(exit);
                    }
                }
            };
            self.stop(shutdown_reply).await;
        }
        .instrument(span)
    }

    async fn stop(mut self, reply: Option<oneshot::Sender<()>>) {
        info!("mesh shutting down");
        self.tasks.shutdown().await;
        self.outbound.clear();
        drop(self.swarm);
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    fn emit(&self, event: NetEvent) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            self.metrics.events_dropped.inc();
            warn!(?event, "event queue full; event dropped");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.emit(NetEvent::Listening(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let _span = info_span!("connection", peer = %peer_id).entered();
                debug!(remote = %endpoint.get_remote_address(), dialer = endpoint.is_dialer(), "connection established");
                if num_established.get() == 1 && self.connected.insert(peer_id) {
                    self.metrics.peers_connected.inc();
                    info!("peer connected");
                    self.emit(NetEvent::PeerConnected(peer_id));
                }
                self.on_dial_settled(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                let _span = info_span!("connection", peer = %peer_id).entered();
                debug!(cause = ?cause, "connection closed");
                if num_established == 0 && self.connected.remove(&peer_id) {
                    self.metrics.peers_connected.dec();
                    info!("peer disconnected");
                    self.emit(NetEvent::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "dial failed");
                if let Some(peer) = peer_id {
                    self.on_dial_settled(peer);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(remote = %send_back_addr, %error, "inbound connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: MeshBehaviourEvent) {
        match event {
            MeshBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info);
            }
            MeshBehaviourEvent::Kad(event) => self.on_kad_event(event),
            MeshBehaviourEvent::Gossipsub(event) => self.on_gossip_event(event),
            _ => {}
        }
    }

    /// A peer told us its listen addresses: if it is a clawmesh node, feed
    /// them to the DHT (which is how other nodes learn of it) and remember
    /// them for redialling.
    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != IDENTIFY_PROTOCOL_VERSION
            || !info.protocols.contains(&KAD_PROTOCOL)
        {
            debug!(%peer, version = %info.protocol_version, "peer is not a clawmesh node; not adding it to the DHT");
            return;
        }
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        self.remember_addrs(peer, &addrs);
    }

    fn remember_addrs(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if addrs.is_empty() {
            return;
        }
        if !self.known_addrs.contains_key(&peer) && self.known_addrs.len() >= MAX_KNOWN_PEERS {
            debug!(%peer, limit = MAX_KNOWN_PEERS, "address book full; not remembering peer");
            return;
        }
        let known = self.known_addrs.entry(peer).or_default();
        for addr in addrs {
            if known.len() >= MAX_ADDRS_PER_PEER {
                break;
            }
            if !known.contains(addr) {
                known.push(addr.clone());
            }
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                let addrs = addresses.into_vec();
                self.dial_if_wanted(peer, addrs);
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => self.on_provider_record(record),
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => self.on_providers_progress(id, result, step.last),
            kad::Event::OutboundQueryProgressed { result, stats, .. } => match result {
                kad::QueryResult::Bootstrap(Ok(ok)) => {
                    debug!(remaining = ok.num_remaining, "kad bootstrap progressed");
                }
                kad::QueryResult::Bootstrap(Err(error)) => {
                    debug!(%error, "kad bootstrap failed");
                }
                kad::QueryResult::GetClosestPeers(Ok(ok)) => {
                    for info in ok.peers {
                        self.dial_if_wanted(info.peer_id, info.addrs);
                    }
                }
                kad::QueryResult::StartProviding(result)
                | kad::QueryResult::RepublishProvider(result) => {
                    let key = match result {
                        Ok(ok) => ok.key,
                        Err(error) => {
                            debug!(blob = %hex::encode(error.key().as_ref()), %error, "provider record publication failed");
                            error.into_key()
                        }
                    };
                    if stats.num_successes() == 0 {
                        debug!(blob = %hex::encode(key.as_ref()), "provider record reached no peer; retried on the next bootstrap tick");
                        if self.swarm.behaviour_mut().kad.store_mut().provides(&key) {
                            self.unpublished.insert(key);
                        }
                    } else {
                        debug!(blob = %hex::encode(key.as_ref()), peers = stats.num_successes(), "provider record published");
                        self.unpublished.remove(&key);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Dials a discovered peer unless it is us, already connected, blocked,
    /// or we already have `max_peers` peers.
    fn dial_if_wanted(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id()
            || self.connected.contains(&peer)
            || self.connected.len() >= self.max_peers
            || self.is_blocked(&peer)
        {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => debug!(%peer, "dialling discovered peer"),
            Err(error) => debug!(%peer, %error, "not dialling peer"),
        }
    }

    fn is_blocked(&self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour()
            .block_list
            .blocked_peers()
            .contains(peer)
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            } if message.topic == self.topic.hash() => {
                let from = message.source.unwrap_or(propagation_source);
                self.metrics.heads_in.inc();
                debug!(%from, via = %propagation_source, len = message.data.len(), "heads received");
                self.emit(NetEvent::Heads {
                    from,
                    bytes: message.data,
                });
            }
            gossipsub::Event::Subscribed { peer_id, topic } if topic == self.topic.hash() => {
                debug!(peer = %peer_id, "peer subscribed to heads");
                if let Some(bytes) = self.pending_heads.take() {
                    match self.publish(bytes) {
                        Ok(HeadsDelivery::Sent) => debug!("deferred heads published"),
                        Ok(HeadsDelivery::Deferred) => {}
                        Err(error) => warn!(%error, "deferred heads could not be published"),
                    }
                }
            }
            _ => {}
        }
    }

    fn publish(&mut self, bytes: Vec<u8>) -> Result<HeadsDelivery, PublishError> {
        let topic = self.topic.clone();
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, bytes.clone())
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                self.metrics.heads_out.inc();
                Ok(HeadsDelivery::Sent)
            }
            Err(
                gossipsub::PublishError::NoPeersSubscribedToTopic
                | gossipsub::PublishError::AllQueuesFull(_),
            ) => {
                debug!("nobody to announce heads to yet; keeping them for the next subscriber");
                self.pending_heads = Some(bytes);
                Ok(HeadsDelivery::Deferred)
            }
            Err(gossipsub::PublishError::MessageTooLarge) => {
                Err(PublishError::TooLarge { len: bytes.len() })
            }
            Err(error) => Err(PublishError::Gossip(error)),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::SendSync { peer, bytes, reply } => {
                let _ = reply.send(self.send_sync(peer, bytes));
            }
            Command::PublishHeads { bytes, reply } => {
                let _ = reply.send(self.publish(bytes));
            }
            Command::Block { peer, reply } => {
                info!(%peer, "blocking peer");
                self.swarm.behaviour_mut().block_list.block_peer(peer);
                // Its queued frames can no longer be delivered; the writer
                // reports them as undelivered.
                self.outbound.remove(&peer);
                let _ = reply.send(());
            }
            Command::Unblock { peer, reply } => {
                info!(%peer, "unblocking peer");
                self.swarm.behaviour_mut().block_list.unblock_peer(peer);
                let addrs = self.known_addrs.get(&peer).cloned().unwrap_or_default();
                self.dial_if_wanted(peer, addrs);
                let _ = reply.send(());
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::StartProviding { blob, reply } => {
                let _ = reply.send(self.start_providing(blob));
            }
            Command::StopProviding { blob, reply } => {
                let key = kad::RecordKey::new(&blob);
                self.unpublished.remove(&key);
                self.swarm.behaviour_mut().kad.stop_providing(&key);
                self.update_provider_gauges();
                let _ = reply.send(());
            }
            Command::ProvidedBlobs { reply } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let blobs = kad
                    .store_mut()
                    .provided_keys_iter()
                    .filter_map(|key| <[u8; 32]>::try_from(key.as_ref()).ok())
                    .collect();
                let _ = reply.send(blobs);
            }
            Command::GetProviders {
                blob,
                limit,
                timeout,
                reply,
            } => self.get_providers(blob, limit, timeout, reply),
            // Handled by the loop, which stops on it.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn start_providing(&mut self, blob: [u8; 32]) -> Result<(), ProvideError> {
        let key = kad::RecordKey::new(&blob);
        let kad = &mut self.swarm.behaviour_mut().kad;
        if kad.store_mut().provides(&key) {
            return Ok(());
        }
        let result = match kad.start_providing(key) {
            Ok(_) => {
                debug!(blob = %hex::encode(blob), "providing blob");
                Ok(())
            }
            Err(error) => {
                warn!(blob = %hex::encode(blob), %error, "cannot provide blob");
                Err(ProvideError::TooManyBlobs)
            }
        };
        self.update_provider_gauges();
        result
    }

    fn update_provider_gauges(&mut self) {
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let (remote, provided) = (store.remote_records(), store.provided_keys());
        self.metrics
            .provider_records
            .set(i64::try_from(remote).unwrap_or(i64::MAX));
        self.metrics
            .blobs_provided
            .set(i64::try_from(provided).unwrap_or(i64::MAX));
    }

    /// A peer announced itself as provider of a key: keep it if it passes
    /// the store's checks and bounds (kad already dropped records whose
    /// provider is not the sending peer).
    fn on_provider_record(&mut self, record: kad::ProviderRecord) {
        // A hostile key may be kilobytes long: log its first 32 bytes.
        let key_bytes = record.key.as_ref();
        let key = hex::encode(&key_bytes[..key_bytes.len().min(32)]);
        let provider = record.provider;
        let stored = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .insert_remote(record, Instant::now());
        match stored {
            Ok(Stored::New) => {
                self.metrics.provider_records_stored.inc();
                debug!(%provider, %key, "provider record stored");
            }
            Ok(Stored::Refreshed) => debug!(%provider, %key, "provider record refreshed"),
            Err(refusal) => {
                self.metrics.provider_refused(refusal);
                debug!(%provider, %key, %refusal, "provider record refused");
            }
        }
        self.update_provider_gauges();
    }

    fn get_providers(
        &mut self,
        blob: [u8; 32],
        limit: usize,
        timeout: Duration,
        reply: oneshot::Sender<Result<Vec<PeerId>, LookupError>>,
    ) {
        if self.lookups.len() >= MAX_PENDING_LOOKUPS {
            let _ = reply.send(Err(LookupError::Busy));
            return;
        }
        self.metrics.provider_lookups.inc();
        let span = info_span!("provider_lookup", blob = %hex::encode(blob), limit);
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(&blob));
        span.in_scope(|| debug!("provider lookup started"));
        self.lookups.insert(
            id,
            Lookup {
                limit,
                found: Vec::new(),
                dialing: HashSet::new(),
                query_done: false,
                deadline: tokio::time::Instant::now() + timeout,
                started: Instant::now(),
                reply,
                span,
            },
        );
    }

    fn on_providers_progress(
        &mut self,
        id: kad::QueryId,
        result: kad::GetProvidersResult,
        last: bool,
    ) {
        let local = *self.swarm.local_peer_id();
        let blocked = self.swarm.behaviour().block_list.blocked_peers().clone();
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        let mut fresh = Vec::new();
        match result {
            Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                for peer in providers {
                    if peer != local
                        && !blocked.contains(&peer)
                        && !lookup.found.contains(&peer)
                        && lookup.found.len() < lookup.limit
                    {
                        lookup.found.push(peer);
                        fresh.push(peer);
                    }
                }
            }
            Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
            Err(error) => lookup
                .span
                .in_scope(|| debug!(%error, "provider lookup ended")),
        }
        let full = lookup.found.len() >= lookup.limit;
        lookup.query_done |= last || full;
        // Dial the new providers now, while the query still holds the
        // addresses it learnt for them (kad hands them to the dial); the
        // answer waits for each dial's outcome.
        for peer in fresh {
            if self.connected.contains(&peer) {
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let dialing = match self.swarm.dial(opts) {
                Ok(()) => true,
                // Already being dialled: its outcome will come too.
                Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => true,
                Err(error) => {
                    debug!(%peer, %error, "cannot dial provider");
                    false
                }
            };
            if dialing && let Some(lookup) = self.lookups.get_mut(&id) {
                lookup.dialing.insert(peer);
            }
        }
        if full && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
        self.answer_lookup_if_done(id);
    }

    /// A dial reached an outcome (connected or failed): lookups waiting on
    /// it may be able to answer.
    fn on_dial_settled(&mut self, peer: PeerId) {
        let waiting: Vec<kad::QueryId> = self
            .lookups
            .iter_mut()
            .filter_map(|(id, lookup)| lookup.dialing.remove(&peer).then_some(*id))
            .collect();
        for id in waiting {
            self.answer_lookup_if_done(id);
        }
    }

    fn answer_lookup_if_done(&mut self, id: kad::QueryId) {
        if self
            .lookups
            .get(&id)
            .is_some_and(|l| l.query_done && l.dialing.is_empty())
        {
            self.answer_lookup(id);
        }
    }

    fn answer_lookup(&mut self, id: kad::QueryId) {
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
        if !lookup.found.is_empty() {
            self.metrics.provider_lookup_hits.inc();
        }
        self.metrics
            .providers_found
            .inc_by(u64::try_from(lookup.found.len()).unwrap_or(u64::MAX));
        lookup.span.in_scope(|| {
            debug!(
                providers = lookup.found.len(),
                unsettled_dials = lookup.dialing.len(),
                ms = lookup.started.elapsed().as_millis(),
                "provider lookup answered"
            );
        });
        let _ = lookup.reply.send(Ok(lookup.found));
    }

    /// Lookups past their deadline answer with what they found so far.
    fn on_lookup_deadlines(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<kad::QueryId> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.answer_lookup(id);
        }
    }

    /// Hands a frame to the peer's writer, starting one if there is none.
    /// Never waits: a full queue refuses the frame.
    fn send_sync(&mut self, peer: PeerId, bytes: Vec<u8>) -> Result<(), SendError> {
        if self.is_blocked(&peer) {
            return Err(SendError::Blocked { peer });
        }
        let bytes = match self.outbound.get(&peer) {
            Some(out) => match out.frames.try_send(bytes) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.sync_frames_dropped.inc();
                    warn!(%peer, capacity = self.send_queue, "sync send queue full; frame dropped");
                    return Err(SendError::QueueFull {
                        peer,
                        capacity: self.send_queue,
                    });
                }
                // That writer is finishing; start a new one.
                Err(mpsc::error::TrySendError::Closed(bytes)) => bytes,
            },
            None => bytes,
        };
        let (frames, queue) = mpsc::channel(self.send_queue);
        // A fresh queue has room for at least one frame (send_queue >= 1).
        let _ = frames.try_send(bytes);
        let generation = self.next_generation;
        self.next_generation += 1;
        let writer = SyncWriter {
            peer,
            control: self.control.clone(),
            frames: queue,
            events: self.events.clone(),
            metrics: self.metrics.clone(),
            max_frame: self.max_frame,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
        };
        self.tasks.spawn(
            async move {
                writer.run().await;
                TaskExit::Writer { peer, generation }
            }
            .in_current_span(),
        );
        self.outbound.insert(peer, Outbound { frames, generation });
        Ok(())
    }

    fn on_task_exit(&mut self, exit: Result<TaskExit, tokio::task::JoinError>) {
        match exit {
            Ok(TaskExit::Writer { peer, generation }) => {
                if self
                    .outbound
                    .get(&peer)
                    .is_some_and(|out| out.generation == generation)
                {
                    self.outbound.remove(&peer);
                }
            }
            Ok(TaskExit::Acceptor) => {
                warn!("inbound sync stream acceptor stopped");
            }
            Err(error) => warn!(%error, "mesh background task failed"),
        }
    }

    /// Re-runs DHT discovery and redials bootstrap peers we lost.
    fn on_bootstrap_tick(&mut self) {
        for (peer, addr) in self.bootstrap.clone() {
            if !self.connected.contains(&peer) {
                self.dial_if_wanted(peer, vec![addr]);
            }
        }
        match self.swarm.behaviour_mut().kad.bootstrap() {
            Ok(_) => debug!("kad bootstrap started"),
            Err(error) => debug!(%error, "kad bootstrap not started"),
        }
        if !self.connected.is_empty() && !self.unpublished.is_empty() {
            let kad = &mut self.swarm.behaviour_mut().kad;
            for key in std::mem::take(&mut self.unpublished) {
                if kad.store_mut().provides(&key)
                    && let Err(error) = kad.start_providing(key)
                {
                    debug!(%error, "provider record not republished");
                }
            }
        }
        let swept = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .sweep(Instant::now());
        if swept > 0 {
            debug!(swept, "expired provider records dropped");
        }
        self.update_provider_gauges();
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
