//! The route of one package: which worker answers its calls (active), which
//! one waits beside it (standby, for the swap and instant rollback), and a
//! gate that can pause new calls while the two trade places.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::errors::InvokeError;
use super::metrics::SkillMetrics;
use crate::swap::Journal;

/// Bounds on calls that arrive while a route is paused.
#[derive(Debug, Clone, Copy)]
pub struct PauseLimits {
    /// Most calls waiting on a paused route; more are refused.
    pub max_waiting: usize,
    /// Longest a call waits for a paused route to resume.
    pub max_wait: Duration,
}

impl Default for PauseLimits {
    fn default() -> Self {
        Self {
            max_waiting: 10_000,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// Active and standby workers of one package.
#[derive(Debug)]
struct Slots<W> {
    active: Arc<W>,
    standby: Option<Arc<W>>,
}

/// One package's entry in the route table.
#[derive(Debug)]
pub struct Route<W> {
    package: String,
    slots: RwLock<Slots<W>>,
    gate: RouteGate,
    metrics: SkillMetrics,
    /// Calls between [`Route::enter`] and the end of their answer.
    calls: AtomicUsize,
    /// Woken when `calls` drops to zero.
    idle: Notify,
    journal: Journal,
}

/// A call admitted through an open route; the route counts it until dropped
/// so [`Route::drain`] can wait for it.
#[derive(Debug)]
pub struct CallGuard<'a> {
    calls: &'a AtomicUsize,
    idle: &'a Notify,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        leave(self.calls, self.idle);
    }
}

fn leave(calls: &AtomicUsize, idle: &Notify) {
    if calls.fetch_sub(1, Ordering::SeqCst) == 1 {
        idle.notify_waiters();
    }
}

impl<W> Route<W> {
    /// A route serving `active`.
    pub fn new(
        package: String,
        active: Arc<W>,
        limits: PauseLimits,
        metrics: SkillMetrics,
    ) -> Self {
        Self {
            package,
            slots: RwLock::new(Slots {
                active,
                standby: None,
            }),
            gate: RouteGate::new(limits),
            metrics,
            calls: AtomicUsize::new(0),
            idle: Notify::new(),
            journal: Journal::new(),
        }
    }

    /// Calls acknowledged since the package's last checkpoint.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Admits a call: at once when the route is open, after a bounded wait
    /// when it is paused. The call counts as in progress until the guard
    /// is dropped.
    pub async fn enter(&self) -> Result<CallGuard<'_>, InvokeError> {
        loop {
            // Count first, then check the gate (both SeqCst): a pauser that
            // sets the gate and then sees zero calls cannot miss this one.
            self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.gate.paused.load(Ordering::SeqCst) {
                return Ok(CallGuard {
                    calls: &self.calls,
                    idle: &self.idle,
                });
            }
            leave(&self.calls, &self.idle);
            self.gate.wait(&self.package).await?;
        }
    }

    /// Calls admitted and not yet answered.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// After [`Route::pause`]: waits until every admitted call finished;
    /// `false` when some are still running after `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.calls.load(Ordering::SeqCst) == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, idle).await.is_err() {
                return self.calls.load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// The package this route serves.
    pub fn package(&self) -> &str {
        &self.package
    }

    /// Hot-path metric handles.
    pub fn metrics(&self) -> &SkillMetrics {
        &self.metrics
    }

    /// The worker answering calls now.
    pub fn active(&self) -> Arc<W> {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .active
            .clone()
    }

    /// The worker waiting beside it, if any.
    pub fn standby(&self) -> Option<Arc<W>> {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .standby
            .clone()
    }

    /// Puts `worker` in the standby slot, returning the one it replaces.
    pub fn set_standby(&self, worker: Option<Arc<W>>) -> Option<Arc<W>> {
        std::mem::replace(
            &mut self
                .slots
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .standby,
            worker,
        )
    }

    /// Makes `worker` active, returning the previous active worker (the
    /// standby slot is left as it is).
    pub fn replace_active(&self, worker: Arc<W>) -> Arc<W> {
        std::mem::replace(
            &mut self
                .slots
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .active,
            worker,
        )
    }

    /// Swaps active and standby in one step; `false` (and no change) when
    /// there is no standby.
    pub fn flip(&self) -> bool {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let Slots { active, standby } = &mut *slots;
        match standby {
            Some(standby) => {
                std::mem::swap(active, standby);
                true
            }
            None => false,
        }
    }

    /// Holds new calls until [`Route::resume`] (bounded by [`PauseLimits`]).
    pub fn pause(&self) {
        self.gate.set_paused(true);
    }

