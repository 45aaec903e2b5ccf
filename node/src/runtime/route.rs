//! The route of one package: which worker answers its calls (active), which
//! one waits beside it (standby, for the swap and instant rollback), and a
//! gate that can pause new calls while the two trade places.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, SemaphorePermit, watch};

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

/// Calls a route lets run at its worker at once, by default.
pub const DEFAULT_ROUTE_WINDOW: usize = 32;

/// Largest window a route accepts (the connection's own in-flight bound).
pub const MAX_ROUTE_WINDOW: usize = super::connection::DEFAULT_MAX_IN_FLIGHT;

/// The in-flight window of a route: at most `calls` admitted calls are at
/// the worker at once; the others wait in the route's queue, where a pause
/// holds them and from where, after a flip, they go to the new worker. A
/// pause therefore drains at most `calls` calls.
#[derive(Debug, Clone, Copy)]
pub struct WindowLimits {
    /// Calls in flight at the worker at once, `1..=MAX_ROUTE_WINDOW`
    /// (clamped into that range).
    pub calls: usize,
    /// Most calls waiting in the queue for a place in the window; more are
    /// refused as `overloaded`.
    pub max_queued: usize,
    /// Longest a call waits in the queue for a place, then `overloaded`.
    pub queue_wait: Duration,
}

impl Default for WindowLimits {
    fn default() -> Self {
        Self {
            calls: DEFAULT_ROUTE_WINDOW,
            max_queued: 10_000,
            queue_wait: Duration::from_secs(5),
        }
    }
}

/// Overrides the window's size (`WindowLimits::calls`) from the node's
/// environment.
pub const ROUTE_WINDOW_ENV: &str = "CLAWMESH_ROUTE_WINDOW";

impl WindowLimits {
    /// The defaults, with the size from [`ROUTE_WINDOW_ENV`] when it is set
    /// to a number (clamped like any size).
    pub fn from_env() -> Self {
        let mut limits = Self::default();
        if let Some(calls) = std::env::var(ROUTE_WINDOW_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            limits.calls = calls.clamp(1, MAX_ROUTE_WINDOW);
        }
        limits
    }

    /// The window's size, within `1..=MAX_ROUTE_WINDOW`.
    pub fn size(&self) -> usize {
        self.calls.clamp(1, MAX_ROUTE_WINDOW)
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
    /// Admitted calls whose request is not yet queued on the worker's
    /// connection (see [`CallGuard::sent`]).
    unsent: AtomicUsize,
    /// Woken when `unsent` drops to zero.
    all_sent: Notify,
    /// Most calls admitted at once: the window's size, or less while the
    /// window is narrowed ([`Route::narrow`]).
    limit: AtomicUsize,
    /// While narrowed: one call waiting for room is woken per call that ends.
    room: Notify,
    /// While narrowed: woken when the calls in progress fit the limit.
    narrowed: Notify,
    /// Calls waiting for room in the narrowed window.
    waiting_room: AtomicUsize,
    /// Places in the in-flight window; an admitted call holds one.
    window: Semaphore,
    window_limits: WindowLimits,
    /// Calls waiting for a place in the window.
    queued: AtomicUsize,
    log: Arc<RouteLog>,
}

/// What the route's connections log into: the journal, and the calls
/// whose callers gave up before the answer (still journaled when it
/// comes; [`Route::drain`] waits for them too).
#[derive(Debug, Default)]
struct RouteLog {
    journal: Journal,
    orphans: AtomicUsize,
    settled: Notify,
}

impl super::connection::CallLog for RouteLog {
    fn ran_ok(&self, op: String, input: axum::body::Bytes) {
        self.journal.record(op, input);
    }

    fn orphaned(&self) {
        self.orphans.fetch_add(1, Ordering::SeqCst);
    }

    fn orphan_settled(&self) {
        leave(&self.orphans, &self.settled);
    }
}

/// A call admitted through an open route; the route counts it until dropped
/// so [`Route::drain`] can wait for it, and until [`CallGuard::sent`] so
/// [`Route::wait_sent`] can.
#[derive(Debug)]
pub struct CallGuard<'a, W> {
    route: &'a Route<W>,
    /// Whether the call still counts in `unsent`.
    sending: AtomicBool,
    /// Its place in the window, given back after the call left `calls`.
    _place: SemaphorePermit<'a>,
}

impl<W> CallGuard<'_, W> {
    /// The call's request is queued on the worker's connection: a request
    /// queued after this one reaches the worker after it (the connection
    /// writes in queue order and the worker runs frames in arrival order).
    /// Idempotent; dropping the guard counts as sent too.
    pub fn sent(&self) {
        if self.sending.swap(false, Ordering::SeqCst) {
            leave(&self.route.unsent, &self.route.all_sent);
        }
    }
}

