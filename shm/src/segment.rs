//! A state segment: the sealed memfd, its mapping, creation and attachment.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::header::{HeaderError, SegmentHeader};
use crate::layout::{HEADER_FIELDS_LEN, HEADER_LEN, MAX_CAPACITY, round_capacity, segment_len};
use crate::mapping::{SharedMapping, Word};

/// The memfd name (shows in `/proc/<pid>/fd`).
const MEMFD_NAME: &str = "clawmesh-state";

/// The seals every segment carries. Shrinking would turn accesses to the
/// mapping into SIGBUS; growing is never needed (growth makes a new segment);
/// sealing the seals stops anyone adding a write seal under a live writer.
pub const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The requested capacity is above the bound.
    #[error("capacity {requested} is above the maximum {max} bytes per buffer")]
    CapacityTooLarge {
        /// The capacity asked for.
        requested: u64,
        /// [`MAX_CAPACITY`].
        max: u64,
    },
    /// A system call failed.
    #[error("{call} failed while creating a state segment: {errno}")]
    Os {
        /// The call (`memfd_create`, `ftruncate`, `fcntl(F_ADD_SEALS)`).
        call: &'static str,
        /// The error.
        errno: Errno,
    },
    /// Mapping the memfd failed.
    #[error("mapping the state segment failed: {0}")]
    Map(#[source] std::io::Error),
}

/// Why a received fd was refused as a state segment.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A system call on the fd failed (not a memfd, or closed).
    #[error("{call} failed on the received fd: {errno}")]
    Os {
        /// The call (`fstat`, `fcntl(F_GET_SEALS)`).
        call: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The fd lacks seals the mapping relies on.
    #[error("the fd's seals are {found:?}, missing {missing:?}")]
    MissingSeals {
        /// The seals present.
        found: SealFlag,
        /// The required seals that are absent.
        missing: SealFlag,
    },
    /// The file is too small or too large to hold any valid segment.
    #[error("the file is {size} bytes, not between {min} and {max}")]
    SizeOutOfRange {
        /// The file size.
        size: u64,
        /// The smallest segment.
        min: u64,
        /// The largest segment.
        max: u64,
    },
    /// The header is not a valid segment header.
    #[error("invalid segment header: {0}")]
    BadHeader(#[from] HeaderError),
    /// The file size disagrees with the header's capacity.
    #[error("the file is {size} bytes but its header's capacity {capacity} needs {expected}")]
    SizeMismatch {
        /// The file size.
        size: u64,
        /// The header's capacity.
        capacity: u64,
        /// The size that capacity needs.
        expected: u64,
    },
    /// Mapping the fd failed.
    #[error("mapping the state segment failed: {0}")]
    Map(#[source] std::io::Error),
}

/// One skill's state segment: a sealed memfd with a header and two buffers.
///
/// The node creates it and passes its fd to workers, which attach with
/// [`StateSegment::from_fd`]. Reads take `&self` and may run in any number of
/// threads and processes; writes take `&mut self` and there must be one writer
/// at a time across all processes (the node decides who). Dropping it unmaps
/// and closes this process's fd; the memory is freed when the last fd and
/// mapping in any process are gone.
#[derive(Debug)]
pub struct StateSegment {
    pub(crate) map: SharedMapping,
    fd: OwnedFd,
}

impl StateSegment {
    /// Creates a segment whose buffers hold at least `min_capacity` bytes
    /// (rounded up to a page); nothing is published yet.
    pub fn create(min_capacity: u64) -> Result<StateSegment, CreateError> {
        let capacity = round_capacity(min_capacity).ok_or(CreateError::CapacityTooLarge {
            requested: min_capacity,
            max: MAX_CAPACITY,
        })?;
        let fd = memfd_create(
            MEMFD_NAME,
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|errno| CreateError::Os {
            call: "memfd_create",
            errno,
        })?;
        // segment_len(capacity) <= HEADER_LEN + 2 GiB, well inside off_t.
        nix::unistd::ftruncate(&fd, segment_len(capacity) as i64).map_err(|errno| {
            CreateError::Os {
                call: "ftruncate",
                errno,
            }
        })?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(REQUIRED_SEALS)).map_err(|errno| CreateError::Os {
            call: "fcntl(F_ADD_SEALS)",
            errno,
        })?;
        let map = SharedMapping::map(&fd, capacity).map_err(CreateError::Map)?;
        let segment = StateSegment { map, fd };
        segment.store_header(&SegmentHeader::empty(capacity));
        Ok(segment)
    }

    /// Attaches to a segment whose fd was received from its owner: checks the
    /// seals, the file size and the header, then maps it.
    pub fn from_fd(fd: OwnedFd) -> Result<StateSegment, AttachError> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(|errno| AttachError::Os {
            call: "fcntl(F_GET_SEALS)",
            errno,
        })?;
        let found = SealFlag::from_bits_truncate(seals);
        if !found.contains(REQUIRED_SEALS) {
            return Err(AttachError::MissingSeals {
                found,
                missing: REQUIRED_SEALS - found,
            });
        }
        let stat = nix::sys::stat::fstat(&fd).map_err(|errno| AttachError::Os {
            call: "fstat",
            errno,
        })?;
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let (min, max) = (
            segment_len(round_capacity(0).unwrap_or(0)),
            segment_len(MAX_CAPACITY),
        );
        if !(min..=max).contains(&size) {
            return Err(AttachError::SizeOutOfRange { size, min, max });
        }
        // Map the header page alone first: the capacity it claims decides how
        // much to map, and must agree with the file size before we trust it.
        let header_map = SharedMapping::map_header(&fd).map_err(AttachError::Map)?;
        let header = SegmentHeader::parse(&header_map.header_fields())?;
        let expected = segment_len(header.capacity);
        if expected != size {
            return Err(AttachError::SizeMismatch {
                size,
                capacity: header.capacity,
                expected,
            });
        }
        drop(header_map);
        let map = SharedMapping::map(&fd, header.capacity).map_err(AttachError::Map)?;
        let segment = StateSegment { map, fd };
        segment.header()?;
        Ok(segment)
    }

    /// The memfd, to pass to a worker with [`crate::send_fd`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes each buffer holds: the largest payload [`StateSegment::publish`]
    /// accepts.
    pub fn capacity(&self) -> u64 {
        self.map.capacity()
    }

    /// The last published generation (0: nothing published yet).
    pub fn generation(&self) -> u64 {
        self.map.word(Word::Generation).load(Ordering::Acquire)
    }

    /// A snapshot of the header, parsed and checked against this mapping.
    pub fn header(&self) -> Result<SegmentHeader, HeaderError> {
        let header = SegmentHeader::parse(&self.map.header_fields())?;
        if header.capacity != self.capacity() {
            return Err(HeaderError::CapacityChanged {
                found: header.capacity,
                mapped: self.capacity(),
            });
        }
        Ok(header)
    }

    /// Writes a whole header into a segment no other process can see yet
    /// (creation and growth).
    pub(crate) fn store_header(&self, header: &SegmentHeader) {
        self.map.store_header_fields(&header.encode());
    }
}

