//! The per-node, per-package release state machine (from the seed) and the
//! sans-I/O controller that drives it.
//!
//! The seed's edges: Pending → Verifying (blob present) → Ready (sha256 and
//! signature ok) / Failed → Deploying → Active (health check passed) /
//! RollingBack → Active (previous version restored) / Failed. A node that
//! lives through more than one release also needs a way back to Pending; the
//! extra edges are listed on [`ReleaseEvent`] and nowhere else.
//!
//! [`ReleaseController`] owns one package's machine: the node feeds it the
//! target (from arbitration), local facts (blob fetched, verification,
//! deployment and health results) and time, and carries out the actions it
//! returns. Every transition is returned as a [`ReleaseAction::ReportStatus`]
//! so the node can write it to its status in the mesh document.

use std::collections::VecDeque;
use std::fmt;

use semver::Version;

use crate::breaker::{BreakerConfig, CircuitBreaker};

/// Where one package stands on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReleaseState {
    /// A version is wanted; its blob is not (yet) held locally.
    Pending,
    /// The blob is held and is being checked against the signed manifest.
    Verifying,
    /// The blob matches the manifest; waiting to deploy.
    Ready,
    /// Verification failed, or a failed deployment could not be rolled back.
    Failed,
    /// The verified version is being started and health-checked.
    Deploying,
    /// A version is running and passed its health check.
    Active,
    /// A deployment failed; the previous version is being restored.
    RollingBack,
}

impl ReleaseState {
    /// Every state, in declaration order (for exhaustive tests and tables).
    pub const ALL: [ReleaseState; 7] = [
        ReleaseState::Pending,
        ReleaseState::Verifying,
        ReleaseState::Ready,
        ReleaseState::Failed,
        ReleaseState::Deploying,
        ReleaseState::Active,
        ReleaseState::RollingBack,
    ];

