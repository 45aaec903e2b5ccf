//! Passing a segment's fd between processes over a Unix stream socket, as
//! SCM_RIGHTS ancillary data riding on a few payload bytes.
//!
//! Both functions work on anything that is a Unix socket fd (`AsFd`): a std
//! `UnixStream`, or a tokio one (`&tokio_stream` is `AsFd`). On a blocking
//! socket they block like `send`/`recv`; on a non-blocking one they return
//! [`FdPassError::WouldBlock`] when the socket is not ready, which converts
//! to an `io::Error` of kind `WouldBlock`, so a tokio caller wraps them in
//! `stream.async_io(Interest::WRITABLE, || send_fd(..).map_err(Into::into))`.
//! The fd is attached to the first byte sent; on a stream socket the
//! receiver gets it with the `recv_fd` call that reads that byte.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Fds a received message has room for. The protocol sends one; room for a
/// few more lets a receiver see and close (rather than lose track of) a
/// misbehaving peer's extras.
pub const MAX_FDS_PER_MESSAGE: usize = 4;

/// Times a call interrupted by a signal is retried before giving up.
const MAX_INTERRUPTED_RETRIES: u32 = 16;

/// Why an fd could not be sent or received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FdPassError {
    /// The payload (send) or buffer (receive) is empty: an fd must ride on
    /// at least one byte.
    #[error("an fd must travel with at least one byte: the {what} is empty")]
    Empty {
        /// "payload" or "buffer".
        what: &'static str,
    },
    /// The socket is non-blocking and not ready: wait for readiness, retry.
    #[error("the socket is not ready")]
    WouldBlock,
    /// The system call failed.
    #[error("{call} failed: {errno}")]
    Os {
        /// `sendmsg` or `recvmsg`.
        call: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The peer attached more than one fd to a message (all were closed).
    #[error("received {count} fds in one message, expected one")]
    TooManyFds {
        /// Fds received.
        count: usize,
    },
    /// The peer attached more fds than [`MAX_FDS_PER_MESSAGE`]: the kernel
    /// truncated the control data. Those that fitted cannot be reached
    /// through the socket API's view of a truncated message and stay open.
    #[error("control data truncated: the peer sent more than {max} fds")]
    ControlTruncated {
        /// [`MAX_FDS_PER_MESSAGE`].
        max: usize,
    },
}

impl FdPassError {
    fn from_errno(call: &'static str, errno: Errno) -> FdPassError {
        if errno == Errno::EAGAIN {
            FdPassError::WouldBlock
        } else {
            FdPassError::Os { call, errno }
        }
    }
}