impl<W> Drop for CallGuard<'_, W> {
    fn drop(&mut self) {
        self.sent();
        self.route.call_ended();
    }
}

/// Takes one from `count`, waking `zero`'s waiters when it reaches zero.
fn leave(count: &AtomicUsize, zero: &Notify) {
    if count.fetch_sub(1, Ordering::SeqCst) == 1 {
        zero.notify_waiters();
    }
}

impl<W> Route<W> {
    /// A route serving `active`.
    pub fn new(
        package: String,
        active: Arc<W>,
        limits: PauseLimits,
        window: WindowLimits,
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
            unsent: AtomicUsize::new(0),
            all_sent: Notify::new(),
            limit: AtomicUsize::new(window.size()),
            room: Notify::new(),
            narrowed: Notify::new(),
            waiting_room: AtomicUsize::new(0),
            window: Semaphore::new(window.size()),
            window_limits: window,
            queued: AtomicUsize::new(0),
            log: Arc::default(),
        }
    }

    /// Calls acknowledged since the package's last checkpoint.
    pub fn journal(&self) -> &Journal {
        &self.log.journal
    }

    /// The journal, for a connection to record the calls it runs
    /// (see [`super::connection::CallLog`]).
    pub fn call_log(&self) -> Arc<dyn super::connection::CallLog> {
        self.log.clone()
    }

    /// Admits a call: at once when the route is open and the window has a
    /// place, after a bounded wait in the route's queue otherwise (for a
    /// place, and for a paused route to resume). The call counts as in
    /// progress, and keeps its place, until the guard is dropped.
    ///
    /// A call that meets a paused route (or a narrowed window without room)
    /// waits keeping its place, so the calls queued behind it sleep: no call
    /// wakes only to find the route paused and hand its place on.
    pub async fn enter(&self) -> Result<CallGuard<'_, W>, InvokeError> {
        let place = self.place().await?;
        loop {
            // Count first, then check the gate and the limit (all SeqCst): a
            // pauser that sets the gate and then sees zero calls (or zero
            // unsent ones) cannot miss this one.
            let before = self.calls.fetch_add(1, Ordering::SeqCst);
            self.unsent.fetch_add(1, Ordering::SeqCst);
            let paused = self.gate.paused.load(Ordering::SeqCst);
            if !paused && before < self.limit.load(Ordering::SeqCst) {
                return Ok(CallGuard {
                    route: self,
                    sending: AtomicBool::new(true),
                    _place: place,
                });
            }
            // Not admitted: no call ended, so no room to pass on.
            leave(&self.unsent, &self.all_sent);
            leave(&self.calls, &self.idle);
            if paused {
                self.gate.wait(&self.package).await?;
            } else {
                self.wait_room().await?;
            }
        }
    }

    /// A call ended: counts it out, and while the window is narrowed wakes
    /// one call waiting for room (and the narrower once the calls fit).
    fn call_ended(&self) {
        let before = self.calls.fetch_sub(1, Ordering::SeqCst);
        if before == 1 {
            self.idle.notify_waiters();
        }
        let limit = self.limit.load(Ordering::SeqCst);
        if limit < self.window_limits.size() {
            self.room.notify_one();
            if before - 1 <= limit {
                self.narrowed.notify_waiters();
            }
        }
    }

    /// Waits (bounded by the pause limits) for room in a narrowed window.
    async fn wait_room(&self) -> Result<(), InvokeError> {
        let room = self.room.notified();
        tokio::pin!(room);
        // Registered before the check: a call ending after it wakes a waiter.
        room.as_mut().enable();
        if self.calls.load(Ordering::SeqCst) < self.limit.load(Ordering::SeqCst) {
            return Ok(());
        }
        let limits = self.gate.limits;
        let _waiting = WaitingGuard::enter(&self.waiting_room);
        tokio::time::timeout(limits.max_wait, room)
            .await
            .map_err(|_| InvokeError::Paused {
                package: self.package.clone(),
                reason: format!("window still narrowed after {:?}", limits.max_wait),
            })
    }

    /// Lets at most `calls` (at least 1) admitted calls be at the worker
    /// until [`Route::resume`]: the calls beyond wait in the queue as for a
    /// full window. A swap narrows the window before it pauses, so the
    /// pause waits for only that many calls while the worker keeps serving.
    pub fn narrow(&self, calls: usize) {
        let calls = calls.clamp(1, self.window_limits.size());
        self.limit.store(calls, Ordering::SeqCst);
    }

    /// After [`Route::narrow`]: waits until the calls in progress fit the
    /// narrowed window; `false` if they do not by `deadline`.
    pub async fn wait_narrowed(&self, deadline: Instant) -> bool {
        loop {
            let fits = self.narrowed.notified();
            tokio::pin!(fits);
            fits.as_mut().enable();
            if self.calls.load(Ordering::SeqCst) <= self.limit.load(Ordering::SeqCst) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, fits).await.is_err() {
                return self.calls.load(Ordering::SeqCst) <= self.limit.load(Ordering::SeqCst);
            }
        }
    }

    /// Calls holding a place but waiting for room in the narrowed window.
    pub fn waiting_room(&self) -> usize {
        self.waiting_room.load(Ordering::Acquire)
    }

    /// The most calls admitted at once now (the window's size unless
    /// narrowed).
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    /// A place in the in-flight window, waiting (bounded) in the queue.
    async fn place(&self) -> Result<SemaphorePermit<'_>, InvokeError> {
        if let Ok(place) = self.window.try_acquire() {
            return Ok(place);
        }
        let limits = self.window_limits;
        let overloaded = || InvokeError::Overloaded {
            package: self.package.clone(),
            max_in_flight: limits.size(),
        };
        let queued = WaitingGuard::enter(&self.queued);
        if queued.count > limits.max_queued {
            return Err(overloaded());
        }
        match tokio::time::timeout(limits.queue_wait, self.window.acquire()).await {
            Ok(Ok(place)) => Ok(place),
            Ok(Err(_)) | Err(_) => Err(overloaded()),
        }
    }

    /// Calls waiting in the queue for a place in the window.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The in-flight window's size.
    pub fn window(&self) -> usize {
        self.window_limits.size()
    }

    /// Calls admitted and not yet answered.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// What a drain that timed out still waited for, in words.
    pub fn unfinished(&self) -> String {
        format!(
            "{} calls still running, {} calls whose callers gave up still unanswered",
            self.calls.load(Ordering::SeqCst),
            self.log.orphans.load(Ordering::SeqCst)
        )
    }

    /// After [`Route::pause`]: waits until every admitted call finished
    /// and every call whose caller gave up was answered (so the journal
    /// holds all the worker ran); `false` when some are still running
    /// after `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        wait_zero(&self.calls, &self.idle, deadline).await
            && wait_zero(&self.log.orphans, &self.log.settled, deadline).await
    }

    /// After [`Route::pause`]: waits until the request of every admitted
    /// call is queued on its worker's connection (or the call ended), so a
    /// control request queued next reaches the worker after all of them;
    /// `false` when some are not queued by `deadline`. Usually immediate:
    /// a call is between its admission and its send for microseconds.
    pub async fn wait_sent(&self, deadline: Instant) -> bool {
        wait_zero(&self.unsent, &self.all_sent, deadline).await
    }

    /// Admitted calls whose request is not yet queued on the connection.
    pub fn calls_unsent(&self) -> usize {
        self.unsent.load(Ordering::SeqCst)
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

    /// Releases calls held by [`Route::pause`], and widens a narrowed
    /// window back to its size.
    pub fn resume(&self) {
        self.limit
            .store(self.window_limits.size(), Ordering::SeqCst);
        self.room.notify_waiters();
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

/// Waits until `count` is zero (`zero` is notified when it drops to zero);
/// `false` if it is not by `deadline`.
async fn wait_zero(count: &AtomicUsize, zero: &Notify, deadline: Instant) -> bool {
    loop {
        let notified = zero.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if count.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
            return count.load(Ordering::SeqCst) == 0;
        }
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
        route_with(limits, WindowLimits::default())
    }

    fn route_with(limits: PauseLimits, window: WindowLimits) -> Arc<Route<&'static str>> {
        Arc::new(Route::new(
            "p".into(),
            Arc::new("v1"),
            limits,
            window,
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
    async fn drain_waits_for_the_answers_of_calls_whose_callers_gave_up() {
        let route = route(PauseLimits::default());
        let log = route.call_log();
        log.orphaned();
        route.pause();
        assert!(
            !route.drain(Duration::ZERO).await,
            "an orphan's answer, still to be journaled, is outstanding"
        );
        let drained = {
            let route = route.clone();
            tokio::spawn(async move { route.drain(Duration::from_secs(60)).await })
        };
        log.ran_ok("set".into(), axum::body::Bytes::from_static(b"k=1"));
        log.orphan_settled();
        assert!(drained.await.unwrap());
        assert_eq!(route.journal().len(), 1);
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

    #[tokio::test]
    async fn the_window_bounds_admitted_calls_and_a_pause_drains_only_those() {
        let window = WindowLimits {
            calls: 2,
            ..WindowLimits::default()
        };
        let route = route_with(PauseLimits::default(), window);
        let first = route.enter().await.unwrap();
        let second = route.enter().await.unwrap();
        let third = {
            let route = route.clone();
            tokio::spawn(async move { route.enter().await.map(|_| ()) })
        };
        while route.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            route.calls_in_progress(),
            2,
            "the third call waits in the queue"
        );
        route.pause();
        drop(first);
        drop(second);
        // The drain waits for the two admitted calls only; the queued one,
        // given a place, meets the pause and is held at the gate.
        assert!(route.drain(Duration::from_secs(60)).await);
        while route.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(route.calls_in_progress(), 0);
        route.resume();
        assert_eq!(third.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_full_window_refuses_calls_past_the_queue_bound() {
        let window = WindowLimits {
            calls: 1,
            max_queued: 0,
            queue_wait: Duration::from_secs(60),
        };
        let route = route_with(PauseLimits::default(), window);
        let _held = route.enter().await.unwrap();
        assert!(matches!(
            route.enter().await,
            Err(InvokeError::Overloaded {
                max_in_flight: 1,
                ..
            })
        ));
        assert_eq!(route.queued(), 0);
    }

    #[tokio::test]
    async fn wait_sent_waits_until_every_admitted_call_is_queued() {
        let route = route(PauseLimits::default());
        let first = route.enter().await.unwrap();
        let second = route.enter().await.unwrap();
        route.pause();
        assert!(!route.wait_sent(Instant::now()).await, "two calls unsent");
        first.sent();
        first.sent();
        assert_eq!(route.calls_unsent(), 1, "sent() counts once");
        drop(second);
        assert!(route.wait_sent(Instant::now()).await);
        assert_eq!(route.calls_in_progress(), 1, "sent, still running");
        drop(first);
        assert!(route.drain(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_narrowed_window_admits_only_its_calls_until_resume() {
        let window = WindowLimits {
            calls: 4,
            ..WindowLimits::default()
        };
        let route = route_with(PauseLimits::default(), window);
        let mut held: Vec<_> = Vec::new();
        for _ in 0..3 {
            held.push(route.enter().await.unwrap());
        }
        route.narrow(1);
        assert_eq!(route.limit(), 1);
        assert!(!route.wait_narrowed(Instant::now()).await, "3 calls > 1");
        let (admitted, mut admitted_rx) = tokio::sync::mpsc::channel(4);
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let late = |route: Arc<Route<&'static str>>| {
            let (admitted, mut release_rx) = (admitted.clone(), release_rx.clone());
            tokio::spawn(async move {
                // The call holds its place until released.
                let call = route.enter().await;
                admitted.send(()).await.unwrap();
                let _ = release_rx.wait_for(|go| *go).await;
                call.map(|_| ())
            })
        };
        let fourth = late(route.clone());
        while route.waiting_room() == 0 {
            tokio::task::yield_now().await;
        }
        held.truncate(1);
        assert!(route.wait_narrowed(Instant::now()).await, "1 call fits");
        // Woken by the calls that ended (this test's runtime has one
        // thread: the woken task runs before this one resumes), the fourth
        // found no room and waits again.
        tokio::task::yield_now().await;
        assert_eq!(route.waiting_room(), 1);
        assert!(
            admitted_rx.try_recv().is_err(),
            "no room for the fourth yet"
        );
        held.clear();
        admitted_rx.recv().await.unwrap();
        // The fourth holds the only place of the narrowed window.
        let fifth = late(route.clone());
        while route.waiting_room() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(admitted_rx.try_recv().is_err());
        route.resume();
        assert_eq!(route.limit(), 4, "resume widens the window");
        admitted_rx.recv().await.unwrap();
        release.send_replace(true);
        assert_eq!(fourth.await.unwrap(), Ok(()));
        assert_eq!(fifth.await.unwrap(), Ok(()));
        assert_eq!(route.calls_in_progress(), 0);
    }

    #[tokio::test]
    async fn a_call_held_by_a_pause_keeps_its_place_and_the_queue_sleeps() {
        let window = WindowLimits {
            calls: 1,
            ..WindowLimits::default()
        };
        let route = route_with(PauseLimits::default(), window);
        let first = route.enter().await.unwrap();
        route.pause();
        let spawn = |route: Arc<Route<&'static str>>| {
            tokio::spawn(async move { route.enter().await.map(|_| ()) })
        };
        let second = spawn(route.clone());
        while route.queued() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        // The second gets the place and waits at the gate with it.
        while route.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let third = spawn(route.clone());
        while route.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!((route.waiting(), route.queued()), (1, 1));
        assert!(route.drain(Duration::ZERO).await);
        route.resume();
        assert_eq!(second.await.unwrap(), Ok(()));
        assert_eq!(third.await.unwrap(), Ok(()));
    }

    #[test]
    fn the_window_size_is_clamped_to_its_bounds() {
        let size = |calls| {
            WindowLimits {
                calls,
                ..WindowLimits::default()
            }
            .size()
        };
        assert_eq!(
            (size(0), size(16), size(usize::MAX)),
            (1, 16, MAX_ROUTE_WINDOW)
        );
    }
}