const _: () = assert!(HEADER_FIELDS_LEN <= HEADER_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HeaderError;
    use crate::layout::CAPACITY_GRANULE;
    use std::io::Write;

    /// A sealed memfd of `len` bytes starting with `header`, as a
    /// misbehaving owner could send.
    fn raw_memfd(len: u64, header: &[u8], seals: SealFlag) -> OwnedFd {
        let fd = memfd_create("test", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, len as i64).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(header).unwrap();
        let fd = OwnedFd::from(file);
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
        fd
    }

    #[test]
    fn create_rounds_capacity_seals_and_sizes_the_memfd() {
        let segment = StateSegment::create(1).unwrap();
        assert_eq!(segment.capacity(), CAPACITY_GRANULE);
        assert_eq!(segment.generation(), 0);
        let seals =
            SealFlag::from_bits_truncate(fcntl(segment.fd(), FcntlArg::F_GET_SEALS).unwrap());
        assert!(seals.contains(REQUIRED_SEALS));
        let stat = nix::sys::stat::fstat(segment.fd()).unwrap();
        assert_eq!(stat.st_size as u64, segment_len(CAPACITY_GRANULE));
        assert_eq!(
            segment.header().unwrap(),
            SegmentHeader::empty(CAPACITY_GRANULE)
        );
        // The seal holds: the file cannot shrink under a mapping.
        assert_eq!(nix::unistd::ftruncate(segment.fd(), 10), Err(Errno::EPERM));
    }

    #[test]
    fn create_refuses_capacity_above_the_bound() {
        assert!(matches!(
            StateSegment::create(MAX_CAPACITY + 1),
            Err(CreateError::CapacityTooLarge { requested, .. }) if requested == MAX_CAPACITY + 1
        ));
    }

    #[test]
    fn attach_maps_the_same_memory() {
        let mut owner = StateSegment::create(10_000).unwrap();
        let worker = StateSegment::from_fd(owner.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(worker.capacity(), owner.capacity());
        owner.publish(3, b"state").unwrap();
        assert_eq!(worker.generation(), 1);
        assert_eq!(worker.read().unwrap().payload, b"state");
    }

    #[test]
    fn attach_refuses_unsealed_fds() {
        let header = SegmentHeader::empty(CAPACITY_GRANULE).encode();
        let fd = raw_memfd(
            segment_len(CAPACITY_GRANULE),
            &header,
            SealFlag::F_SEAL_GROW,
        );
        match StateSegment::from_fd(fd) {
            Err(AttachError::MissingSeals { missing, .. }) => {
                assert_eq!(missing, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn attach_refuses_bad_sizes_and_headers() {
        let header = SegmentHeader::empty(CAPACITY_GRANULE).encode();
        let fd = raw_memfd(100, &header[..100], REQUIRED_SEALS);
        assert!(matches!(
            StateSegment::from_fd(fd),
            Err(AttachError::SizeOutOfRange { size: 100, .. })
        ));

        let fd = raw_memfd(segment_len(CAPACITY_GRANULE), &[0; 8], REQUIRED_SEALS);
        assert!(matches!(
            StateSegment::from_fd(fd),
            Err(AttachError::BadHeader(HeaderError::BadMagic { .. }))
        ));

        let fd = raw_memfd(segment_len(2 * CAPACITY_GRANULE), &header, REQUIRED_SEALS);
        assert!(matches!(
            StateSegment::from_fd(fd),
            Err(AttachError::SizeMismatch {
                capacity: CAPACITY_GRANULE,
                ..
            })
        ));

        let file = std::fs::File::from(raw_memfd(
            segment_len(CAPACITY_GRANULE),
            &header,
            REQUIRED_SEALS,
        ));
        assert!(StateSegment::from_fd(OwnedFd::from(file)).is_ok());
    }

    #[test]
    fn attach_refuses_fds_that_are_not_memfds() {
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            StateSegment::from_fd(OwnedFd::from(socket)),
            Err(AttachError::Os {
                call: "fcntl(F_GET_SEALS)",
                ..
            })
        ));
    }
}
