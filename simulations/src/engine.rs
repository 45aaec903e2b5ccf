//! The discrete-event engine: runs N [`SimPeer`]s over the simulated network
//! along a scenario's timeline, checks the invariants and builds the report.
//!
//! Every random choice (tick phases, clock skews, latencies, faults, overlay
//! wiring) is drawn from one [`SimRng`] in event order, and every collection
//! that affects order is ordered, so one seed reproduces a run exactly.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{SimConfig, SimError};
use crate::invariants::Checker;
use crate::network::{Fate, LinkChange, Network, NodeIndex};
use crate::report::{Sample, SimReport, Traffic};
use crate::rng::SimRng;
use crate::scenario::{Action, Command};
use crate::scheduler::EventQueue;
use crate::sim_peer::{Disk, PeerEffect, PeerEvent, PeerView, SimPeer, apply_disk_write};
use crate::trace::{Channel, Trace, TraceEntry};

/// Node clocks start here (a plausible wall-clock epoch in ms) so a
/// negative skew never goes below zero.
pub const CLOCK_BASE_MS: u64 = 1_700_000_000_000;

enum Event<W> {
    Step(usize),
    Deliver {
        from: NodeIndex,
        to: NodeIndex,
        epoch: u64,
        channel: Channel,
        bytes: Vec<u8>,
    },
    Tick {
        node: NodeIndex,
        life: u64,
    },
    Work {
        node: NodeIndex,
        life: u64,
        work: W,
    },
    Sample,
}

/// Runs one simulation of `config` with peers of type `P` built from `setup`.
pub fn simulate<P: SimPeer>(config: &SimConfig, setup: &P::Setup) -> Result<SimReport, SimError> {
    simulate_observed::<P>(config, setup, &mut |_, _| {})
}

/// [`simulate`], calling `observe(simulated_ms, events_so_far)` each time
/// virtual time reaches a whole second (before the first event of that
/// second), and once more at the end: a bench measures the wall time
/// spent per simulated second with it (the report itself holds no
/// wall-clock value).
pub fn simulate_observed<P: SimPeer>(
    config: &SimConfig,
    setup: &P::Setup,
    observe: &mut dyn FnMut(u64, u64),
) -> Result<SimReport, SimError> {
    let nodes = config.node_count();
    let timeline = config.scenario.timeline(nodes)?;
    let mut engine = Engine::<P>::new(config, setup, timeline)?;
    engine.run(observe);
    Ok(engine.finish())
}

struct Engine<'s, P: SimPeer> {
    config: &'s SimConfig,
    setup: &'s P::Setup,
    timeline: Vec<(u64, Action)>,
    rng: SimRng,
    queue: EventQueue<Event<P::Work>>,
    net: Network,
    peers: Vec<Option<P>>,
    /// Incremented at each crash, so a dead life's timers are ignored.
    lives: Vec<u64>,
    disks: Vec<Disk>,
    skew_ms: Vec<i64>,
    deploy_faults: Vec<BTreeSet<(String, String)>>,
    views: Vec<Option<PeerView>>,
    /// The node handled an event since its view was last built, and its
    /// [`SimPeer::view_generation`] moved (or it has none).
    dirty: Vec<bool>,
    /// The view generation of each node's last view (None: unknown).
    viewed_generation: Vec<Option<u64>>,
    /// Id in `target_tables` of each node's current view's targets (None:
    /// not looked up since the view was built).
    table_ids: Vec<Option<usize>>,
    traffic: Vec<Traffic>,
    trace: Trace,
    checker: Checker,
    target_tables: BTreeMap<BTreeMap<String, Option<String>>, usize>,
    raw_samples: Vec<RawSample>,
    largest_message: usize,
    largest_document: usize,
    events: u64,
    now: u64,
}

struct RawSample {
    at_ms: u64,
    live: usize,
    distinct_heads: usize,
    tables: BTreeMap<usize, usize>,
}

