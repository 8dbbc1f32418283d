//! CPython 3.14's remote debugging interface (PEP 768), natively: find a
//! target's `_PyRuntime`, validate its `_Py_DebugOffsets`, read its thread
//! stacks, and ask it to run a script.
//!
//! Nothing here runs Python in the calling process, attaches with ptrace or
//! stops the target: it reads and writes the target's memory with
//! `process_vm_readv`/`process_vm_writev` (or `/proc/PID/mem`), which needs
//! the right to ptrace the target, as its parent has under Yama
//! `ptrace_scope=1`.
//!
//! - [`PyProcess::open`]: walks `/proc/PID/maps` for files whose name
//!   contains `python`, finds the `.PyRuntime` section in their ELF headers
//!   ([`PyRuntimeSection`]), and validates the [`DebugOffsets`] found there.
//! - [`PyProcess::stack_dump`]: every thread's Python stack, as
//!   [`heli_core::stacks::ThreadStack`]s.
//! - [`PyProcess::async_tasks`]: its asyncio tasks, as
//!   [`heli_core::tasks::AsyncTasks`] (`asyncio.rs`, through the
//!   `_asyncio` module's own debug offsets).
//! - [`PyProcess::remote_exec`]: `sys.remote_exec`'s write sequence, made
//!   safe for the target (see `remote_exec.rs`);
//!   [`PyProcess::remote_prctl`], [`remote_prctl`] and [`remote_exec_prctl`]
//!   build a grant on it.
//!
//! Offsets are never hard-coded: each is read from the target; only the
//! order of the fields of `_Py_DebugOffsets` is known per minor version.
//!
//! The parts, from the bottom: `version.rs` ([`PyVersion`]), `error.rs`
//! ([`Pep768Error`]) and `cache.rs` (the bounded memory `elf.rs` and
//! `probe.rs` keep between calls); `memory.rs` (the target's memory), `elf.rs` (the
//! `.PyRuntime` section) and `offsets.rs` ([`DebugOffsets`]); `process.rs`
//! ([`PyProcess`]); and on it `stack.rs` ([`stack_dump`]), `asyncio.rs` (which reads
//! code objects and strings through `stack.rs`), `probe.rs`
//! (which processes are CPythons, remembered for `PS`) and
//! `remote_exec.rs` ([`remote_exec()`]), which writes its scripts where
//! `script_dir.rs` says.

mod asyncio;
mod cache;
mod elf;
mod error;
mod memory;
mod offsets;
mod probe;
mod process;
mod remote_exec;
mod script_dir;
mod stack;
mod version;

pub use elf::PyRuntimeSection;
pub use error::{Pep768Error, Pep768ErrorKind};
pub use offsets::DebugOffsets;
pub(crate) use probe::python_version;
pub use process::PyProcess;
pub use remote_exec::{remote_exec, remote_exec_prctl, remote_prctl, RemoteExec};
pub use stack::{stack_dump, MAX_DUMP_TEXT};
pub use version::PyVersion;
