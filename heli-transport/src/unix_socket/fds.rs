//! File descriptors with a reply (`SCM_RIGHTS`): after `AGENT_ATTACH` the
//! controller sends the client its ends of pdb's sockets.
//!
//! The descriptors travel with the reply line's first byte. A client that
//! reads the line with `read(2)` (an older one) gets the line alone: the
//! kernel closes the descriptors it did not take.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use heli_core::protocol::LineBuffer;
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::io::{read_line_by, send_all, wait_writable};

/// The most descriptors one `SCM_RIGHTS` message can carry (Linux's
/// `SCM_MAX_FD`: a sender cannot send more). The room for control messages
/// holds that many, so the kernel never has to truncate one that carries
/// descriptors (`MSG_CTRUNC`): it would install those that fit, and nix
/// does not show the control messages of a truncated message, so they
/// would stay open unseen. (One `recvmsg` on a stream socket returns the
/// descriptors of one message at most.)
const SCM_MAX_FD: usize = 253;

/// Sends `data` on the non-blocking socket `fd` before `deadline`, with
/// `fds` attached to its first byte (without any, as
/// [`send_all`](crate::io::send_all) does). With `stop`, gives up
/// (`Interrupted`) as soon as that descriptor is readable.
pub(super) fn send_with_fds(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[OwnedFd],
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    if fds.is_empty() {
        return send_all(fd, data, deadline, stop);
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    loop {
        let sent = sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(data)],
            &rights,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            // The descriptors went with the first bytes: the rest as ever.
            Ok(n) => return send_all(fd, &data[n..], deadline, stop),
            Err(Errno::EAGAIN) => wait_writable(fd, deadline, stop)?,
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reads from the non-blocking socket `fd` until `lines` holds a complete
/// line or the deadline passes, as [`read_line`](crate::io::read_line)
/// does, and returns that line with the descriptors that arrived while
/// reading it: `max_fds` at most, the first ones; any more are closed.
/// They are close-on-exec.
///
/// A read brings the bytes that came before the descriptors' message with
/// it: the descriptors are the line's when nothing else came before it (a
/// client reads the late replies to earlier requests before it sends the
/// next one).
///
/// # Errors
///
/// As [`read_line`](crate::io::read_line).
pub(super) fn read_line_with_fds(
    fd: BorrowedFd<'_>,
    lines: &mut LineBuffer,
    deadline: Instant,
    max_fds: usize,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let line = read_line_by(fd, lines, deadline, |buf| {
        let mut iov = [IoSliceMut::new(buf)];
        let message = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        // Only a message truncated for something else than descriptors
        // (see SCM_MAX_FD) cannot be walked: it brought none.
        for received in message.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(received) = received {
                fds.extend(received.into_iter().map(adopt));
            }
        }
        Ok(message.bytes)
    })?;
    // Dropping the rest closes them.
    fds.truncate(max_fds);
    Ok((line, fds))
}

/// Takes ownership of `fd`, a descriptor the kernel has just installed in
/// this process for an `SCM_RIGHTS` message `recvmsg` received.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is a descriptor the kernel opened in this process for
    // the message just received: open, and owned by nothing else (nix
    // hands out the raw numbers without taking ownership); it is adopted
    // here once, as it comes.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A connected pair, non-blocking as the transport's sockets are.
    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn descriptors_travel_with_the_line_and_work() {
        let (server, client) = pair();
        let (mine, theirs) = UnixStream::pair().unwrap();
        let (spare, _) = UnixStream::pair().unwrap();
        send_with_fds(
            server.as_fd(),
            b"AGENT 7 3.14.0\n",
            &[theirs.into(), spare.into()],
            soon(),
            None,
        )
        .unwrap();
        let mut lines = LineBuffer::for_replies();
        let (line, fds) = read_line_with_fds(client.as_fd(), &mut lines, soon(), 4).unwrap();
        assert_eq!(line, b"AGENT 7 3.14.0\n");
        assert_eq!(fds.len(), 2);
        // The first is the other end of `mine`: what one writes the other
        // reads.
        let mut received = UnixStream::from(fds.into_iter().next().unwrap());
        received.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        (&mine).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        // Close-on-exec, as asked.
        let flags = nix::fcntl::fcntl(&received, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn descriptors_beyond_those_expected_are_closed() {
        let (server, client) = pair();
        let (first, first_peer) = UnixStream::pair().unwrap();
        let (second, second_peer) = UnixStream::pair().unwrap();
        send_with_fds(
            server.as_fd(),
            b"AGENT 7 3.14.0\n",
            &[first_peer.into(), second_peer.into()],
            soon(),
            None,
        )
        .unwrap();
        let mut lines = LineBuffer::for_replies();
        let (_, fds) = read_line_with_fds(client.as_fd(), &mut lines, soon(), 1).unwrap();
        assert_eq!(fds.len(), 1);
        // The second's only other end is closed: its peer reads EOF; the
        // first's is open.
        let mut buf = [0u8; 1];
        assert_eq!((&second).read(&mut buf).unwrap(), 0);
        first.set_nonblocking(true).unwrap();
        let err = (&first).read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_line_without_descriptors_reads_either_way() {
        let (server, client) = pair();
        send_with_fds(server.as_fd(), b"READY\nSTA", &[], soon(), None).unwrap();
        let mut lines = LineBuffer::for_replies();
        let (line, fds) = read_line_with_fds(client.as_fd(), &mut lines, soon(), 2).unwrap();
        assert_eq!((line, fds.len()), (b"READY\n".to_vec(), 0));
        // Split across reads, and what was read before counts.
        send_with_fds(server.as_fd(), b"TUS x\n", &[], soon(), None).unwrap();
        let (line, _) = read_line_with_fds(client.as_fd(), &mut lines, soon(), 2).unwrap();
        assert_eq!(line, b"STATUS x\n");
        // Nothing comes: the deadline; the other end gone: EOF.
        let err = read_line_with_fds(client.as_fd(), &mut lines, Instant::now(), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(server);
        let err = read_line_with_fds(client.as_fd(), &mut lines, soon(), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_reader_without_recvmsg_gets_the_line_and_the_descriptors_close() {
        let (server, client) = pair();
        let (mine, theirs) = UnixStream::pair().unwrap();
        send_with_fds(
            server.as_fd(),
            b"AGENT 7 3.14.0\n",
            &[theirs.into()],
            soon(),
            None,
        )
        .unwrap();
        let mut lines = LineBuffer::for_replies();
        let line = crate::io::read_line(&client, &mut lines, soon()).unwrap();
        assert_eq!(line, b"AGENT 7 3.14.0\n");
        let mut buf = [0u8; 1];
        assert_eq!((&mine).read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_full_socket_is_waited_on_and_the_descriptors_still_come_with_their_line() {
        let (server, client) = pair();
        // Fill the socket with lines the client has not read yet.
        let filler = [&b"x\n"[..]; 512].concat();
        let mut lines_sent = 0;
        while nix::sys::socket::send(
            server.as_raw_fd(),
            &filler,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .is_ok()
        {
            lines_sent += 512;
        }
        assert!(lines_sent > 0);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut lines = LineBuffer::for_replies();
            let (mut filler_lines, mut received) = (0, 0);
            loop {
                let (line, fds) =
                    read_line_with_fds(client.as_fd(), &mut lines, soon(), 2).unwrap();
                // (One read brings the lines before the descriptors'
                // message with it.)
                received += fds.len();
                if line != b"x\n" {
                    return (filler_lines, line, received, client);
                }
                filler_lines += 1;
            }
        });
        let (_, theirs) = UnixStream::pair().unwrap();
        send_with_fds(
            server.as_fd(),
            b"AGENT 7 3.14.0\n",
            &[theirs.into()],
            soon(),
            None,
        )
        .unwrap();
        let (filler_lines, line, fds, _client) = reader.join().unwrap();
        assert_eq!(filler_lines, lines_sent);
        assert_eq!((line, fds), (b"AGENT 7 3.14.0\n".to_vec(), 1));
        // Past its deadline, a full socket is given up on.
        while nix::sys::socket::send(
            server.as_raw_fd(),
            &filler,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .is_ok()
        {}
        let (_, theirs) = UnixStream::pair().unwrap();
        let err = send_with_fds(
            server.as_fd(),
            b"x\n",
            &[theirs.into()],
            Instant::now(),
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn sending_to_a_peer_that_is_gone_fails_without_sigpipe() {
        let (server, client) = pair();
        drop(client);
        let (_, theirs) = UnixStream::pair().unwrap();
        let err =
            send_with_fds(server.as_fd(), b"x\n", &[theirs.into()], soon(), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