impl<'s, P: SimPeer> Engine<'s, P> {
    fn new(
        config: &'s SimConfig,
        setup: &'s P::Setup,
        timeline: Vec<(u64, Action)>,
    ) -> Result<Self, SimError> {
        let nodes = config.node_count();
        let scenario = &config.scenario;
        let mut rng = SimRng::new(config.seed);
        let skew = scenario.network.clock_skew_ms as i64;
        let skew_ms = (0..nodes)
            .map(|_| {
                if skew == 0 {
                    0
                } else {
                    rng.between(0, 2 * skew as u64) as i64 - skew
                }
            })
            .collect();
        let mut peers = Vec::with_capacity(nodes);
        for node in 0..nodes {
            peers.push(Some(
                P::start(setup, node, 0, None)
                    .map_err(|reason| SimError::PeerStart { node, reason })?,
            ));
        }
        let mut engine = Engine {
            config,
            setup,
            timeline,
            rng,
            queue: EventQueue::new(),
            net: Network::new(nodes, scenario.network.clone()),
            peers,
            lives: vec![0; nodes],
            disks: vec![Disk::new(); nodes],
            skew_ms,
            deploy_faults: vec![BTreeSet::new(); nodes],
            views: vec![None; nodes],
            dirty: vec![true; nodes],
            viewed_generation: vec![None; nodes],
            table_ids: vec![None; nodes],
            traffic: vec![Traffic::default(); nodes],
            trace: Trace::default(),
            checker: Checker::new(config.seed, config.bounds),
            target_tables: BTreeMap::new(),
            raw_samples: Vec::new(),
            largest_message: 0,
            largest_document: 0,
            events: 0,
            now: 0,
        };
        for node in 0..nodes {
            engine.schedule_first_tick(node);
        }
        for index in 0..engine.timeline.len() {
            let at = engine.timeline[index].0;
            engine.queue.push(at, Event::Step(index));
        }
        engine.queue.push(0, Event::Sample);
        Ok(engine)
    }

    fn schedule_first_tick(&mut self, node: NodeIndex) {
        let phase = self.rng.below(self.config.scenario.tick_ms);
        let life = self.lives[node];
        self.queue
            .push(self.now + phase, Event::Tick { node, life });
    }

    fn node_clock(&self, node: NodeIndex) -> u64 {
        CLOCK_BASE_MS.saturating_add_signed(self.skew_ms[node]) + self.now
    }

    fn run(&mut self, observe: &mut dyn FnMut(u64, u64)) {
        // The initial overlay: everyone connects at time zero.
        self.rewire();
        let end = self.config.scenario.duration_ms;
        let mut next_second = 1_000;
        while let Some(at) = self.queue.peek_time() {
            if at > end {
                break;
            }
            while at >= next_second {
                observe(next_second, self.events);
                next_second += 1_000;
            }
            let Some((at, event)) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.events += 1;
            self.dispatch(event);
        }
        self.now = end;
        self.sample();
        observe(end, self.events);
    }

    fn dispatch(&mut self, event: Event<P::Work>) {
        match event {
            Event::Step(index) => {
                let action = self.timeline[index].1.clone();
                self.perform(action);
            }
            Event::Deliver {
                from,
                to,
                epoch,
                channel,
                bytes,
            } => {
                if self.net.connection(from, to) != Some(epoch) || !self.net.is_alive(to) {
                    self.traffic[to].messages_dropped += 1;
                    self.trace.record(
                        self.now,
                        TraceEntry::Dropped {
                            from,
                            to,
                            channel,
                            why: "connection closed",
                        },
                    );
                    return;
                }
                self.traffic[to].messages_received += 1;
                self.traffic[to].bytes_received += bytes.len() as u64;
                self.trace.record(
                    self.now,
                    TraceEntry::Delivered {
                        from,
                        to,
                        channel,
                        bytes: bytes.len(),
                    },
                );
                let event = match channel {
                    Channel::Sync => PeerEvent::Message { from, bytes },
                    Channel::Heads => PeerEvent::Heads { from, bytes },
                };
                self.feed(to, event);
            }
            Event::Tick { node, life } => {
                if self.lives[node] == life && self.net.is_alive(node) {
                    self.feed(node, PeerEvent::Tick);
                    let next = self.now + self.config.scenario.tick_ms;
                    self.queue.push(next, Event::Tick { node, life });
                }
            }
            Event::Work { node, life, work } => {
                if self.lives[node] == life && self.net.is_alive(node) {
                    self.feed(node, PeerEvent::WorkDone(work));
                }
            }
            Event::Sample => {
                self.sample();
                let next = self.now + self.config.scenario.sample_ms;
                if next < self.config.scenario.duration_ms {
                    self.queue.push(next, Event::Sample);
                }
            }
        }
    }

