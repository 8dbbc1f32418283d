//! The controller's end of one agent's channel: requests out, answers in,
//! every message's sender named by the kernel (`SO_PASSCRED`).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use std::{io, thread};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use heli_core::{Deadline, Pid};
use log::debug;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use serde_json::Value;

use crate::sys::adopt_received_fd;

/// The longest line the controller takes from an agent: a stack dump of
/// many threads fits; a process that sends more is not listened to.
pub(crate) const MAX_LINE: usize = 8 << 20;

/// Most file descriptors taken with one message (an agent sends one, with
/// a forked child's channel); the kernel closes those beyond what fits.
const MAX_FDS: usize = 4;

/// One message from the channel: who sent it (as the kernel says), the
/// JSON object it holds, and the file descriptors that came with it.
pub(crate) struct Message {
    pub(crate) sender: Pid,
    pub(crate) body: Value,
    pub(crate) fds: Vec<OwnedFd>,
}

/// What one `recvmsg` brought: the sender (when the kernel named one), how
/// many bytes, the descriptors.
type Received = (Option<Pid>, usize, Vec<OwnedFd>);

/// The controller's end of a channel to an agent.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
    next_id: AtomicU64,
    answers: Mutex<HashMap<u64, Sender<Value>>>,
    /// One request at a time: an agent answers in order.
    one_at_a_time: Mutex<()>,
}

impl Channel {
    /// Takes the controller's end `fd`, which must not yet have been
    /// written to by the agent (the sender of every message must be known).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Arc<Channel>> {
        setsockopt(&fd, sockopt::PassCred, &true)?;
        Ok(Arc::new(Channel {
            fd,
            next_id: AtomicU64::new(1),
            answers: Mutex::new(HashMap::new()),
            one_at_a_time: Mutex::new(()),
        }))
    }

    /// Reads the channel on a thread of its own, until it closes: an
    /// answer from `owner` (the process whose agent it is) goes to whoever
    /// waits for it, any other message to `other`; then `closed` runs.
    pub(crate) fn listen(
        self: &Arc<Self>,
        name: String,
        owner: Pid,
        mut other: impl FnMut(Message) + Send + 'static,
        closed: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let channel = self.clone();
        thread::Builder::new().name(name).spawn(move || {
            channel.read(owner, &mut other);
            // Nobody waits for an answer that will not come.
            channel.lock_answers().clear();
            closed();
        })?;
        Ok(())
    }

    fn read(&self, owner: Pid, other: &mut impl FnMut(Message)) {
        let mut buffers: HashMap<Pid, Vec<u8>> = HashMap::new();
        let mut held: HashMap<Pid, Vec<OwnedFd>> = HashMap::new();
        let mut data = vec![0u8; 64 << 10];
        loop {
            let (sender, bytes, fds) = match self.receive(&mut data) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(err) => {
                    debug!("agent channel: {err}");
                    return;
                }
            };
            let Some(sender) = sender else {
                continue;
            };
            // A line brings one descriptor at most (a forked child's
            // channel): a process sending more without ending its line
            // does not get to fill the controller's file table.
            let kept = held.entry(sender).or_default();
            kept.extend(fds);
            kept.truncate(MAX_FDS);
            let buffer = buffers.entry(sender).or_default();
            buffer.extend_from_slice(&data[..bytes]);
            while let Some(end) = buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let fds = held.remove(&sender).unwrap_or_default();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(body) => self.take(owner, Message { sender, body, fds }, other),
                    Err(err) => {
                        debug!("agent channel: a line from PID {sender} is not JSON: {err}")
                    }
                }
            }
            if buffer.len() > MAX_LINE {
                debug!("agent channel: PID {sender} sent a line too long");
                return;
            }
        }
    }

    /// One `recvmsg`: the sender, how many bytes, the descriptors; `None`
    /// at the end.
    fn receive(&self, data: &mut [u8]) -> io::Result<Option<Received>> {
        let mut space = nix::cmsg_space!(libc::ucred, [RawFd; MAX_FDS]);
        loop {
            let mut iov = [IoSliceMut::new(data)];
            let message = match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
                Ok(message) => message,
            };
            if message.bytes == 0 {
                return Ok(None);
            }
            let mut sender = None;
            let mut fds = Vec::new();
            // Truncated control data (more descriptors than fit): the
            // message is dropped with what came (the kernel closed the
            // rest).
            if let Ok(messages) = message.cmsgs() {
                for control in messages {
                    match control {
                        ControlMessageOwned::ScmCredentials(credentials) => {
                            sender = Pid::new(credentials.pid().unsigned_abs());
                        }
                        ControlMessageOwned::ScmRights(raw) => {
                            fds.extend(raw.into_iter().map(adopt_received_fd));
                        }
                        _ => {}
                    }
                }
            }
            return Ok(Some((sender, message.bytes, fds)));
        }
    }

    fn take(&self, owner: Pid, message: Message, other: &mut impl FnMut(Message)) {
        // Only the agent's own process answers: a child that kept the
        // channel (forked in C, or a wrapper's) may not answer for it.
        let id = (message.sender == owner)
            .then(|| message.body.get("id").and_then(Value::as_u64))
            .flatten();
        let waiting = id.and_then(|id| self.lock_answers().remove(&id));
        match waiting {
            Some(answer) => {
                let _ = answer.send(message.body);
            }
            None => other(message),
        }
    }

    /// Sends `request` (a JSON object, given an `id` here) with `fds`, and
    /// waits for its answer until `due`.
    pub(crate) fn request(
        &self,
        mut request: serde_json::Map<String, Value>,
        fds: &[OwnedFd],
        due: &Deadline,
    ) -> io::Result<Value> {
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.insert("id".into(), id.into());
        let mut line = serde_json::to_vec(&Value::Object(request))?;
        line.push(b'\n');
        let (answer, answered) = bounded(1);
        self.lock_answers().insert(id, answer);
        let sent = self.send(&line, fds);
        let result = sent.and_then(|()| loop {
            if due.is_cancelled() {
                break Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            let wait = due.remaining().min(Duration::from_millis(100));
            match answered.recv_timeout(wait) {
                Ok(answer) => break Ok(answer),
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the agent's channel closed (its process ended)",
                    ))
                }
                Err(RecvTimeoutError::Timeout) if due.expired() => {
                    break Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the agent did not answer in time (its thread cannot run: a C call holding the GIL?)",
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        });
        self.lock_answers().remove(&id);
        result
    }

    fn send(&self, line: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let controls: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        // Never blocks (a request is far smaller than the socket's buffer;
        // a full buffer means the agent reads nothing: an error), never
        // raises SIGPIPE.
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let sent = sendmsg::<()>(
            self.fd.as_raw_fd(),
            &[IoSlice::new(line)],
            controls,
            flags,
            None,
        )?;
        if sent != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the agent's channel is full (the agent reads nothing)",
            ));
        }
        Ok(())
    }

    fn lock_answers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sender<Value>>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