    /// The stable name written into status records.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Pending => "pending",
            ReleaseState::Verifying => "verifying",
            ReleaseState::Ready => "ready",
            ReleaseState::Failed => "failed",
            ReleaseState::Deploying => "deploying",
            ReleaseState::Active => "active",
            ReleaseState::RollingBack => "rolling_back",
        }
    }

    /// Parses a name written by [`ReleaseState::as_str`].
    pub fn parse(name: &str) -> Option<ReleaseState> {
        ReleaseState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

impl fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, as the state machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReleaseEvent {
    /// The wanted version's blob is held locally. Pending → Verifying.
    BlobPresent,
    /// sha256 and manifest signature are good. Verifying → Ready.
    VerificationPassed,
    /// sha256 or signature is bad. Verifying → Failed.
    VerificationFailed,
    /// Deployment of the verified version starts. Ready → Deploying.
    DeployStarted,
    /// The new version is up and passed its health check. Deploying → Active.
    HealthPassed,
    /// Start-up or health check of the new version failed. Deploying → RollingBack.
    DeployFailed,
    /// The previously running version serves again. RollingBack → Active.
    PreviousRestored,
    /// The previous version could not be restored (or there was none).
    /// RollingBack → Failed.
    RollbackFailed,
    /// Not in the seed: the package's target moved to another version.
    /// Active → Pending (a new release of a running package), Failed → Pending
    /// (give up on the failed version for the new one), Ready → Pending (the
    /// target changed after verification but before deployment started).
    /// Verifying, Deploying and RollingBack finish first: they hold work in
    /// flight whose result must be recorded.
    TargetChanged,
    /// Not in the seed: the circuit breaker permits another attempt at the
    /// same target after a failure. Failed → Pending, and Active → Pending
    /// when the node runs the previous version after a rolled-back attempt.
    RetryPermitted,
}

impl ReleaseEvent {
    /// Every event, in declaration order (for exhaustive tests).
    pub const ALL: [ReleaseEvent; 10] = [
        ReleaseEvent::BlobPresent,
        ReleaseEvent::VerificationPassed,
        ReleaseEvent::VerificationFailed,
        ReleaseEvent::DeployStarted,
        ReleaseEvent::HealthPassed,
        ReleaseEvent::DeployFailed,
        ReleaseEvent::PreviousRestored,
        ReleaseEvent::RollbackFailed,
        ReleaseEvent::TargetChanged,
        ReleaseEvent::RetryPermitted,
    ];
}

/// An event that has no edge out of the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal release transition: event {event:?} in state {from}")]
pub struct IllegalTransition {
    /// The state the machine was in.
    pub from: ReleaseState,
    /// The event that has no edge out of `from`.
    pub event: ReleaseEvent,
}

/// The only legal edges of the machine; everything else is refused.
pub fn transition(
    from: ReleaseState,
    event: ReleaseEvent,
) -> Result<ReleaseState, IllegalTransition> {
    use ReleaseEvent as E;
    use ReleaseState as S;
    let to = match (from, event) {
        (S::Pending, E::BlobPresent) => S::Verifying,
        (S::Verifying, E::VerificationPassed) => S::Ready,
        (S::Verifying, E::VerificationFailed) => S::Failed,
        (S::Ready, E::DeployStarted) => S::Deploying,
        (S::Deploying, E::HealthPassed) => S::Active,
        (S::Deploying, E::DeployFailed) => S::RollingBack,
        (S::RollingBack, E::PreviousRestored) => S::Active,
        (S::RollingBack, E::RollbackFailed) => S::Failed,
        (S::Active | S::Failed | S::Ready, E::TargetChanged) => S::Pending,
        (S::Failed | S::Active, E::RetryPermitted) => S::Pending,
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok(to)
}

/// Health of the version a node runs, as its last check found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// No check has run (nothing deployed, or the deploy path is absent).
    #[default]
    Unknown,
    /// The last health check passed.
    Healthy,
    /// The last health check failed.
    Unhealthy,
}

impl Health {
    /// The stable name written into status records.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// Parses a name written by [`Health::as_str`].
    pub fn parse(name: &str) -> Option<Health> {
        [Health::Unknown, Health::Healthy, Health::Unhealthy]
            .into_iter()
            .find(|health| health.as_str() == name)
    }
}

/// One package's status on this node, as written to its status record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseStatus {
    /// Current state of the machine.
    pub state: ReleaseState,
    /// The version the state is about: the one being fetched, verified or
    /// deployed, or the one running when Active.
    pub version: Option<Version>,
    /// The version serving requests right now, if any.
    pub running: Option<Version>,
    /// The version whose last attempt failed (verification or deployment),
    /// kept after a successful rollback so mesh-wide quarantine can count it.
    pub failed_version: Option<Version>,
    /// Health of `running`.
    pub health: Health,
    /// Why the machine is where it is, for people (e.g. the failure reason).
    pub detail: String,
}

/// One recorded transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionRecord {
    /// State before.
    pub from: ReleaseState,
    /// State after.
    pub to: ReleaseState,
    /// The event that moved it.
    pub event: ReleaseEvent,
    /// The version the transition concerned.
    pub version: Option<Version>,
    /// Caller's clock when it happened.
    pub at_ms: u64,
}

/// Facts and time the node feeds a [`ReleaseController`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseInput {
    /// The package's target from arbitration. Pass `None` when there is no
    /// target or it is paused: the controller then starts nothing new and
    /// the node keeps what it runs.
    Target(Option<Version>),
    /// The blob of `version` is now held locally.
    BlobFetched {
        /// Version whose blob arrived.
        version: Version,
    },
    /// Result of checking `version`'s blob against its signed manifest.
    Verified {
        /// Version checked.
        version: Version,
        /// `Err(reason)` when the sha256 or signature did not match.
        outcome: Result<(), String>,
    },
    /// Result of deploying `version`, health check included.
    Deployed {
        /// Version deployed.
        version: Version,
        /// `Err(reason)` when start-up or the health check failed.
        outcome: Result<(), String>,
    },
    /// Result of restoring the previous version after a failed deployment.
    RolledBack {
        /// `Err(reason)` when the previous version could not be restored.
        outcome: Result<(), String>,
    },
    /// A periodic health check of the running version.
    HealthChecked {
        /// Whether it passed.
        healthy: bool,
    },
    /// Time passed: retries whose breaker has reset go ahead.
    Tick,
}

