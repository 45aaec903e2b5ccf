//! Memory and table limits for one store, failing growth with typed errors so
//! a call can report which limit it hit.

use wasmtime::ResourceLimiter;

/// Growth of a linear memory past the configured limit.
#[derive(Debug, thiserror::Error)]
#[error("linear memory would grow to {desired} bytes, over the {limit}-byte limit")]
pub(crate) struct MemoryLimitExceeded {
    pub(crate) desired: usize,
    pub(crate) limit: u64,
}

/// Growth of a table past the configured limit.
#[derive(Debug, thiserror::Error)]
#[error("table would grow to {desired} elements, over the {limit}-element limit")]
pub(crate) struct TableLimitExceeded {
    pub(crate) desired: usize,
    pub(crate) limit: u32,
}

/// Refuses growth past the limits by trapping (returning an error), not by
/// letting `memory.grow` return -1: a guest that ignores a failed grow (or a
/// Rust guest, which aborts) would otherwise fail with a vaguer trap.
pub(crate) struct Limiter {
    pub(crate) max_memory_bytes: u64,
    pub(crate) max_table_elements: u32,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if u64::try_from(desired).unwrap_or(u64::MAX) > self.max_memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                limit: self.max_memory_bytes,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > usize::try_from(self.max_table_elements).unwrap_or(usize::MAX) {
            return Err(wasmtime::Error::new(TableLimitExceeded {
                desired,
                limit: self.max_table_elements,
            }));
        }
        Ok(true)
    }
}