    fn perform(&mut self, action: Action) {
        self.trace
            .record(self.now, TraceEntry::Step(action.clone()));
        match action {
            Action::Partition(groups) => {
                self.net.partition(&groups);
                self.rewire();
            }
            Action::Heal => {
                self.net.heal();
                self.rewire();
            }
            Action::Link { a, b, up } => {
                self.net.set_link(a, b, up);
                self.rewire();
            }
            Action::Isolation { node, isolated } => {
                self.net.set_isolated(node, isolated);
                self.rewire();
            }
            Action::Crash { node, keep_disk } => self.crash(node, keep_disk),
            Action::Restart { node } => self.restart(node),
            Action::Command { node, command } => {
                if let Command::FailDeploys { package, version } = &command {
                    self.deploy_faults[node].insert((package.clone(), version.clone()));
                }
                if self.net.is_alive(node) {
                    self.feed(node, PeerEvent::Command(command));
                } else {
                    self.trace.record(
                        self.now,
                        TraceEntry::Note {
                            node,
                            text: "down: command not performed".into(),
                        },
                    );
                }
            }
        }
    }

    fn crash(&mut self, node: NodeIndex, keep_disk: bool) {
        if !self.net.is_alive(node) {
            return;
        }
        if !keep_disk {
            self.mark_intents_lost_with(node);
            self.disks[node].clear();
            self.views[node] = None;
        }
        self.peers[node] = None;
        self.lives[node] += 1;
        self.net.set_alive(node, false);
        self.rewire();
    }

    /// Valid intents that no other node holds (live, or down with its disk)
    /// die with `node`'s disk: the scenario's doing, not a violation.
    fn mark_intents_lost_with(&mut self, node: NodeIndex) {
        let at_risk: Vec<String> = self
            .checker
            .oracle
            .intents
            .keys()
            .filter(|id| !self.checker.oracle.lost_with_disk.contains(*id))
            .cloned()
            .collect();
        if at_risk.is_empty() {
            return;
        }
        for other in 0..self.peers.len() {
            if other != node && self.net.is_alive(other) {
                self.refresh_view(other);
            }
        }
        for id in at_risk {
            let held = (0..self.peers.len()).any(|other| {
                other != node
                    && self.views[other]
                        .as_ref()
                        .is_some_and(|view| view.intents.contains(&id))
            });
            if !held {
                self.trace.record(
                    self.now,
                    TraceEntry::Note {
                        node,
                        text: format!("intent {id} lost with the disk"),
                    },
                );
                self.checker.oracle.lost_with_disk.insert(id);
            }
        }
    }

    fn restart(&mut self, node: NodeIndex) {
        if self.net.is_alive(node) {
            return;
        }
        let disk = (!self.disks[node].is_empty()).then_some(&self.disks[node]);
        match P::start(self.setup, node, self.lives[node], disk) {
            Ok(peer) => self.peers[node] = Some(peer),
            Err(reason) => {
                // A node that cannot come back from its own disk is a finding.
                let trace = &self.trace;
                self.checker.check(
                    crate::invariants::NO_INTENT_LOST,
                    false,
                    self.now,
                    &[node],
                    || format!("node {node} could not restart from its disk: {reason}"),
                    trace,
                );
                return;
            }
        }
        self.net.set_alive(node, true);
        self.dirty[node] = true;
        self.viewed_generation[node] = None;
        self.schedule_first_tick(node);
        let faults: Vec<(String, String)> = self.deploy_faults[node].iter().cloned().collect();
        for (package, version) in faults {
            self.feed(
                node,
                PeerEvent::Command(Command::FailDeploys { package, version }),
            );
        }
        self.rewire();
    }

