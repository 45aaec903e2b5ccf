//! Waiting for a generation another process has yet to publish, asleep.
//!
//! A restore may be sent before the snapshot it restores is published (the
//! node pipelines both, docs/SWAP.md). The waiter sleeps on a process-shared
//! futex whose word is the low 32 bits of the segment's generation, so it
//! takes no CPU from the writer it waits for, and the writer wakes it right
//! after it bumps the generation.
//!
//! Protocol:
//! - Waiter: load the generation; if it is short of the target, add 1 to
//!   the header's waiters word (SeqCst), then loop: load the generation
//!   (SeqCst), done if it reached the target; else `FUTEX_WAIT` on its low
//!   32 bits with the time left. The kernel compares the word with that
//!   value atomically with queueing the thread, so a publish between the
//!   load and the sleep makes the sleep return at once (`EAGAIN`). Wake-ups
//!   of any kind (spurious, `EINTR`, timeout) just go round the loop, which
//!   ends at the deadline. Then subtract 1 from the waiters word.
//! - Writer (`publish`/`commit`): after the generation's compare-and-swap
//!   (SeqCst), load the waiters word (SeqCst); only when it is non-zero,
//!   `FUTEX_WAKE` everyone. The common publish with no one waiting makes no
//!   system call.
//!
//! Why no wake-up is lost: both sides order their store before their load
//! (SeqCst), so either the writer sees the waiter's count (and wakes it,
//! after the generation changed: a waiter not yet asleep then finds the
//! word changed) or the waiter's generation load sees the new generation.
//!
//! A misbehaving process can at worst make a waiter wait its full bound
//! (not waking it, or moving the generation without reaching the target),
//! or make writers issue a needless wake-up (a wrong waiters count); the
//! count wraps instead of overflowing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::mapping::Word;
use crate::segment::StateSegment;

/// The longest sleep when the futex cannot be used (the kernel refused the
/// call): the wait then polls at this period until its deadline.
pub const FALLBACK_POLL: Duration = Duration::from_micros(20);

/// A generation was not published in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("generation {target} not published within {waited:?} (segment at {generation})")]
pub struct WaitTimedOut {
    /// The generation waited for.
    pub target: u64,
    /// The generation at the deadline.
    pub generation: u64,
    /// How long the wait lasted.
    pub waited: Duration,
}

