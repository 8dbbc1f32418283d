//! One Unix stream socket per session, in a private runtime directory, with
//! authenticated peers.
//!
//! The files, from the ground up: `runtime_dir` (where the runtime
//! directory is, private directories, file checks), `peer` (connecting
//! with a deadline, peer credentials) and `fds` (file descriptors sent and
//! received with a reply line); `session` (names, lock files, the
//! session list, removing dead sockets), `connections` (the table of open
//! connections: the limit, idle ones, making room) and `serve` (one
//! accepted connection); `listener` (binding, the accept loop, admission) and
//! `client` ([`UnixSocketConnection`]); `transport`
//! ([`UnixSocketTransport`], the [`Transport`](heli_core::Transport) on
//! top of them).

mod client;
mod connections;
mod fds;
mod listener;
mod peer;
mod runtime_dir;
mod serve;
mod session;
mod transport;

pub use client::UnixSocketConnection;
pub use listener::UnixSocketListener;
pub use session::{SessionEntry, SessionState};
pub use transport::UnixSocketTransport;
