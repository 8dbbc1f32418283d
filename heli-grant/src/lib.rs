//! Granters and the process supervisor of heli; all of heli's `unsafe` code.
//!
//! - [`NoopGranter`]: for kernels where any process of the user may ptrace
//!   the target (no Yama, or `ptrace_scope=0`).
//! - [`PtraceScope`]: reads Yama's setting and explains it.
//! - [`ProcessSupervisor`]: runs the target as a child, kills it with its
//!   parent, signals and reaps it through a pidfd.
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
//!     let _granter = NoopGranter;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

mod noop;
mod process;
mod scope;
mod sys;

pub use noop::NoopGranter;
pub use process::{ChildWaits, ChildWaitsGuard, ProcessSupervisor};
pub use scope::{PtraceScope, PTRACE_SCOPE_PATH};