impl StateSegment {
    /// Waits until the generation is at least `target`, asleep (no polling)
    /// for at most `timeout`; returns the generation reached. A publish by
    /// any process or mapping of this segment wakes it, including the
    /// marker a node publishes into a segment it replaced by a bigger one
    /// (the caller then reads what was published and learns why).
    pub fn wait_for_generation(&self, target: u64, timeout: Duration) -> Result<u64, WaitTimedOut> {
        let generation = self.generation();
        if generation >= target {
            return Ok(generation);
        }
        let start = Instant::now();
        let waiters = self.map.word(Word::Waiters);
        waiters.fetch_add(1, Ordering::SeqCst);
        let result = self.sleep_until(target, start, timeout);
        waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn sleep_until(
        &self,
        target: u64,
        start: Instant,
        timeout: Duration,
    ) -> Result<u64, WaitTimedOut> {
        let word = self.map.word(Word::Generation);
        loop {
            let generation = word.load(Ordering::SeqCst);
            if generation >= target {
                return Ok(generation);
            }
            let waited = start.elapsed();
            let Some(left) = timeout.checked_sub(waited).filter(|left| !left.is_zero()) else {
                return Err(WaitTimedOut {
                    target,
                    generation,
                    waited,
                });
            };
            // The low half is the futex word (truncation intended).
            match self.map.futex_wait(generation as u32, left) {
                Ok(()) | Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(Errno::ETIMEDOUT) => {
                    #[cfg(test)]
                    tests::SLEEPS_TIMED_OUT.with(|count| count.set(count.get() + 1));
                }
                // The kernel refused the futex (seccomp, an exotic
                // kernel): poll instead, still bounded by the deadline.
                Err(_) => std::thread::sleep(left.min(FALLBACK_POLL)),
            }
        }
    }

    /// Wakes every restore sleeping on this segment's generation, if the
    /// header says one is: called by the writer right after it publishes.
    pub(crate) fn wake_waiters(&self) {
        if self.map.word(Word::Waiters).load(Ordering::SeqCst) != 0 {
            // A failed wake leaves the waiters to their deadline; nothing
            // else can be done about it here.
            let _ = self.map.futex_wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::mpsc;

    thread_local! {
        /// Futex sleeps of this thread that ended at their deadline rather
        /// than by a wake-up: a lost wake-up shows here.
        pub(super) static SLEEPS_TIMED_OUT: Cell<u32> = const { Cell::new(0) };
    }

    /// A bound no healthy wake-up comes near: only a lost one reaches it.
    const LOST_WAKE_BOUND: Duration = Duration::from_secs(30);

    fn attached(segment: &StateSegment) -> StateSegment {
        StateSegment::from_fd(segment.fd().try_clone_to_owned().unwrap()).unwrap()
    }

    fn waiters(segment: &StateSegment) -> u64 {
        segment.map.word(Word::Waiters).load(Ordering::SeqCst)
    }

    /// Blocks until a restore on another mapping is counted as a waiter.
    fn until_waiting(segment: &StateSegment, count: u64) {
        while waiters(segment) < count {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_published_generation_is_returned_at_once() {
        let mut segment = StateSegment::create(4096).unwrap();
        segment.publish(1, b"a").unwrap();
        assert_eq!(segment.wait_for_generation(1, Duration::ZERO), Ok(1));
        assert_eq!(segment.wait_for_generation(0, Duration::ZERO), Ok(1));
        assert_eq!(waiters(&segment), 0);
    }

    #[test]
    fn the_wait_is_bounded_and_says_where_the_segment_is() {
        let mut segment = StateSegment::create(4096).unwrap();
        segment.publish(1, b"a").unwrap();
        let error = segment
            .wait_for_generation(3, Duration::from_millis(5))
            .unwrap_err();
        assert_eq!((error.target, error.generation), (3, 1));
        assert!(error.waited >= Duration::from_millis(5), "{error:?}");
        assert_eq!(waiters(&segment), 0, "the waiter took itself off");
    }

    #[test]
    fn a_wake_from_another_mapping_reaches_the_sleeper() {
        // The futex is process-shared: keyed by the memfd page, not by this
        // mapping's address (a private futex would wake nobody here).
        let sleeper = StateSegment::create(4096).unwrap();
        let waker = attached(&sleeper);
        let (done, finished) = mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // The word is 0 and stays 0: only a wake-up or the bound ends it.
                done.send(sleeper.map.futex_wait(0, LOST_WAKE_BOUND))
                    .unwrap();
            });
            let outcome = loop {
                if waker.map.futex_wake_all() == Ok(1) {
                    break finished.recv().unwrap();
                }
                if let Ok(early) = finished.try_recv() {
                    break early;
                }
                std::thread::yield_now();
            };
            assert_eq!(outcome, Ok(()), "the sleeper was not woken");
        });
        // A changed word refuses the sleep at once.
        assert_eq!(
            sleeper.map.futex_wait(1, LOST_WAKE_BOUND),
            Err(Errno::EAGAIN)
        );
    }

    #[test]
    fn a_publish_in_another_mapping_wakes_the_waiter() {
        let mut writer = StateSegment::create(4096).unwrap();
        let reader = attached(&writer);
        let (done, finished) = mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let reached = reader.wait_for_generation(2, LOST_WAKE_BOUND);
                done.send((reached, SLEEPS_TIMED_OUT.get())).unwrap();
            });
            until_waiting(&writer, 1);
            writer.publish(1, b"first").unwrap();
            // Generation 1 is not the target: the waiter goes back to sleep.
            assert!(finished.try_recv().is_err());
            writer.publish(1, b"second").unwrap();
            assert_eq!(finished.recv().unwrap(), (Ok(2), 0));
        });
        assert_eq!(waiters(&writer), 0);
    }

    #[test]
    fn every_waiter_is_woken() {
        let mut writer = StateSegment::create(4096).unwrap();
        let readers = [attached(&writer), attached(&writer), attached(&writer)];
        std::thread::scope(|scope| {
            let handles: Vec<_> = readers
                .iter()
                .map(|reader| {
                    scope.spawn(|| {
                        let reached = reader.wait_for_generation(1, LOST_WAKE_BOUND);
                        (reached, SLEEPS_TIMED_OUT.get())
                    })
                })
                .collect();
            until_waiting(&writer, 3);
            writer.publish(1, b"x").unwrap();
            for handle in handles {
                assert_eq!(handle.join().unwrap(), (Ok(1), 0));
            }
        });
    }

    #[test]
    fn a_wake_racing_the_sleep_is_not_lost() {
        // Many short rounds of publish against a fresh waiter: the publish
        // lands anywhere between the waiter's count, its generation check
        // and its sleep. A lost wake-up would leave a waiter asleep for the
        // whole minute.
        let mut writer = StateSegment::create(4096).unwrap();
        let reader = attached(&writer);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                for target in 1..=500u64 {
                    let reached = reader.wait_for_generation(target, LOST_WAKE_BOUND);
                    assert!(matches!(reached, Ok(g) if g >= target), "{reached:?}");
                }
                assert_eq!(SLEEPS_TIMED_OUT.get(), 0, "a wake-up was lost");
            });
            for _ in 1..=500u64 {
                writer.publish(1, b"x").unwrap();
                std::thread::yield_now();
            }
            waiter.join().unwrap();
        });
    }

    #[test]
    fn a_hostile_waiters_count_costs_only_a_needless_wake() {
        let mut segment = StateSegment::create(4096).unwrap();
        segment
            .map
            .word(Word::Waiters)
            .store(u64::MAX, Ordering::SeqCst);
        assert_eq!(segment.publish(1, b"x"), Ok(1));
        assert_eq!(segment.read().unwrap().payload, b"x");
        // A waiter counts itself in and out, wrapping through the bound.
        assert_eq!(
            segment
                .wait_for_generation(2, Duration::from_millis(1))
                .map_err(|e| e.target),
            Err(2)
        );
        assert_eq!(waiters(&segment), u64::MAX);
    }

    #[test]
    fn a_hostile_generation_makes_the_wait_end_at_its_bound() {
        let segment = StateSegment::create(4096).unwrap();
        let other = attached(&segment);
        // Another process moves the generation without reaching the target
        // and never wakes anyone: the waiter ends at its deadline.
        other.map.word(Word::Generation).store(5, Ordering::SeqCst);
        let error = segment
            .wait_for_generation(6, Duration::from_millis(3))
            .unwrap_err();
        assert_eq!(error.generation, 5);
    }
}
