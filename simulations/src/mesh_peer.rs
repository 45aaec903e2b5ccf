//! [`SimPeer`] over the crdt peer core: a simulated node is a
//! [`PeerCore`] plus one [`ReleaseController`] per package, composed the way
//! a real node composes them, with the node's I/O (blob fetch, verification,
//! deployment, rollback) played by the simulator as timed work.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use clawmesh_crdt::PackageStatus;
use clawmesh_crdt::arbitration::{IntentFacts, Target};
use clawmesh_crdt::peer::{MAX_ANNOUNCEMENT_BYTES, PeerAction, PeerConfig, PeerCore, PeerInput};
use clawmesh_crdt::release_state::transition;
use clawmesh_crdt::{
    Capabilities, DocumentId, Intent, IntentAction, Manifest, PackageName, PublisherKey,
    ReleaseAction, ReleaseController, ReleaseControllerConfig, ReleaseInput, SignedIntent,
    SignedManifest, TrustRoot, TrustedPublisher,
};
use semver::Version;

use crate::network::NodeIndex;
use crate::rng::SimRng;
use crate::scenario::Command;
use crate::sim_peer::{Disk, DiskWrite, Fact, PeerEffect, PeerEvent, PeerView, SimPeer};

/// Inputs one event may cascade into (core actions feeding controllers
/// feeding the core); past this the node is stuck in a loop, which is a bug.
pub const MAX_CASCADE_STEPS: usize = 10_000;

/// The WIT world simulated manifests name.
const SIM_ABI_WORLD: &str = "clawmesh:skill/skill@0.1.0";

/// Keys, trust root and tuning shared by every node of a run.
#[derive(Debug)]
pub struct MeshSetup {
    /// The mesh's trust root (one publisher, threshold 1).
    pub trust: TrustRoot,
    /// The trusted publisher's key.
    pub publisher: PublisherKey,
    /// A key outside the trust root, for forged intents.
    pub outsider: PublisherKey,
    /// Peer core tuning.
    pub peer: PeerConfig,
    /// Release controller tuning.
    pub release: ReleaseControllerConfig,
    /// Virtual time each piece of local work takes.
    pub work_ms: u64,
    /// The run's seed (node seeds derive from it).
    pub seed: u64,
}

impl MeshSetup {
    /// Keys derived from `seed`, default tuning.
    pub fn new(seed: u64, work_ms: u64) -> Result<Self, String> {
        // A separate stream from the engine's, so adding keys never shifts
        // the network's random choices.
        let mut rng = SimRng::new(seed ^ 0x6B65_7973_5F66_6F72);
        let publisher = PublisherKey::from_secret_bytes(&rng.bytes32());
        let outsider = PublisherKey::from_secret_bytes(&rng.bytes32());
        let trust = TrustRoot::new(
            1,
            [TrustedPublisher::new(
                "sim-publisher",
                publisher.verifying_key(),
            )],
        )
        .map_err(|e| format!("trust root: {e}"))?;
        Ok(MeshSetup {
            trust,
            publisher,
            outsider,
            peer: PeerConfig::default(),
            release: ReleaseControllerConfig::default(),
            work_ms,
            seed,
        })
    }
}

/// Local work a node waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshWork {
    /// The blob of `version` arrived.
    BlobFetched(PackageName, Version),
    /// `version`'s blob was checked against its manifest.
    Verified(PackageName, Version),
    /// `version` was deployed and health-checked.
    Deployed(PackageName, Version),
    /// The previous version was restored.
    RolledBack(PackageName),
    /// The core asked for a tick at this time (a delayed push or a pull; see
    /// `PeerCore::pending_offer_due`), as the node's driver sleeps until
    /// `PeerCore::poll_timeout`.
    CoreTimer,
}

/// One simulated node.
#[derive(Debug)]
pub struct MeshPeer {
    core: PeerCore<NodeIndex>,
    controllers: BTreeMap<PackageName, ReleaseController>,
    release: ReleaseControllerConfig,
    publisher: PublisherKey,
    outsider: PublisherKey,
    work_ms: u64,
    failing: BTreeSet<(String, String)>,
    document_bytes: BTreeMap<DocumentId, usize>,
    /// Targets not yet fed to the controllers (after a restart from disk).
    resume_pending: bool,
    /// When the scheduled `CoreTimer` fires, if one is scheduled.
    core_timer_at: Option<u64>,
    /// The cascade queue, kept between events so handling one allocates
    /// no queue.
    spare_queue: VecDeque<PeerInput<NodeIndex>>,
}

