//! The stop handle shared by the listeners.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::OFlag;

/// Makes a listener's `serve` return: it writes a byte to a pipe the
/// listener polls beside its clients, so an idle listener needs no timer.
#[derive(Clone, Debug)]
pub struct StopHandle {
    write: Arc<OwnedFd>,
}

/// The listener's end of a [`StopHandle`]: readable once stop was asked.
#[derive(Debug)]
pub(crate) struct StopSignal {
    read: OwnedFd,
    handle: StopHandle,
}

impl StopSignal {
    pub(crate) fn new() -> std::io::Result<StopSignal> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(StopSignal {
            read,
            handle: StopHandle {
                write: Arc::new(write),
            },
        })
    }

    pub(crate) fn handle(&self) -> StopHandle {
        self.handle.clone()
    }
}

impl AsFd for StopSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

impl heli_core::Stopper for StopHandle {
    fn stop(&self) {
        // A full pipe already holds a stop request.
        let _ = nix::unistd::write(self.write.as_fd(), b"x");
    }
}