/// Work the controller asks the node to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseAction {
    /// Fetch `version`'s blob from peers, then feed [`ReleaseInput::BlobFetched`]
    /// (immediately, if it is held already).
    FetchBlob {
        /// Version to fetch.
        version: Version,
    },
    /// Check the blob against the signed manifest, then feed [`ReleaseInput::Verified`].
    VerifyBlob {
        /// Version to verify.
        version: Version,
    },
    /// Deploy `version` and health-check it, then feed [`ReleaseInput::Deployed`].
    Deploy {
        /// Version to deploy.
        version: Version,
    },
    /// Restore the version that ran before, then feed [`ReleaseInput::RolledBack`].
    RollBack {
        /// The version to restore (`None`: nothing ran before; the node stops
        /// the failed one and reports success or failure of that).
        to: Option<Version>,
    },
    /// Write this status into the node's status record.
    ReportStatus(ReleaseStatus),
}

/// Tuning of a [`ReleaseController`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseControllerConfig {
    /// The deployment circuit breaker guarding attempts.
    pub breaker: BreakerConfig,
    /// When false the controller stops at Ready (the node has no local deploy
    /// path yet) and says so in the status detail.
    pub deploy_enabled: bool,
}

impl Default for ReleaseControllerConfig {
    fn default() -> Self {
        ReleaseControllerConfig {
            breaker: BreakerConfig::default(),
            deploy_enabled: true,
        }
    }
}

/// Bound on the transitions a controller keeps for inspection.
pub const MAX_TRANSITION_HISTORY: usize = 64;

/// Status detail when the deploy path is absent.
pub const DETAIL_DEPLOY_DISABLED: &str = "verified; local deploy path not available on this node";

/// Sans-I/O driver of one package's release state machine on one node.
#[derive(Clone, Debug)]
pub struct ReleaseController {
    config: ReleaseControllerConfig,
    state: ReleaseState,
    /// What arbitration wants running.
    target: Option<Version>,
    /// The version the pipeline (Pending .. RollingBack) works on.
    attempt: Option<Version>,
    /// The version serving requests.
    running: Option<Version>,
    failed_version: Option<Version>,
    health: Health,
    detail: String,
    breaker: CircuitBreaker,
    history: VecDeque<TransitionRecord>,
}

impl ReleaseController {
    /// A controller for a package the node does not run.
    pub fn new(config: ReleaseControllerConfig) -> Self {
        let breaker = CircuitBreaker::new(config.breaker.clone());
        ReleaseController {
            config,
            state: ReleaseState::Pending,
            target: None,
            attempt: None,
            running: None,
            failed_version: None,
            health: Health::Unknown,
            detail: String::new(),
            breaker,
            history: VecDeque::new(),
        }
    }

    /// A controller for a package the node already runs (after a restart).
    pub fn resume_active(config: ReleaseControllerConfig, running: Version) -> Self {
        let mut controller = ReleaseController::new(config);
        controller.state = ReleaseState::Active;
        controller.attempt = Some(running.clone());
        controller.running = Some(running);
        controller
    }

    /// Current state.
    pub fn state(&self) -> ReleaseState {
        self.state
    }

    /// The status as it would be reported now.
    pub fn status(&self) -> ReleaseStatus {
        ReleaseStatus {
            state: self.state,
            version: self.attempt.clone(),
            running: self.running.clone(),
            failed_version: self.failed_version.clone(),
            health: self.health,
            detail: self.detail.clone(),
        }
    }

    /// The most recent transitions, oldest first (at most [`MAX_TRANSITION_HISTORY`]).
    pub fn history(&self) -> impl Iterator<Item = &TransitionRecord> {
        self.history.iter()
    }

