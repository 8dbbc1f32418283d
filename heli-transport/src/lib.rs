//! Transports for heli: how clients reach a controller.
//!
//! Each implementation of [`heli_core::Transport`] lives in a file of its
//! own:
//!
//! - [`UnixSocketTransport`]: one Unix socket per controller (a named
//!   *session*) in a private runtime directory; many clients at once, each
//!   authenticated by its peer credentials (user, process and its start
//!   time, reported with every request as [`heli_core::Credentials`] while
//!   that process runs, from which the controller decides what it may be
//!   granted); idle connections are closed, and make room at the limit;
//!   [`UnixSocketTransport::sessions`] lists the sessions.
//! - [`FifoTransport`]: two named pipes in a private directory, the layout
//!   and wire format of the original Python helicopter-parent, so its
//!   clients work unchanged; it cannot authenticate its clients.
//!
//! Beside them, [`AuditLog`] is the controller's audit trail (a
//! [`heli_core::Audit`]): a JSON Lines file appended to, with the rules
//! that make it trustworthy, and [`SdNotifier`] is the controller's line to the service
//! manager that runs it (a [`heli_core::Notifier`]): systemd's `Type=notify`
//! protocol over the `AF_UNIX` datagram socket `NOTIFY_SOCKET` names.
//!
//! The transports speak the line protocol of [`heli_core::protocol`], bound
//! every wait by a deadline, and are stopped through a [`StopHandle`].
//!
//! # Examples
//!
//! A controller end and a client end in a private directory:
//!
//! ```
//! use heli_core::{Connection, Listener, Stopper, Transport, exchange};
//! use heli_core::protocol::Request;
//! use heli_transport::FifoTransport;
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir()?;
//! let transport = FifoTransport::new(dir.path().join("pipes"));
//! let mut listener = transport.listen()?;
//! let stop = listener.stopper();
//! let (events_tx, events) = crossbeam_channel::bounded(1);
//! let server = std::thread::spawn(move || listener.serve(&events_tx));
//!
//! // A controller that answers every request with READY.
//! let answer = std::thread::spawn(move || {
//!     if let Ok(heli_core::Event::Request(incoming)) = events.recv() {
//!         incoming.reply(heli_core::protocol::Reply::Ready);
//!     }
//! });
//! let mut connection = transport.connect(Duration::from_secs(2))?;
//! let reply = connection.request(Request::Terminate, Duration::from_secs(2))?;
//! assert_eq!(reply, heli_core::protocol::Reply::Ready);
//! answer.join().unwrap();
//! stop.stop();
//! server.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// One call needs `unsafe`: adopting the file descriptors a reply brought
// (`unix_socket/fds.rs`, `adopt`).
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod audit_log;
mod fifo;
mod io;
mod sd_notify;
mod stop;
mod unix_socket;

pub use audit_log::{AuditLog, DESCRIBE_DEADLINE};
pub use fifo::{FifoConnection, FifoListener, FifoTransport};
pub use sd_notify::SdNotifier;
pub use stop::StopHandle;
pub use unix_socket::{
    SessionEntry, SessionState, UnixSocketConnection, UnixSocketListener, UnixSocketTransport,
};