/// The disk key of the saved status board.
const STATUS_BOARD_KEY: &str = "status-board";

fn node_id(index: NodeIndex) -> String {
    format!("node-{index}")
}

impl SimPeer for MeshPeer {
    type Work = MeshWork;
    type Setup = MeshSetup;

    fn start(
        setup: &MeshSetup,
        index: NodeIndex,
        life: u64,
        disk: Option<&Disk>,
    ) -> Result<Self, String> {
        let mut seeder = SimRng::new(setup.seed ^ (index as u64).rotate_left(32) ^ life);
        let mut core = PeerCore::new(
            setup.peer.clone(),
            node_id(index),
            setup.trust.clone(),
            seeder.next_u64(),
        );
        let mut document_bytes = BTreeMap::new();
        let mut controllers = BTreeMap::new();
        if let Some(disk) = disk {
            for id in DocumentId::all() {
                let Some(chunks) = disk.get(&id.name()) else {
                    continue;
                };
                let bytes: Vec<u8> = chunks.concat();
                core.load_document(id, &bytes)
                    .map_err(|e| format!("loading {id} from disk: {e}"))?;
                document_bytes.insert(id, bytes.len());
            }
            if let Some(chunks) = disk.get(STATUS_BOARD_KEY) {
                core.load_status_board(&chunks.concat())
                    .map_err(|e| format!("loading the status board from disk: {e}"))?;
            }
            // What this node ran before the crash, as its own status says.
            if let Some(mine) = core.status_table().get(&node_id(index)) {
                for (package, status) in mine {
                    if let Some(running) = &status.running {
                        controllers.insert(
                            package.clone(),
                            ReleaseController::resume_active(
                                setup.release.clone(),
                                running.clone(),
                            ),
                        );
                    }
                }
            }
        }
        Ok(MeshPeer {
            core,
            controllers,
            release: setup.release.clone(),
            publisher: setup.publisher.clone(),
            outsider: setup.outsider.clone(),
            work_ms: setup.work_ms,
            failing: BTreeSet::new(),
            document_bytes,
            resume_pending: disk.is_some(),
            core_timer_at: None,
            spare_queue: VecDeque::new(),
        })
    }

    fn handle(&mut self, now_ms: u64, event: PeerEvent<MeshWork>) -> Vec<PeerEffect<MeshWork>> {
        let mut run = Cascade {
            core: std::mem::take(&mut self.spare_queue),
            ..Cascade::default()
        };
        if self.resume_pending {
            self.resume_pending = false;
            let targets = self.core.targets().clone();
            self.feed_targets(now_ms, &targets, &mut run);
        }
        match event {
            PeerEvent::Connected(peer) => run.core.push_back(PeerInput::Connected(peer)),
            PeerEvent::Disconnected(peer) => run.core.push_back(PeerInput::Disconnected(peer)),
            PeerEvent::Message { from, bytes } => {
                run.core.push_back(PeerInput::Message { from, bytes })
            }
            PeerEvent::Heads { from, bytes } => run
                .core
                .push_back(PeerInput::HeadsAnnounced { from, bytes }),
            PeerEvent::Tick => {
                run.core.push_back(PeerInput::Tick);
                let packages: Vec<PackageName> = self.controllers.keys().cloned().collect();
                for package in packages {
                    self.feed_controller(now_ms, &package, ReleaseInput::Tick, &mut run);
                }
            }
            PeerEvent::Command(command) => self.command(now_ms, command, &mut run),
            PeerEvent::WorkDone(MeshWork::CoreTimer) => {
                self.core_timer_at = None;
                run.core.push_back(PeerInput::Tick);
            }
            PeerEvent::WorkDone(work) => self.work_done(now_ms, work, &mut run),
        }
        self.drain(now_ms, &mut run);
        self.schedule_core_timer(now_ms, &mut run);
        run.core.clear();
        self.spare_queue = run.core;
        run.effects
    }

    fn view_generation(&self) -> Option<u64> {
        // Everything `view` reads is the core's (the document sizes come
        // from its `Persist` actions, which follow a document change).
        Some(self.core.generation())
    }

