//! The transport the programs use, chosen on their command line.

/// How clients reach the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TransportKind {
    /// A Unix socket per session in the user's runtime directory
    /// (authenticated, many clients at once)
    Socket,
    /// The original's named pipes (one client at a time)
    Fifo,
}