    fn rewire(&mut self) {
        for change in self.net.rewire(&mut self.rng) {
            let (a, b, up) = match change {
                LinkChange::Up(a, b) => (a, b, true),
                LinkChange::Down(a, b) => (a, b, false),
            };
            self.trace.record(self.now, TraceEntry::Link { a, b, up });
            for (me, peer) in [(a, b), (b, a)] {
                if self.net.is_alive(me) {
                    let event = if up {
                        PeerEvent::Connected(peer)
                    } else {
                        PeerEvent::Disconnected(peer)
                    };
                    self.feed(me, event);
                }
            }
        }
    }

    fn feed(&mut self, node: NodeIndex, event: PeerEvent<P::Work>) {
        let clock = self.node_clock(node);
        let Some(peer) = self.peers[node].as_mut() else {
            return;
        };
        let effects = peer.handle(clock, event);
        let generation = peer.view_generation();
        if generation.is_none() || generation != self.viewed_generation[node] {
            self.dirty[node] = true;
        }
        for effect in effects {
            self.carry_out(node, effect);
        }
    }

    fn carry_out(&mut self, node: NodeIndex, effect: PeerEffect<P::Work>) {
        match effect {
            PeerEffect::Send { to, bytes } => self.send(node, to, Channel::Sync, bytes),
            PeerEffect::Announce { bytes } => {
                let neighbours: Vec<NodeIndex> = self.net.neighbours(node).collect();
                for to in neighbours {
                    self.send(node, to, Channel::Heads, bytes.clone());
                }
            }
            PeerEffect::Persist(write) => {
                self.traffic[node].bytes_persisted += write.bytes.len() as u64;
                apply_disk_write(&mut self.disks[node], write);
            }
            PeerEffect::Schedule { after_ms, work } => {
                let life = self.lives[node];
                self.queue
                    .push(self.now + after_ms, Event::Work { node, life, work });
            }
            PeerEffect::Fact(fact) => self.checker.learn(self.now, node, fact, &self.trace),
            PeerEffect::Note(text) => self.trace.record(self.now, TraceEntry::Note { node, text }),
        }
    }

    fn send(&mut self, from: NodeIndex, to: NodeIndex, channel: Channel, bytes: Vec<u8>) {
        let size = bytes.len();
        self.traffic[from].messages_sent += 1;
        self.traffic[from].bytes_sent += size as u64;
        self.largest_message = self.largest_message.max(size);
        self.checker
            .check_message(self.now, from, size, &self.trace);
        let Some(epoch) = self.net.connection(from, to) else {
            self.traffic[from].messages_dropped += 1;
            self.trace.record(
                self.now,
                TraceEntry::Dropped {
                    from,
                    to,
                    channel,
                    why: "not connected",
                },
            );
            return;
        };
        match self.net.fate(from, to, &mut self.rng) {
            Fate::Lost => {
                self.traffic[from].messages_dropped += 1;
                self.trace.record(
                    self.now,
                    TraceEntry::Dropped {
                        from,
                        to,
                        channel,
                        why: "lost",
                    },
                );
            }
            Fate::Delivered(delays) => {
                let last = delays.len() - 1;
                let mut bytes = Some(bytes);
                for (i, delay) in delays.into_iter().enumerate() {
                    let copy = if i == last {
                        bytes.take().unwrap_or_default()
                    } else {
                        bytes.clone().unwrap_or_default()
                    };
                    self.queue.push(
                        self.now + delay,
                        Event::Deliver {
                            from,
                            to,
                            epoch,
                            channel,
                            bytes: copy,
                        },
                    );
                }
            }
        }
    }

    fn refresh_view(&mut self, node: NodeIndex) {
        if !self.dirty[node] {
            return;
        }
        let Some(peer) = self.peers[node].as_mut() else {
            return;
        };
        let view = peer.view();
        self.viewed_generation[node] = peer.view_generation();
        self.dirty[node] = false;
        self.largest_document = self.largest_document.max(view.largest_document_bytes);
        self.checker.check_view(self.now, node, &view, &self.trace);
        self.views[node] = Some(view);
        self.table_ids[node] = None;
    }

