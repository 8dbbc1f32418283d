//! systemd's service notification protocol (`Type=notify`): the
//! controller's [`Notifier`] when a service manager runs it.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use heli_core::Notifier;
use sd_notify::NotifyState;

/// Tells systemd (or any service manager that speaks its protocol, such as
/// podman's `--sdnotify=container`) how the controller is doing: one
/// datagram per message to the `AF_UNIX` socket `NOTIFY_SOCKET` names, as
/// `sd_notify(3)` defines it: `READY=1`, `STATUS=...`, `STOPPING=1` and
/// `WATCHDOG=1`, with the watchdog's timeout from `WATCHDOG_USEC` (when
/// `WATCHDOG_PID` is unset or names this process).
///
/// The messages are [`sd_notify`]'s [`NotifyState`]s. They are sent here,
/// not by `sd_notify::notify`, for two reasons: that function reads
/// `NOTIFY_SOCKET` at every call (so the variable would have to stay in
/// the environment, where the target would inherit it) and connects to it
/// as a path (so an abstract `@name`, which `sd_notify(3)` allows, is out
/// of its reach). An `SdNotifier` reads the address once, when it is made,
/// and sends each message from a fresh unbound datagram socket, as
/// `sd_notify(3)` does (the kernel adds the credentials systemd checks).
///
/// # Environment
///
/// The target should not inherit these variables (`sd_notify(3)`'s advice:
/// a child would otherwise speak for the service): a program that uses an
/// `SdNotifier` removes [`VARIABLES`](SdNotifier::VARIABLES) from the
/// target's command (`Command::env_remove`). It need not unset them in its
/// own environment, which would race with its threads.
///
/// # Examples
///
/// ```
/// use heli_core::Notifier;
/// use heli_transport::SdNotifier;
/// use std::os::unix::net::UnixDatagram;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notify");
/// let systemd = UnixDatagram::bind(&path)?;
/// let mut notifier = SdNotifier::new(path.as_os_str(), None)?;
/// notifier.ready()?;
/// let mut message = [0; 64];
/// let len = systemd.recv(&mut message)?;
/// assert_eq!(&message[..len], b"READY=1\n");
///
/// // An abstract address.
/// let notifier = SdNotifier::new("@heli-doc-example".as_ref(), None)?;
/// assert_eq!(notifier.address(), "@heli-doc-example");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SdNotifier {
    socket: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for messages.
    address: String,
    watchdog: Option<Duration>,
}

impl SdNotifier {
    /// The variables of systemd's protocol that the target must not
    /// inherit.
    pub const VARIABLES: [&'static str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

    /// The notifier systemd's environment asks for: `None` when
    /// `NOTIFY_SOCKET` is unset or empty (no service manager listens).
    /// It reads the environment and changes nothing in it.
    ///
    /// # Errors
    ///
    /// When `NOTIFY_SOCKET` is not an address this notifier can reach (see
    /// [`new`](SdNotifier::new)).
    pub fn from_env() -> io::Result<Option<SdNotifier>> {
        let address = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
        if address.is_empty() {
            return Ok(None);
        }
        SdNotifier::new(&address, sd_notify::watchdog_enabled()).map(Some)
    }

    /// A notifier that sends to `address`, a path (`/run/systemd/notify`)
    /// or, after `@`, an abstract name (`@/org/freedesktop/systemd1/notify`),
    /// and pings a watchdog whose timeout is `watchdog`, if any.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for any other address (systemd's
    /// `vsock:` addresses among them) or one too long for `AF_UNIX`. An
    /// address nobody listens on is not an error here: sending to it fails.
    pub fn new(address: &OsStr, watchdog: Option<Duration>) -> io::Result<SdNotifier> {
        let bytes = address.as_bytes();
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET={}: {why}", address.to_string_lossy()),
            )
        };
        let socket = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(address),
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            _ => {
                return Err(invalid(
                    "not an AF_UNIX socket (a path, or @ and an abstract name)",
                ))
            }
        }
        .map_err(|err| invalid(&err.to_string()))?;
        Ok(SdNotifier {
            socket,
            address: address.to_string_lossy().into_owned(),
            watchdog,
        })
    }

    /// The address it sends to, as `NOTIFY_SOCKET` gave it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `state` as one datagram.
    fn send(&self, state: NotifyState<'_>) -> io::Result<()> {
        let message = format!("{state}\n");
        let sent = UnixDatagram::unbound()?
            .send_to_addr(message.as_bytes(), &self.socket)
            .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", self.address)))?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("{}: sent {sent} of {} bytes", self.address, message.len()),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for SdNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SdNotifier")
            .field("address", &self.address)
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl Notifier for SdNotifier {
    fn ready(&mut self) -> io::Result<()> {
        self.send(NotifyState::Ready)
    }

    /// `STATUS=<text>`, its newlines made spaces (a newline would end
    /// the field).
    fn status(&mut self, text: &str) -> io::Result<()> {
        let line = text.replace('\n', " ");
        self.send(NotifyState::Status(&line))
    }

    fn stopping(&mut self) -> io::Result<()> {
        self.send(NotifyState::Stopping)
    }

    fn watchdog(&mut self) -> io::Result<()> {
        self.send(NotifyState::Watchdog)
    }

    fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0; 1024];
        let len = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..len].to_vec()).unwrap()
    }

    #[test]
    fn every_message_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let mut notifier = SdNotifier::new(path.as_os_str(), Some(Duration::from_secs(3))).unwrap();
        assert_eq!(notifier.watchdog_timeout(), Some(Duration::from_secs(3)));
        notifier.ready().unwrap();
        notifier.status("target PID 1\nrunning").unwrap();
        notifier.watchdog().unwrap();
        notifier.stopping().unwrap();
        let got: Vec<String> = (0..4).map(|_| recv(&systemd)).collect();
        assert_eq!(
            got,
            [
                "READY=1\n",
                "STATUS=target PID 1 running\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n"
            ]
        );
    }

    #[test]
    fn an_abstract_address_is_reached_by_name() {
        let name = format!("heli-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let mut notifier = SdNotifier::new(format!("@{name}").as_ref(), None).unwrap();
        assert_eq!(notifier.watchdog_timeout(), None);
        notifier.ready().unwrap();
        assert_eq!(recv(&systemd), "READY=1\n");
        // The same name as a path is another address: nobody there.
        let mut path = SdNotifier::new(format!("/{name}").as_ref(), None).unwrap();
        assert_eq!(path.ready().unwrap_err().kind(), io::ErrorKind::NotFound,);
    }

    #[test]
    fn an_address_nobody_listens_on_fails_each_send_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        drop(UnixDatagram::bind(&path).unwrap());
        let mut notifier = SdNotifier::new(path.as_os_str(), None).unwrap();
        let err = notifier.ready().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", path.display())),
            "{err}"
        );
        let err = notifier.watchdog().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn other_addresses_are_refused_naming_them() {
        for address in ["vsock:2:1234", "relative/notify", "x"] {
            let err = SdNotifier::new(address.as_ref(), None).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{address}");
            assert_eq!(
                err.to_string(),
                format!(
                    "NOTIFY_SOCKET={address}: not an AF_UNIX socket (a path, or @ and an abstract name)"
                )
            );
        }
        let long = format!("/{}", "x".repeat(200));
        let err = SdNotifier::new(long.as_ref(), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().starts_with("NOTIFY_SOCKET=/xxx"), "{err}");
    }
}