    /// Feeds one input; returns the actions to carry out, in order.
    pub fn handle(&mut self, now_ms: u64, input: ReleaseInput) -> Vec<ReleaseAction> {
        let mut actions = Vec::new();
        match input {
            ReleaseInput::Target(target) => self.on_target(target, &mut actions),
            ReleaseInput::BlobFetched { version } => {
                if self.state == ReleaseState::Pending && self.attempt.as_ref() == Some(&version) {
                    self.detail.clear();
                    self.step(now_ms, ReleaseEvent::BlobPresent, &mut actions);
                    actions.push(ReleaseAction::VerifyBlob { version });
                }
            }
            ReleaseInput::Verified { version, outcome } => {
                if self.state == ReleaseState::Verifying && self.attempt.as_ref() == Some(&version)
                {
                    match outcome {
                        Ok(()) => {
                            self.step(now_ms, ReleaseEvent::VerificationPassed, &mut actions);
                        }
                        Err(reason) => {
                            self.failed_version = Some(version);
                            self.detail = format!("verification failed: {reason}");
                            self.breaker.record_failure(now_ms);
                            self.step(now_ms, ReleaseEvent::VerificationFailed, &mut actions);
                        }
                    }
                }
            }
            ReleaseInput::Deployed { version, outcome } => {
                if self.state == ReleaseState::Deploying && self.attempt.as_ref() == Some(&version)
                {
                    match outcome {
                        Ok(()) => {
                            self.breaker.record_success(now_ms);
                            self.running = Some(version);
                            self.health = Health::Healthy;
                            if self.failed_version == self.running {
                                self.failed_version = None;
                            }
                            self.detail.clear();
                            self.step(now_ms, ReleaseEvent::HealthPassed, &mut actions);
                        }
                        Err(reason) => {
                            self.breaker.record_failure(now_ms);
                            self.failed_version = Some(version);
                            self.detail = format!("deployment failed: {reason}");
                            self.step(now_ms, ReleaseEvent::DeployFailed, &mut actions);
                            actions.push(ReleaseAction::RollBack {
                                to: self.running.clone(),
                            });
                        }
                    }
                }
            }
            ReleaseInput::RolledBack { outcome } => {
                if self.state == ReleaseState::RollingBack {
                    match outcome {
                        Ok(()) if self.running.is_some() => {
                            self.attempt = self.running.clone();
                            self.step(now_ms, ReleaseEvent::PreviousRestored, &mut actions);
                        }
                        Ok(()) => {
                            // Nothing ran before: the failed version is stopped and
                            // nothing serves, which is Failed, not Active.
                            self.health = Health::Unknown;
                            self.detail =
                                format!("{}; no previous version to restore", self.detail);
                            self.step(now_ms, ReleaseEvent::RollbackFailed, &mut actions);
                        }
                        Err(reason) => {
                            self.running = None;
                            self.health = Health::Unknown;
                            self.detail = format!("{}; rollback failed: {reason}", self.detail);
                            self.step(now_ms, ReleaseEvent::RollbackFailed, &mut actions);
                        }
                    }
                }
            }
            ReleaseInput::HealthChecked { healthy } => {
                if self.running.is_some() {
                    let health = if healthy {
                        Health::Healthy
                    } else {
                        Health::Unhealthy
                    };
                    if health != self.health {
                        self.health = health;
                        actions.push(ReleaseAction::ReportStatus(self.status()));
                    }
                }
            }
            ReleaseInput::Tick => {}
        }
        self.advance(now_ms, &mut actions);
        actions
    }

    fn on_target(&mut self, target: Option<Version>, actions: &mut Vec<ReleaseAction>) {
        if target == self.target {
            return;
        }
        self.target = target;
        // A new version starts with a fresh breaker: failures of the old one
        // say nothing about it.
        self.breaker = CircuitBreaker::new(self.config.breaker.clone());
        if self.state == ReleaseState::Pending
            && let Some(version) = self.target.clone()
            && self.attempt.as_ref() != Some(&version)
        {
            // Not a transition: Pending simply waits for another blob.
            self.attempt = Some(version.clone());
            self.detail.clear();
            actions.push(ReleaseAction::ReportStatus(self.status()));
            actions.push(ReleaseAction::FetchBlob { version });
        }
    }

