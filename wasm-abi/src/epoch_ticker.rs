//! The thread that advances the engine's epoch, which is what interrupts a
//! call past its deadline.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::EngineWeak;

/// Advances the epoch every tick until dropped. Holds the engine weakly so the
/// ticker never keeps an engine alive.
pub(crate) struct EpochTicker {
    /// Dropping it wakes the thread and tells it to stop.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: EngineWeak, tick: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("clawmesh-epoch".into())
            .spawn(move || {
                // The channel doubles as the tick timer: a timeout is a tick,
                // a disconnect (the ticker was dropped) is the stop signal.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread only loops on the channel; a panic there is a bug we
            // cannot act on while dropping.
            let _ = thread.join();
        }
    }
}