impl From<FdPassError> for io::Error {
    fn from(error: FdPassError) -> io::Error {
        match error {
            FdPassError::WouldBlock => io::ErrorKind::WouldBlock.into(),
            FdPassError::Os { errno, .. } => io::Error::from_raw_os_error(errno as i32),
            FdPassError::Empty { .. } => io::Error::new(io::ErrorKind::InvalidInput, error),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Sends `fd` and `payload` (at least one byte) on the Unix stream
/// `socket`. Returns the payload bytes sent: a stream socket may take fewer
/// than all; send the rest with a plain write (the fd went with the first).
pub fn send_fd(
    socket: impl AsFd,
    fd: BorrowedFd<'_>,
    payload: &[u8],
) -> Result<usize, FdPassError> {
    if payload.is_empty() {
        return Err(FdPassError::Empty { what: "payload" });
    }
    let fds = [fd.as_raw_fd()];
    let control = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(payload)];
    let mut interrupted = 0;
    loop {
        // MSG_NOSIGNAL: a closed peer is an EPIPE error, not a SIGPIPE.
        match sendmsg::<()>(
            socket.as_fd().as_raw_fd(),
            &iov,
            &control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(sent) => return Ok(sent),
            Err(Errno::EINTR) if interrupted < MAX_INTERRUPTED_RETRIES => interrupted += 1,
            Err(errno) => return Err(FdPassError::from_errno("sendmsg", errno)),
        }
    }
}

/// Receives bytes into `buf` (at least one byte long) from the Unix stream
/// `socket`, with the fd attached to them if any. The fd is close-on-exec.
/// `(0, None)` means the peer closed the socket.
pub fn recv_fd(socket: impl AsFd, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>), FdPassError> {
    if buf.is_empty() {
        return Err(FdPassError::Empty { what: "buffer" });
    }
    let mut control = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut interrupted = 0;
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let message = match recvmsg::<()>(
            socket.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => message,
            Err(Errno::EINTR) if interrupted < MAX_INTERRUPTED_RETRIES => {
                interrupted += 1;
                continue;
            }
            Err(errno) => return Err(FdPassError::from_errno("recvmsg", errno)),
        };
        let received = message.bytes;
        let messages = message.cmsgs().map_err(|_| FdPassError::ControlTruncated {
            max: MAX_FDS_PER_MESSAGE,
        })?;
        let mut fds = Vec::new();
        for control_message in messages {
            if let ControlMessageOwned::ScmRights(raw_fds) = control_message {
                for raw in raw_fds {
                    // SAFETY: the kernel installed `raw` in this process's fd
                    // table for this message (SCM_RIGHTS); nothing else in
                    // the process knows it, so this OwnedFd is its only owner
                    // and closes it exactly once.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        return match fds.len() {
            0 | 1 => Ok((received, fds.pop())),
            count => Err(FdPassError::TooManyFds { count }),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateSegment;
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    /// Set in the environment of the child process the cross-process test
    /// spawns, so that its entry test does the child's half.
    const CHILD_ENV: &str = "CLAWMESH_SHM_TEST_CHILD";

    fn is_cloexec(fd: &OwnedFd) -> bool {
        FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap())
            .contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn a_segment_travels_between_threads_over_a_socketpair() {
        let (left, right) = UnixStream::pair().unwrap();
        let mut segment = StateSegment::create(4096).unwrap();
        segment.publish(2, b"hello").unwrap();
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let (len, fd) = recv_fd(&right, &mut buf).unwrap();
            let fd = fd.expect("an fd came with the bytes");
            assert!(is_cloexec(&fd));
            let attached = StateSegment::from_fd(fd).unwrap();
            (buf[..len].to_vec(), attached.read().unwrap())
        });
        assert_eq!(send_fd(&left, segment.fd(), b"seg"), Ok(3));
        let (bytes, snapshot) = receiver.join().unwrap();
        assert_eq!(bytes, b"seg");
        assert_eq!((snapshot.generation, snapshot.schema), (1, 2));
        assert_eq!(snapshot.payload, b"hello");
    }

    #[test]
    fn plain_bytes_arrive_without_an_fd_and_eof_is_zero() {
        let (mut left, right) = UnixStream::pair().unwrap();
        left.write_all(b"plain").unwrap();
        drop(left);
        let mut buf = [0u8; 16];
        let (len, fd) = recv_fd(&right, &mut buf).unwrap();
        assert_eq!((&buf[..len], fd.is_none()), (&b"plain"[..], true));
        let (len, fd) = recv_fd(&right, &mut buf).unwrap();
        assert_eq!((len, fd.is_none()), (0, true));
    }

    #[test]
    fn empty_payloads_and_buffers_are_refused() {
        let (left, right) = UnixStream::pair().unwrap();
        let segment = StateSegment::create(4096).unwrap();
        assert_eq!(
            send_fd(&left, segment.fd(), b""),
            Err(FdPassError::Empty { what: "payload" })
        );
        assert!(matches!(
            recv_fd(&right, &mut []),
            Err(FdPassError::Empty { what: "buffer" })
        ));
    }

    #[test]
    fn a_non_blocking_socket_that_is_not_ready_would_block() {
        let (_left, right) = UnixStream::pair().unwrap();
        right.set_nonblocking(true).unwrap();
        let error = recv_fd(&right, &mut [0u8; 4]).unwrap_err();
        assert_eq!(error, FdPassError::WouldBlock);
        assert_eq!(io::Error::from(error).kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_signal() {
        let (left, right) = UnixStream::pair().unwrap();
        drop(right);
        let segment = StateSegment::create(4096).unwrap();
        assert_eq!(
            send_fd(&left, segment.fd(), b"x"),
            Err(FdPassError::Os {
                call: "sendmsg",
                errno: Errno::EPIPE
            })
        );
    }

    #[test]
    fn more_than_one_fd_in_a_message_is_refused() {
        let (left, right) = UnixStream::pair().unwrap();
        let (a, b) = (
            StateSegment::create(4096).unwrap(),
            StateSegment::create(4096).unwrap(),
        );
        let fds = [a.fd().as_raw_fd(), b.fd().as_raw_fd()];
        let iov = [IoSlice::new(b"two")];
        sendmsg::<()>(
            left.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(matches!(
            recv_fd(&right, &mut [0u8; 8]),
            Err(FdPassError::TooManyFds { count: 2 })
        ));
    }

    #[test]
    fn a_segment_travels_to_a_child_process_and_back() {
        let (parent, child_end) = UnixStream::pair().unwrap();
        let mut segment = StateSegment::create(4096).unwrap();
        segment.publish(1, b"from parent").unwrap();
        // The child is this test binary running only `child_process_entry`,
        // with its end of the socket as stdin.
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fdpass::tests::child_process_entry",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::from(OwnedFd::from(child_end)))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert_eq!(send_fd(&parent, segment.fd(), b"S"), Ok(1));
        // The child publishes, then acknowledges; EOF here means it failed.
        let mut ack = [0u8; 1];
        let acked = (&parent).read(&mut ack).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
        assert_eq!(&ack[..acked], b"K");
        let current = segment.read().unwrap();
        assert_eq!((current.generation, current.schema), (2, 7));
        assert_eq!(current.payload, b"from child");
        assert_eq!(segment.read_previous().unwrap().payload, b"from parent");
    }

    #[test]
    #[ignore = "the child half of a_segment_travels_to_a_child_process_and_back"]
    fn child_process_entry() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let socket = UnixStream::from(io::stdin().as_fd().try_clone_to_owned().unwrap());
        let mut buf = [0u8; 1];
        let (len, fd) = recv_fd(&socket, &mut buf).unwrap();
        assert_eq!(&buf[..len], b"S");
        let mut segment = StateSegment::from_fd(fd.expect("an fd came with the byte")).unwrap();
        assert_eq!(segment.read().unwrap().payload, b"from parent");
        assert_eq!(segment.publish(7, b"from child"), Ok(2));
        (&socket).write_all(b"K").unwrap();
    }
}
