//! The client's commands, given on its command line or at its prompt.

use clap::Subcommand;

use crate::core::protocol::Scope;
use crate::core::Pid;

/// A command of the client.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cmd {
    /// Get ptrace permission and attach pdb (or the --with tool) to the
    /// target, or to another process of its tree
    Attach {
        /// The process of the target's tree to attach to (see `ps`)
        /// [default: the target]
        #[arg(long, value_name = "PID")]
        pid: Option<Pid>,
        /// Take the grant over from another client that holds it
        #[arg(long)]
        force: bool,
        /// Run COMMAND instead of pdb, on this terminal, as a child of this
        /// client; {pid} is replaced by the process's PID, e.g. 'gdb -p
        /// {pid}' or 'py-spy dump --pid {pid}'
        #[arg(long, value_name = "COMMAND")]
        with: Option<String>,
    },
    /// Print the target's PID
    Pid,
    /// List the supervised tree: the target and its descendants (--json for
    /// scripts)
    Ps,
    /// Show what the controller and its target are doing, and the grants
    /// in force (--json for scripts)
    Status,
    /// Print every thread's Python stack, read from memory without
    /// stopping the process (no ptrace right needed; --json for scripts)
    Stack {
        /// A process of the target's tree instead of the target
        #[arg(long, value_name = "PID", conflicts_with = "all")]
        pid: Option<Pid>,
        /// Every process of the target's tree
        #[arg(long)]
        all: bool,
    },
    /// Withdraw the ptrace permission given to this client
    Revoke {
        /// On this process of the tree [default: the target]
        #[arg(long, value_name = "PID")]
        pid: Option<Pid>,
    },
    /// Stop the target and the controller
    Terminate,
}

impl Cmd {
    /// `attach` on the target, as the REPL's bare `attach` means.
    #[cfg(test)]
    pub(crate) fn attach() -> Cmd {
        Cmd::Attach {
            pid: None,
            force: false,
            with: None,
        }
    }

    /// Whether `--json` means something for it.
    pub(crate) fn has_json(&self) -> bool {
        matches!(self, Cmd::Ps | Cmd::Status | Cmd::Stack { .. })
    }
}

/// Which processes `stack` reads, from its options.
pub(crate) fn stack_scope(pid: Option<Pid>, all: bool) -> Scope {
    match (pid, all) {
        (_, true) => Scope::All,
        (Some(pid), false) => Scope::Process(pid),
        (None, false) => Scope::Target,
    }
}