    fn view(&mut self) -> PeerView {
        let mut heads = Vec::new();
        for (id, mut doc_heads) in self.core.heads() {
            heads.extend_from_slice(id.name().as_bytes());
            doc_heads.sort();
            for head in doc_heads {
                heads.extend_from_slice(&head.0);
            }
        }
        heads.extend_from_slice(STATUS_BOARD_KEY.as_bytes());
        heads.extend_from_slice(&self.core.status_board().digest());
        let quarantine = self.core.quarantine();
        let intents = self.core.intents();
        let mut quarantined = BTreeSet::new();
        let mut targets = BTreeMap::new();
        for (package, target) in self.core.targets() {
            targets.insert(package.to_string(), Some(target.version.to_string()));
            // A quarantined version may still be targeted when the intent
            // that decided it lifts the quarantine; flag it only otherwise.
            let decided_by = intents.iter().find(|i| i.digest == target.decided_by);
            let blocked = match decided_by {
                Some(intent) => quarantine.blocks(&IntentFacts::from(intent)),
                None => quarantine.get(package, &target.version).is_some(),
            };
            if blocked {
                quarantined.insert((package.to_string(), target.version.to_string()));
            }
        }
        PeerView {
            heads: clawmesh_crdt::digest(&heads).to_vec(),
            targets,
            intents: intents.iter().map(|i| hex::encode(i.digest)).collect(),
            quarantined,
            // The status board counts as a document.
            largest_document_bytes: self
                .document_bytes
                .values()
                .copied()
                .chain([self.core.status_board().bytes()])
                .max()
                .unwrap_or(0),
            rejected: self.core.rejected().len(),
        }
    }
}

/// Work queued while one event is handled.
#[derive(Default)]
struct Cascade {
    core: VecDeque<PeerInput<NodeIndex>>,
    effects: Vec<PeerEffect<MeshWork>>,
    steps: usize,
}

impl MeshPeer {
    /// Asks for a `CoreTimer` when the core has a push or pull due before
    /// the one already scheduled (the periodic `Tick` covers anti-entropy).
    fn schedule_core_timer(&mut self, now_ms: u64, run: &mut Cascade) {
        let Some(due) = self.core.pending_offer_due() else {
            return;
        };
        if self.core_timer_at.is_some_and(|at| at <= due) {
            return;
        }
        let at = due.max(now_ms);
        self.core_timer_at = Some(at);
        run.effects.push(PeerEffect::Schedule {
            after_ms: at - now_ms,
            work: MeshWork::CoreTimer,
        });
    }

    fn drain(&mut self, now_ms: u64, run: &mut Cascade) {
        while let Some(input) = run.core.pop_front() {
            run.steps += 1;
            if run.steps > MAX_CASCADE_STEPS {
                run.effects.push(PeerEffect::Fact(Fact::OverBound {
                    description: format!(
                        "one event cascaded into more than {MAX_CASCADE_STEPS} core inputs"
                    ),
                }));
                return;
            }
            for action in self.core.handle(now_ms, input) {
                self.core_action(now_ms, action, run);
            }
        }
    }

