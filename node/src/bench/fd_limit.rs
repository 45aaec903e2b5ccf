//! Raising the open-file limit: every benchmark connection costs a file
//! descriptor in the loader and one in the server.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// File descriptors the bench process keeps besides its connections
/// (runtime, pipes, the hello server's listener, logs...).
pub const FD_HEADROOM: u64 = 256;

/// What the open-file limit is after trying to raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FdLimit {
    /// Soft limit now in force.
    pub soft: u64,
    /// Hard limit (the ceiling an unprivileged process can raise to).
    pub hard: u64,
    /// Descriptors the run needs.
    pub needed: u64,
}

impl FdLimit {
    /// Whether the run has the descriptors it needs.
    pub fn is_enough(&self) -> bool {
        self.soft >= self.needed
    }
}

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    /// `getrlimit(RLIMIT_NOFILE)` failed.
    #[error("reading the open-file limit: {0}")]
    Read(nix::Error),
    /// `setrlimit(RLIMIT_NOFILE)` failed.
    #[error("raising the open-file limit to {wanted}: {source}")]
    Raise {
        /// The soft limit asked for.
        wanted: u64,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// Descriptors needed for `connections` loader connections when the server
/// side of each also lives in this process (the in-process hello server),
/// plus [`FD_HEADROOM`].
pub fn fds_needed(connections: usize) -> u64 {
    (connections as u64)
        .saturating_mul(2)
        .saturating_add(FD_HEADROOM)
}

/// Raises the soft open-file limit up to the hard limit when it is below
/// `needed` (child processes such as the throwaway node inherit it). Never
/// lowers it. The result says whether `needed` is met.
pub fn raise_fd_limit(needed: u64) -> Result<FdLimit, FdLimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(FdLimitError::Read)?;
    if soft >= needed {
        return Ok(FdLimit { soft, hard, needed });
    }
    let wanted = needed.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)
        .map_err(|source| FdLimitError::Raise { wanted, source })?;
    Ok(FdLimit {
        soft: wanted,
        hard,
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_never_goes_down_and_says_whether_it_is_enough() {
        let (soft_before, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let small = raise_fd_limit(8).unwrap();
        assert_eq!(small.soft, soft_before);
        assert!(small.is_enough());
        // Linux caps the hard limit below infinity (fs.nr_open), so asking
        // for u64::MAX ends at the hard limit, reported as not enough.
        if hard < u64::MAX {
            let huge = raise_fd_limit(u64::MAX).unwrap();
            assert_eq!(huge.soft, hard);
            assert!(!huge.is_enough());
        }
        assert_eq!(fds_needed(1000), 2256);
    }
}
