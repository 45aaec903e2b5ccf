//! What each instance's store holds: its sandboxed WASI context, its limits
//! and the host imports it was granted.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::clawmesh::skill::host;
use crate::host::{HostClock, HostLog};
use crate::limiter::Limiter;
use crate::log_budget::LogBudget;

/// The `T` of every skill's `Store<T>`.
pub(crate) struct StoreData {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) clock: Arc<dyn HostClock>,
    pub(crate) logger: Arc<dyn HostLog>,
    pub(crate) log_budget: LogBudget,
}

impl StoreData {
    pub(crate) fn new(
        limiter: Limiter,
        clock: Arc<dyn HostClock>,
        logger: Arc<dyn HostLog>,
        max_log_bytes_per_call: usize,
    ) -> Self {
        Self {
            wasi: sandboxed_wasi(),
            table: ResourceTable::new(),
            limiter,
            clock,
            logger,
            log_budget: LogBudget::new(max_log_bytes_per_call),
        }
    }
}

/// WASI preview 2 with nothing ambient: no preopened directories, no
/// environment variables, no arguments, empty stdin, stdout and stderr
/// discarded, and no network (the builder's defaults deny every socket
/// address, TCP, UDP and name lookup). Rust guests import several WASI
/// interfaces even when they never use them, so WASI is linked but empty.
fn sandboxed_wasi() -> WasiCtx {
    WasiCtx::builder().build()
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for StoreData {
    fn log(&mut self, level: host::LogLevel, message: String) {
        if let Some(admitted) = self.log_budget.admit(&message) {
            self.logger.log(level.into(), admitted);
        }
    }

    fn now_ms(&mut self) -> u64 {
        self.clock.now_ms()
    }
}