    /// Takes the steps that need no new fact: start a release when the target
    /// differs from what the machine works on, deploy when Ready, retry when
    /// the breaker permits.
    fn advance(&mut self, now_ms: u64, actions: &mut Vec<ReleaseAction>) {
        let Some(target) = self.target.clone() else {
            return;
        };
        match self.state {
            ReleaseState::Pending => {
                if self.attempt.is_none() {
                    self.attempt = Some(target.clone());
                    actions.push(ReleaseAction::ReportStatus(self.status()));
                    actions.push(ReleaseAction::FetchBlob { version: target });
                }
            }
            ReleaseState::Ready if self.attempt.as_ref() != Some(&target) => {
                self.start_release(now_ms, ReleaseEvent::TargetChanged, target, actions);
            }
            ReleaseState::Ready => {
                if !self.config.deploy_enabled {
                    if self.detail != DETAIL_DEPLOY_DISABLED {
                        self.detail = DETAIL_DEPLOY_DISABLED.to_string();
                        actions.push(ReleaseAction::ReportStatus(self.status()));
                    }
                } else if self.breaker.try_acquire(now_ms).is_ok() {
                    self.detail.clear();
                    self.step(now_ms, ReleaseEvent::DeployStarted, actions);
                    actions.push(ReleaseAction::Deploy { version: target });
                }
            }
            ReleaseState::Active | ReleaseState::Failed => {
                if self.state == ReleaseState::Active && self.running.as_ref() == Some(&target) {
                    return;
                }
                let same_as_failed = self.failed_version.as_ref() == Some(&target);
                if !same_as_failed {
                    self.start_release(now_ms, ReleaseEvent::TargetChanged, target, actions);
                } else if self.breaker.permits(now_ms) {
                    self.start_release(now_ms, ReleaseEvent::RetryPermitted, target, actions);
                }
            }
            ReleaseState::Verifying | ReleaseState::Deploying | ReleaseState::RollingBack => {}
        }
    }

    fn start_release(
        &mut self,
        now_ms: u64,
        event: ReleaseEvent,
        target: Version,
        actions: &mut Vec<ReleaseAction>,
    ) {
        self.attempt = Some(target.clone());
        self.step(now_ms, event, actions);
        actions.push(ReleaseAction::FetchBlob { version: target });
    }

