//! `BufferPool`: a bounded free list of chunk buffers, so a fetch (and a
//! blob server) reuses the same few buffers instead of allocating, faulting
//! in and zeroing a fresh one for every chunk. On this VM a page touched for
//! the first time is expensive (the host backs it on demand), so fresh
//! 1 MiB buffers per chunk cost more than the copy into them.

use std::sync::{Arc, Mutex};

/// Default `BufferPool` bound: free buffers kept for reuse.
pub const DEFAULT_POOL_BUFFERS: usize = 32;

/// Free buffers, at most `max` of them kept (more are freed). Cloning shares
/// the pool.
#[derive(Clone, Debug)]
pub struct BufferPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    max: usize,
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new(DEFAULT_POOL_BUFFERS)
    }
}

impl BufferPool {
    /// A pool keeping at most `max` free buffers.
    pub fn new(max: usize) -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::with_capacity(max))),
            max,
        }
    }

    /// A buffer of exactly `len` bytes. Its contents are whatever the last
    /// user left there (zeros only where it had to grow): callers overwrite
    /// all of it.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        let mut buf = reused.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// A buffer of whatever length its last user left (0 if new), for a
    /// caller that sets the length itself: a reused buffer resized to the
    /// length it already has is not written to at all, where `take(0)`
    /// followed by a resize would zero all of it again.
    pub fn take_any(&self) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        reused.unwrap_or_default()
    }

    /// Gives a buffer back for reuse.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.max
        {
            free.push(buf);
        }
    }

    /// Free buffers held now.
    pub fn free_buffers(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_given_buffers_and_keeps_at_most_max() {
        let pool = BufferPool::new(2);
        let a = pool.take(10);
        assert_eq!(a.len(), 10);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(8);
        assert_eq!(b.len(), 8);
        assert_eq!(b.as_ptr(), ptr, "the given buffer is handed out again");
        let c = pool.take(12);
        assert_eq!(c.len(), 12);
        for buf in [b, c, vec![1u8; 4]] {
            pool.give(buf);
        }
        assert_eq!(pool.free_buffers(), 2);
        pool.give(Vec::new());
        assert_eq!(pool.free_buffers(), 2);
    }
}
