//! Granters and the process supervisor of heli; all of heli's `unsafe` code.
//!
//! - [`NoopGranter`]: for kernels where any process of the user may ptrace
//!   the target (no Yama, or `ptrace_scope=0`).
//! - [`YamaGranter`]: for `ptrace_scope=1`; the controller, the target's
//!   parent, has the target call `prctl(PR_SET_PTRACER, client)` by
//!   injecting that one system call with ptrace ([`SyscallInjector`]), and
//!   checks that it returned 0.
//! - [`AutoGranter`] and [`auto`]: the granter the running kernel needs.
//! - [`PtraceScope`]: reads Yama's setting and explains it.
//! - [`PyProcess`]: CPython 3.14's remote debugging interface (PEP 768),
//!   natively: read-only stack dumps ([`stack_dump`]) and remote execution
//!   of a script ([`remote_exec`]; [`remote_exec_prctl`] grants with it),
//!   through the target's memory, without stopping it.
//! - [`ProcessSupervisor`]: runs the target as a child, kills it with its
//!   parent, signals and reaps it through a pidfd.
//! - [`one_malloc_arena`]: one `malloc` arena for all of a controller's
//!   threads, which keeps its memory small.
//!
//! The supervisor lives here, beside the granters, because the controller is
//! both the target's reaper and (with Yama) its tracer: the two must agree on
//! who waits for the child.
//!
//! The system calls nix lacks are wrapped in one private module, each
//! `unsafe` block with a `SAFETY:` comment.
//!
//! # Examples
//!
//! ```
//! use heli_grant::{NoopGranter, PtraceScope};
//!
//! let scope = PtraceScope::current()?;
//! println!("ptrace_scope: {scope}: {}", scope.explain());
//! if matches!(scope, PtraceScope::NoYama | PtraceScope::Classic) {
//!     let _granter = NoopGranter::default();
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

mod agent;
mod granter;
mod inspector;
mod own_tree;
mod ptrace;
mod python;
mod scope;
mod supervisor;
mod sys;
#[cfg(test)]
mod test_python;
mod wait;

pub use agent::{AgentHost, CLIENT_SCRIPT};
pub use granter::{auto, AutoGranter, GrantMethod, GranterChoice, NoopGranter, YamaGranter};
pub use inspector::PythonInspector;
pub use ptrace::{Injection, SyscallInjector};
pub use python::{
    remote_exec, remote_exec_prctl, remote_prctl, stack_dump, DebugOffsets, Pep768Error,
    Pep768ErrorKind, PyProcess, PyRuntimeSection, PyVersion, RemoteExec, MAX_DUMP_TEXT,
};
pub use scope::{PtraceScope, PTRACE_SCOPE_PATH};
pub use supervisor::{become_subreaper, signal_descendants, ProcessSupervisor};
pub use sys::{kill_with_parent, one_malloc_arena, set_inheritable};
pub use wait::{ChildWaits, ChildWaitsGuard};