    /// Applies one event; an illegal one is a bug in this controller, so it
    /// is recorded in the detail rather than silently dropped.
    fn step(&mut self, now_ms: u64, event: ReleaseEvent, actions: &mut Vec<ReleaseAction>) {
        match transition(self.state, event) {
            Ok(to) => {
                let record = TransitionRecord {
                    from: self.state,
                    to,
                    event,
                    version: self.attempt.clone(),
                    at_ms: now_ms,
                };
                self.state = to;
                if self.history.len() == MAX_TRANSITION_HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(record);
                actions.push(ReleaseAction::ReportStatus(self.status()));
            }
            Err(illegal) => {
                tracing::error!(%illegal, "release controller attempted an illegal transition");
                self.detail = illegal.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    /// A breaker that opens on the first failure, so failures do not retry at once.
    fn one_strike() -> ReleaseControllerConfig {
        ReleaseControllerConfig {
            breaker: BreakerConfig {
                failure_threshold: 1,
                reset_timeout_ms: 1_000,
            },
            deploy_enabled: true,
        }
    }

    #[test]
    fn exactly_the_documented_edges_are_legal() {
        use ReleaseEvent as E;
        use ReleaseState as S;
        let legal = [
            (S::Pending, E::BlobPresent, S::Verifying),
            (S::Verifying, E::VerificationPassed, S::Ready),
            (S::Verifying, E::VerificationFailed, S::Failed),
            (S::Ready, E::DeployStarted, S::Deploying),
            (S::Deploying, E::HealthPassed, S::Active),
            (S::Deploying, E::DeployFailed, S::RollingBack),
            (S::RollingBack, E::PreviousRestored, S::Active),
            (S::RollingBack, E::RollbackFailed, S::Failed),
            (S::Active, E::TargetChanged, S::Pending),
            (S::Failed, E::TargetChanged, S::Pending),
            (S::Ready, E::TargetChanged, S::Pending),
            (S::Failed, E::RetryPermitted, S::Pending),
            (S::Active, E::RetryPermitted, S::Pending),
        ];
        let mut legal_count = 0;
        for from in ReleaseState::ALL {
            for event in ReleaseEvent::ALL {
                let expected = legal
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                match (transition(from, event), expected) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{from:?} + {event:?}");
                        legal_count += 1;
                    }
                    (Err(err), None) => assert_eq!(err, IllegalTransition { from, event }),
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal_count, legal.len());
    }

    #[test]
    fn state_and_health_names_round_trip() {
        for state in ReleaseState::ALL {
            assert_eq!(ReleaseState::parse(state.as_str()), Some(state));
        }
        for health in [Health::Unknown, Health::Healthy, Health::Unhealthy] {
            assert_eq!(Health::parse(health.as_str()), Some(health));
        }
        assert_eq!(ReleaseState::parse("Active"), None);
    }

    fn states(actions: &[ReleaseAction]) -> Vec<ReleaseState> {
        actions
            .iter()
            .filter_map(|action| match action {
                ReleaseAction::ReportStatus(status) => Some(status.state),
                _ => None,
            })
            .collect()
    }

    fn work(actions: &[ReleaseAction]) -> Vec<ReleaseAction> {
        actions
            .iter()
            .filter(|action| !matches!(action, ReleaseAction::ReportStatus(_)))
            .cloned()
            .collect()
    }

    /// Drives a controller through a successful release of `version`.
    fn release(controller: &mut ReleaseController, now: u64, version: &Version) {
        let actions = controller.handle(now, ReleaseInput::Target(Some(version.clone())));
        assert!(work(&actions).contains(&ReleaseAction::FetchBlob {
            version: version.clone()
        }));
        let actions = controller.handle(
            now,
            ReleaseInput::BlobFetched {
                version: version.clone(),
            },
        );
        assert_eq!(
            work(&actions),
            vec![ReleaseAction::VerifyBlob {
                version: version.clone()
            }]
        );
        let actions = controller.handle(
            now,
            ReleaseInput::Verified {
                version: version.clone(),
                outcome: Ok(()),
            },
        );
        assert_eq!(
            states(&actions),
            vec![ReleaseState::Ready, ReleaseState::Deploying]
        );
        assert_eq!(
            work(&actions),
            vec![ReleaseAction::Deploy {
                version: version.clone()
            }]
        );
        let actions = controller.handle(
            now,
            ReleaseInput::Deployed {
                version: version.clone(),
                outcome: Ok(()),
            },
        );
        assert_eq!(states(&actions), vec![ReleaseState::Active]);
        assert_eq!(controller.status().running.as_ref(), Some(version));
    }

    #[test]
    fn first_release_walks_pending_to_active() {
        let mut controller = ReleaseController::new(ReleaseControllerConfig::default());
        release(&mut controller, 0, &v("1.0.0"));
        let events: Vec<ReleaseEvent> = controller.history().map(|r| r.event).collect();
        assert_eq!(
            events,
            vec![
                ReleaseEvent::BlobPresent,
                ReleaseEvent::VerificationPassed,
                ReleaseEvent::DeployStarted,
                ReleaseEvent::HealthPassed
            ]
        );
        assert_eq!(controller.status().health, Health::Healthy);
    }

    #[test]
    fn new_target_on_active_starts_a_new_release() {
        let mut controller = ReleaseController::new(ReleaseControllerConfig::default());
        release(&mut controller, 0, &v("1.0.0"));
        release(&mut controller, 10, &v("1.1.0"));
        let last = controller.history().nth(4).unwrap();
        assert_eq!(
            (last.from, last.event, last.to),
            (
                ReleaseState::Active,
                ReleaseEvent::TargetChanged,
                ReleaseState::Pending
            )
        );
    }

    #[test]
    fn failed_deploy_rolls_back_to_previous_and_retries_after_breaker_reset() {
        let config = ReleaseControllerConfig {
            breaker: BreakerConfig {
                failure_threshold: 1,
                reset_timeout_ms: 1_000,
            },
            deploy_enabled: true,
        };
        let mut controller = ReleaseController::new(config);
        release(&mut controller, 0, &v("1.0.0"));
        let new = v("2.0.0");
        controller.handle(0, ReleaseInput::Target(Some(new.clone())));
        controller.handle(
            0,
            ReleaseInput::BlobFetched {
                version: new.clone(),
            },
        );
        controller.handle(
            0,
            ReleaseInput::Verified {
                version: new.clone(),
                outcome: Ok(()),
            },
        );
        let actions = controller.handle(
            5,
            ReleaseInput::Deployed {
                version: new.clone(),
                outcome: Err("health check timed out".into()),
            },
        );
        assert_eq!(states(&actions), vec![ReleaseState::RollingBack]);
        assert_eq!(
            work(&actions),
            vec![ReleaseAction::RollBack {
                to: Some(v("1.0.0"))
            }]
        );
        let actions = controller.handle(6, ReleaseInput::RolledBack { outcome: Ok(()) });
        assert_eq!(states(&actions), vec![ReleaseState::Active]);
        let status = controller.status();
        assert_eq!(status.running, Some(v("1.0.0")));
        assert_eq!(status.failed_version, Some(new.clone()));
        // Breaker open: no retry before the reset timeout.
        assert!(controller.handle(500, ReleaseInput::Tick).is_empty());
        let actions = controller.handle(1_005, ReleaseInput::Tick);
        assert_eq!(states(&actions), vec![ReleaseState::Pending]);
        assert_eq!(
            work(&actions),
            vec![ReleaseAction::FetchBlob {
                version: new.clone()
            }]
        );
        assert_eq!(
            controller.history().last().unwrap().event,
            ReleaseEvent::RetryPermitted
        );
    }

    #[test]
    fn failed_rollback_ends_failed() {
        let mut controller = ReleaseController::new(one_strike());
        release(&mut controller, 0, &v("1.0.0"));
        let new = v("2.0.0");
        controller.handle(0, ReleaseInput::Target(Some(new.clone())));
        controller.handle(
            0,
            ReleaseInput::BlobFetched {
                version: new.clone(),
            },
        );
        controller.handle(
            0,
            ReleaseInput::Verified {
                version: new.clone(),
                outcome: Ok(()),
            },
        );
        controller.handle(
            0,
            ReleaseInput::Deployed {
                version: new.clone(),
                outcome: Err("trap".into()),
            },
        );
        let actions = controller.handle(
            0,
            ReleaseInput::RolledBack {
                outcome: Err("worker gone".into()),
            },
        );
        assert_eq!(states(&actions), vec![ReleaseState::Failed]);
        assert_eq!(controller.status().running, None);
        assert!(controller.status().detail.contains("worker gone"));
    }

    #[test]
    fn bad_blob_fails_and_a_new_target_leaves_failed() {
        let config = ReleaseControllerConfig {
            breaker: BreakerConfig {
                failure_threshold: 1,
                reset_timeout_ms: 1_000,
            },
            deploy_enabled: true,
        };
        let mut controller = ReleaseController::new(config);
        let bad = v("1.0.0");
        controller.handle(0, ReleaseInput::Target(Some(bad.clone())));
        controller.handle(
            0,
            ReleaseInput::BlobFetched {
                version: bad.clone(),
            },
        );
        let actions = controller.handle(
            0,
            ReleaseInput::Verified {
                version: bad.clone(),
                outcome: Err("sha256 mismatch".into()),
            },
        );
        assert_eq!(states(&actions), vec![ReleaseState::Failed]);
        assert_eq!(controller.status().failed_version, Some(bad));
        let actions = controller.handle(1, ReleaseInput::Target(Some(v("1.0.1"))));
        assert_eq!(states(&actions), vec![ReleaseState::Pending]);
        assert_eq!(
            controller.history().last().unwrap().event,
            ReleaseEvent::TargetChanged
        );
    }

    #[test]
    fn failures_below_the_threshold_retry_at_once() {
        let mut controller = ReleaseController::new(ReleaseControllerConfig::default());
        let bad = v("1.0.0");
        controller.handle(0, ReleaseInput::Target(Some(bad.clone())));
        controller.handle(
            0,
            ReleaseInput::BlobFetched {
                version: bad.clone(),
            },
        );
        let actions = controller.handle(
            0,
            ReleaseInput::Verified {
                version: bad.clone(),
                outcome: Err("bad signature".into()),
            },
        );
        assert_eq!(
            states(&actions),
            vec![ReleaseState::Failed, ReleaseState::Pending]
        );
        assert_eq!(
            work(&actions),
            vec![ReleaseAction::FetchBlob { version: bad }]
        );
    }

    #[test]
    fn stale_facts_are_ignored() {
        let mut controller = ReleaseController::new(ReleaseControllerConfig::default());
        controller.handle(0, ReleaseInput::Target(Some(v("1.0.0"))));
        assert!(
            controller
                .handle(
                    0,
                    ReleaseInput::BlobFetched {
                        version: v("0.9.0")
                    }
                )
                .is_empty()
        );
        assert!(
            controller
                .handle(
                    0,
                    ReleaseInput::Deployed {
                        version: v("1.0.0"),
                        outcome: Ok(())
                    }
                )
                .is_empty()
        );
        assert_eq!(controller.state(), ReleaseState::Pending);
    }

    #[test]
    fn target_change_while_pending_refetches_without_a_transition() {
        let mut controller = ReleaseController::new(ReleaseControllerConfig::default());
        controller.handle(0, ReleaseInput::Target(Some(v("1.0.0"))));
        let actions = controller.handle(0, ReleaseInput::Target(Some(v("1.1.0"))));
        assert_eq!(
            work(&actions),
            vec![ReleaseAction::FetchBlob {
                version: v("1.1.0")
            }]
        );
        assert_eq!(controller.history().count(), 0);
    }

    #[test]
    fn target_change_after_verification_returns_ready_to_pending() {
        let config = ReleaseControllerConfig {
            deploy_enabled: false,
            ..ReleaseControllerConfig::default()
        };
        let mut controller = ReleaseController::new(config);
        controller.handle(0, ReleaseInput::Target(Some(v("1.0.0"))));
        controller.handle(
            0,
            ReleaseInput::BlobFetched {
                version: v("1.0.0"),
            },
        );
        controller.handle(
            0,
            ReleaseInput::Verified {
                version: v("1.0.0"),
                outcome: Ok(()),
            },
        );
        assert_eq!(controller.state(), ReleaseState::Ready);
        assert_eq!(controller.status().detail, DETAIL_DEPLOY_DISABLED);
        let actions = controller.handle(1, ReleaseInput::Target(Some(v("2.0.0"))));
        assert_eq!(states(&actions), vec![ReleaseState::Pending]);
        assert_eq!(
            work(&actions),
            vec![ReleaseAction::FetchBlob {
                version: v("2.0.0")
            }]
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut controller = ReleaseController::new(ReleaseControllerConfig::default());
        for minor in 0..40 {
            release(&mut controller, minor, &Version::new(1, minor, 0));
        }
        assert_eq!(controller.history().count(), MAX_TRANSITION_HISTORY);
    }

    #[test]
    fn resumed_controller_is_idle_at_its_running_target() {
        let mut controller =
            ReleaseController::resume_active(ReleaseControllerConfig::default(), v("3.0.0"));
        assert!(
            controller
                .handle(0, ReleaseInput::Target(Some(v("3.0.0"))))
                .is_empty()
        );
        assert_eq!(controller.state(), ReleaseState::Active);
    }
}
