//! The client's commands, given on its command line or at its prompt.

use clap::Subcommand;

/// A command of the client.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cmd {
    /// Get ptrace permission and attach pdb (or the --with tool) to the target
    Attach {
        /// Take the grant over from another client that holds it
        #[arg(long)]
        force: bool,
        /// Run COMMAND instead of pdb, on this terminal, as a child of this
        /// client; {pid} is replaced by the target's PID, e.g. 'gdb -p {pid}'
        /// or 'py-spy dump --pid {pid}'
        #[arg(long, value_name = "COMMAND")]
        with: Option<String>,
    },
    /// Print the target's PID
    Pid,
    /// Show what the controller and its target are doing (--json for scripts)
    Status,
    /// Print every thread's Python stack in the target, read from its
    /// memory without stopping it (no ptrace right needed)
    Stack,
    /// Withdraw the ptrace permission given to this client
    Revoke,
    /// Stop the target and the controller
    Terminate,
}