    /// Releases calls held by [`Route::pause`].
    pub fn resume(&self) {
        self.gate.set_paused(false);
    }

    /// Whether the route is paused.
    pub fn is_paused(&self) -> bool {
        self.gate.paused.load(Ordering::Acquire)
    }

    /// Calls waiting on the paused route right now.
    pub fn waiting(&self) -> usize {
        self.gate.waiting.load(Ordering::Acquire)
    }

    /// Returns at once when the route is open; otherwise waits (bounded) for
    /// it to resume.
    pub async fn wait_open(&self) -> Result<(), InvokeError> {
        if !self.gate.paused.load(Ordering::Acquire) {
            return Ok(());
        }
        self.gate.wait(&self.package).await
    }
}

/// Pause flag with a cheap open check and a bounded wait.
#[derive(Debug)]
struct RouteGate {
    paused: AtomicBool,
    changes: watch::Sender<bool>,
    waiting: AtomicUsize,
    limits: PauseLimits,
}

impl RouteGate {
    fn new(limits: PauseLimits) -> Self {
        Self {
            paused: AtomicBool::new(false),
            changes: watch::Sender::new(false),
            waiting: AtomicUsize::new(0),
            limits,
        }
    }

    fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.changes.send_replace(paused);
    }

    async fn wait(&self, package: &str) -> Result<(), InvokeError> {
        let waiting = WaitingGuard::enter(&self.waiting);
        if waiting.count > self.limits.max_waiting {
            return Err(InvokeError::Paused {
                package: package.to_string(),
                reason: format!("{} calls already wait for it", self.limits.max_waiting),
            });
        }
        let mut changes = self.changes.subscribe();
        match tokio::time::timeout(self.limits.max_wait, changes.wait_for(|paused| !paused)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(InvokeError::Paused {
                package: package.to_string(),
                reason: format!("still paused after {:?}", self.limits.max_wait),
            }),
        }
    }
}

struct WaitingGuard<'a> {
    counter: &'a AtomicUsize,
    count: usize,
}

impl<'a> WaitingGuard<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let count = counter.fetch_add(1, Ordering::AcqRel) + 1;
        Self { counter, count }
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::metrics::RuntimeMetrics;

    fn route(limits: PauseLimits) -> Arc<Route<&'static str>> {
        Arc::new(Route::new(
            "p".into(),
            Arc::new("v1"),
            limits,
            RuntimeMetrics::new().skill("p"),
        ))
    }

    #[test]
    fn flip_swaps_active_and_standby_and_back() {
        let route = route(PauseLimits::default());
        assert!(!route.flip(), "no standby: nothing to flip");
        assert_eq!(*route.active(), "v1");
        route.set_standby(Some(Arc::new("v2")));
        assert!(route.flip());
        assert_eq!(
            (*route.active(), route.standby().map(|s| *s)),
            ("v2", Some("v1"))
        );
        assert!(route.flip());
        assert_eq!(*route.active(), "v1");
    }

    #[tokio::test]
    async fn paused_calls_wait_and_go_on_resume() {
        let route = route(PauseLimits::default());
        route.pause();
        let waiter = {
            let route = route.clone();
            tokio::spawn(async move { route.wait_open().await })
        };
        while route.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        route.resume();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(route.waiting(), 0);
    }

    #[tokio::test]
    async fn drain_waits_for_admitted_calls_and_pause_holds_new_ones() {
        let route = route(PauseLimits::default());
        let guard = route.enter().await.unwrap();
        route.pause();
        assert!(
            !route.drain(Duration::ZERO).await,
            "one call is still running"
        );
        let late = {
            let route = route.clone();
            tokio::spawn(async move { route.enter().await.map(|_| ()) })
        };
        while route.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(guard);
        assert!(route.drain(Duration::from_secs(60)).await);
        assert_eq!(route.calls_in_progress(), 0, "the late call waits outside");
        route.resume();
        assert_eq!(late.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_pause_longer_than_the_wait_bound_refuses_the_call() {
        let route = route(PauseLimits {
            max_waiting: 10,
            max_wait: Duration::from_millis(50),
        });
        route.pause();
        assert!(matches!(
            route.wait_open().await,
            Err(InvokeError::Paused { .. })
        ));
    }

    #[tokio::test]
    async fn more_waiters_than_the_bound_are_refused_at_once() {
        let route = route(PauseLimits {
            max_waiting: 0,
            max_wait: Duration::from_secs(60),
        });
        route.pause();
        assert!(matches!(
            route.wait_open().await,
            Err(InvokeError::Paused { .. })
        ));
    }
}
