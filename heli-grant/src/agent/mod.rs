//! heli's agent: code the controller sets up inside the Python processes
//! it starts, without any change to their code, so that pdb can attach
//! where no ptrace is allowed at all (Yama's `ptrace_scope` 2 and 3).
//!
//! - `python/`: the agent's own files (a `sitecustomize` that loads it and
//!   then the process's own `sitecustomize`; the agent; the script it runs
//!   on the main thread) and the client's side ([`CLIENT_SCRIPT`]).
//! - `dir`: the private directory the files are written to.
//! - `channel`: the controller's end of an agent's channel.
//! - `host`: [`AgentHost`], heli-grant's [`heli_core::Agent`].

mod channel;
mod dir;
mod host;

pub use host::AgentHost;

/// The client's side of an attach through the agent, for
/// `python3 -c CLIENT_SCRIPT <pid> <target's Python version> <pdb stream fd>
/// <interrupt fd>` (both descriptors inherited): waits for pdb to start in
/// the target's main thread (saying so after a second; Ctrl-C gives up
/// without touching the target, exit 130), then runs pdb's own remote
/// client (`pdb._PdbClient`, as `python -m pdb -p` does) on the terminal.
/// Exit 2 when the client's Python is not of the target's minor version.
pub const CLIENT_SCRIPT: &str = include_str!("python/client.py");