    fn sample(&mut self) {
        let live_nodes: Vec<NodeIndex> = (0..self.peers.len())
            .filter(|node| self.net.is_alive(*node))
            .collect();
        for &node in &live_nodes {
            self.refresh_view(node);
            // A view's table is looked up once, in node order (table ids
            // are numbered in the order tables are first seen).
            if self.table_ids[node].is_none()
                && let Some(view) = self.views[node].as_ref()
            {
                let next_id = self.target_tables.len();
                let id = *self
                    .target_tables
                    .entry(view.targets.clone())
                    .or_insert(next_id);
                self.table_ids[node] = Some(id);
            }
        }
        let mut heads: BTreeSet<&[u8]> = BTreeSet::new();
        let mut tables: BTreeMap<usize, usize> = BTreeMap::new();
        let mut live = 0;
        for &node in &live_nodes {
            let (Some(view), Some(id)) = (self.views[node].as_ref(), self.table_ids[node]) else {
                continue;
            };
            live += 1;
            heads.insert(&view.heads);
            *tables.entry(id).or_default() += 1;
        }
        self.raw_samples.push(RawSample {
            at_ms: self.now,
            live,
            distinct_heads: heads.len(),
            tables,
        });
    }

    fn finish(mut self) -> SimReport {
        let end = self.config.scenario.duration_ms;
        let live_views: Vec<(NodeIndex, PeerView)> = (0..self.peers.len())
            .filter(|n| self.net.is_alive(*n))
            .filter_map(|n| self.views[n].clone().map(|v| (n, v)))
            .collect();
        if self.config.scenario.expect_convergence {
            self.checker.check_end(end, &live_views, &self.trace);
        }
        let last = self.raw_samples.last();
        // The final table: the one most live nodes hold at the end.
        let final_id = last.and_then(|s| {
            s.tables
                .iter()
                .max_by_key(|(id, count)| (**count, std::cmp::Reverse(**id)))
                .map(|(id, _)| *id)
        });
        let samples: Vec<Sample> = self
            .raw_samples
            .iter()
            .map(|raw| Sample {
                at_ms: raw.at_ms,
                live: raw.live,
                distinct_heads: raw.distinct_heads,
                distinct_targets: raw.tables.len(),
                agreeing_fraction: match (final_id, raw.live) {
                    (Some(id), live) if live > 0 => {
                        raw.tables.get(&id).copied().unwrap_or(0) as f64 / live as f64
                    }
                    _ => 0.0,
                },
            })
            .collect();
        let agrees = |s: &Sample| s.distinct_heads <= 1 && s.distinct_targets <= 1;
        let last_disruption_ms = self.timeline.last().map(|(at, _)| *at).unwrap_or(0);
        let converged = samples.last().is_some_and(agrees);
        let convergence_ms = if converged {
            let first_of_final_run = samples
                .iter()
                .rposition(|s| !agrees(s))
                .map_or(0, |i| samples.get(i + 1).map_or(end, |s| s.at_ms));
            Some(first_of_final_run.saturating_sub(last_disruption_ms))
        } else {
            None
        };
        let final_targets = if converged {
            live_views
                .first()
                .map(|(_, v)| v.targets.clone().into_iter().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut total = Traffic::default();
        self.traffic.iter().for_each(|t| total.add(t));
        let intents_submitted = self.checker.oracle.intents.len();
        let intents_lost_with_disk = self.checker.oracle.lost_with_disk.len();
        let (invariants, violations) = self.checker.finish();
        SimReport {
            scenario: self.config.scenario.name.clone(),
            seed: self.config.seed,
            nodes: self.peers.len(),
            duration_ms: end,
            last_disruption_ms,
            converged,
            convergence_ms,
            live_nodes: live_views.len(),
            events: self.events,
            total,
            per_node: self.traffic,
            largest_message_bytes: self.largest_message,
            largest_document_bytes: self.largest_document,
            intents_submitted,
            intents_lost_with_disk,
            final_targets,
            invariants,
            violations,
            samples,
        }
    }
}