    fn core_action(&mut self, now_ms: u64, action: PeerAction<NodeIndex>, run: &mut Cascade) {
        match action {
            PeerAction::Send { to, bytes } => run.effects.push(PeerEffect::Send { to, bytes }),
            PeerAction::AnnounceHeads { bytes } => {
                if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
                    run.effects.push(PeerEffect::Fact(Fact::OverBound {
                        description: format!(
                            "announcement of {} B (bound {MAX_ANNOUNCEMENT_BYTES} B)",
                            bytes.len()
                        ),
                    }));
                }
                run.effects.push(PeerEffect::Announce { bytes });
            }
            PeerAction::Persist { doc, bytes } => {
                *self.document_bytes.entry(doc).or_default() += bytes.len();
                run.effects.push(PeerEffect::Persist(DiskWrite {
                    key: doc.name(),
                    bytes,
                    replace: false,
                }));
            }
            PeerAction::PersistCompacted { doc, bytes } => {
                self.document_bytes.insert(doc, bytes.len());
                run.effects.push(PeerEffect::Persist(DiskWrite {
                    key: doc.name(),
                    bytes,
                    replace: true,
                }));
            }
            PeerAction::PersistStatusBoard { bytes } => {
                run.effects.push(PeerEffect::Persist(DiskWrite {
                    key: STATUS_BOARD_KEY.to_string(),
                    bytes,
                    replace: true,
                }));
            }
            PeerAction::TargetsChanged(targets) => {
                let summary: Vec<String> = targets
                    .iter()
                    .map(|(p, t)| {
                        format!(
                            "{p}@{}{}",
                            t.version,
                            if t.paused { " (paused)" } else { "" }
                        )
                    })
                    .collect();
                run.effects
                    .push(PeerEffect::Note(format!("targets {}", summary.join(", "))));
                self.feed_targets(now_ms, &targets, run);
            }
            PeerAction::Rejected(entry) => {
                run.effects.push(PeerEffect::Note(format!(
                    "rejected {}: {}",
                    entry.path, entry.reason
                )));
            }
            PeerAction::Refused { from, reason } => {
                run.effects
                    .push(PeerEffect::Note(format!("refused from {from}: {reason}")));
            }
            PeerAction::WriteFailed { what, reason } => {
                run.effects.push(PeerEffect::Note(format!(
                    "write of {what} failed: {reason}"
                )));
            }
        }
    }

    fn feed_targets(
        &mut self,
        now_ms: u64,
        targets: &BTreeMap<PackageName, Target>,
        run: &mut Cascade,
    ) {
        let mut packages: BTreeSet<PackageName> = self.controllers.keys().cloned().collect();
        packages.extend(targets.keys().cloned());
        for package in packages {
            let wanted = targets.get(&package).map(|t| t.version.clone());
            self.feed_controller(now_ms, &package, ReleaseInput::Target(wanted), run);
        }
    }

    fn feed_controller(
        &mut self,
        now_ms: u64,
        package: &PackageName,
        input: ReleaseInput,
        run: &mut Cascade,
    ) {
        let release = self.release.clone();
        let controller = self
            .controllers
            .entry(package.clone())
            .or_insert_with(|| ReleaseController::new(release));
        let actions = controller.handle(now_ms, input);
        // Each transition is reported once; check the newest ones.
        let reports = actions
            .iter()
            .filter(|a| matches!(a, ReleaseAction::ReportStatus(_)))
            .count();
        let history: Vec<_> = controller.history().collect();
        for record in history.iter().rev().take(reports) {
            let legal = transition(record.from, record.event) == Ok(record.to);
            if !legal || record.at_ms == now_ms {
                run.effects.push(PeerEffect::Fact(Fact::Transition {
                    package: package.to_string(),
                    description: format!(
                        "{} -> {} ({:?}) for {:?}",
                        record.from,
                        record.to,
                        record.event,
                        record.version.as_ref().map(Version::to_string)
                    ),
                    legal,
                }));
            }
        }
        let after = self.work_ms;
        for action in actions {
            let work = match action {
                ReleaseAction::FetchBlob { version } => {
                    MeshWork::BlobFetched(package.clone(), version)
                }
                ReleaseAction::VerifyBlob { version } => {
                    MeshWork::Verified(package.clone(), version)
                }
                ReleaseAction::Deploy { version } => MeshWork::Deployed(package.clone(), version),
                ReleaseAction::RollBack { .. } => MeshWork::RolledBack(package.clone()),
                ReleaseAction::ReportStatus(status) => {
                    let status = PackageStatus {
                        state: status.state,
                        version: status.version,
                        running: status.running,
                        failed_version: status.failed_version,
                        health: status.health,
                        updated_at_ms: now_ms,
                        blobs_held: Vec::new(),
                        known_intent_clock: 0,
                        detail: status.detail,
                    };
                    run.core.push_back(PeerInput::ReportStatus {
                        package: package.clone(),
                        status,
                    });
                    continue;
                }
            };
            run.effects.push(PeerEffect::Schedule {
                after_ms: after,
                work,
            });
        }
    }

    fn work_done(&mut self, now_ms: u64, work: MeshWork, run: &mut Cascade) {
        let (package, input) = match work {
            MeshWork::BlobFetched(package, version) => {
                (package, ReleaseInput::BlobFetched { version })
            }
            MeshWork::Verified(package, version) => (
                package,
                ReleaseInput::Verified {
                    version,
                    outcome: Ok(()),
                },
            ),
            MeshWork::Deployed(package, version) => {
                let fails = self
                    .failing
                    .contains(&(package.to_string(), version.to_string()));
                let outcome = if fails {
                    Err("health check failed (simulated)".to_string())
                } else {
                    Ok(())
                };
                (package, ReleaseInput::Deployed { version, outcome })
            }
            MeshWork::RolledBack(package) => {
                (package, ReleaseInput::RolledBack { outcome: Ok(()) })
            }
            // Handled in `handle`: it ticks the core, not a controller.
            MeshWork::CoreTimer => return,
        };
        self.feed_controller(now_ms, &package, input, run);
    }

    fn command(&mut self, now_ms: u64, command: Command, run: &mut Cascade) {
        let result = match command {
            Command::Publish { package, version } => self.publish(&package, &version, run),
            Command::Release { package, version } => {
                self.submit(now_ms, &package, &version, IntentAction::Deploy, true, run)
            }
            Command::Rollback { package, version } => self.submit(
                now_ms,
                &package,
                &version,
                IntentAction::Rollback,
                true,
                run,
            ),
            Command::ForgeRelease { package, version } => {
                self.submit(now_ms, &package, &version, IntentAction::Deploy, false, run)
            }
            Command::Pause { package } => {
                let current = package.parse::<PackageName>().ok().and_then(|name| {
                    self.core
                        .targets()
                        .get(&name)
                        .map(|t| t.version.to_string())
                });
                match current {
                    Some(version) => {
                        self.submit(now_ms, &package, &version, IntentAction::Pause, true, run)
                    }
                    None => Err(format!("pause of {package}: it has no target here")),
                }
            }
            Command::FailDeploys { package, version } => {
                self.failing.insert((package, version));
                Ok(())
            }
        };
        if let Err(problem) = result {
            run.effects
                .push(PeerEffect::Note(format!("command failed: {problem}")));
        }
    }

    fn publish(&mut self, package: &str, version: &str, run: &mut Cascade) -> Result<(), String> {
        let name: PackageName = package
            .parse()
            .map_err(|e| format!("package {package:?}: {e}"))?;
        let parsed = Version::parse(version).map_err(|e| format!("version {version:?}: {e}"))?;
        let blob = format!("simulated blob of {package}@{version}");
        let manifest = Manifest::for_blob(
            name,
            parsed,
            Vec::new(),
            blob.as_bytes(),
            SIM_ABI_WORLD,
            1,
            Capabilities::default(),
        )
        .map_err(|e| format!("manifest {package}@{version}: {e}"))?;
        let signed = SignedManifest::sign(manifest, &[&self.publisher])
            .map_err(|e| format!("signing {package}@{version}: {e}"))?;
        run.effects.push(PeerEffect::Fact(Fact::Published {
            package: package.to_string(),
            version: version.to_string(),
            trusted: true,
        }));
        run.core.push_back(PeerInput::PublishManifest(signed));
        Ok(())
    }

    fn submit(
        &mut self,
        now_ms: u64,
        package: &str,
        version: &str,
        action: IntentAction,
        trusted: bool,
        run: &mut Cascade,
    ) -> Result<(), String> {
        let name: PackageName = package
            .parse()
            .map_err(|e| format!("package {package:?}: {e}"))?;
        let parsed = Version::parse(version).map_err(|e| format!("version {version:?}: {e}"))?;
        // As `clawmesh release` does: one above the highest clock known here.
        let clock = self
            .core
            .intents()
            .iter()
            .filter(|i| i.intent.package == name)
            .map(|i| i.intent.clock)
            .max()
            .unwrap_or(0)
            + 1;
        let key = if trusted {
            &self.publisher
        } else {
            &self.outsider
        };
        let intent = Intent {
            package: name,
            version: parsed,
            action,
            clock,
            author: key.key_id().clone(),
            issued_at_ms: now_ms,
            rollout_max_parallel_percent: 100,
        };
        let signed = SignedIntent::sign(intent, key)
            .map_err(|e| format!("signing intent for {package}@{version}: {e}"))?;
        run.effects.push(PeerEffect::Fact(Fact::IntentSubmitted {
            id: hex::encode(signed.digest),
            package: package.to_string(),
            version: version.to_string(),
            trusted,
        }));
        run.core.push_back(PeerInput::SubmitIntent(signed));
        Ok(())
    }
}
