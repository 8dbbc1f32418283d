//! Process facts for heli, from Linux's `/proc`: the one place that reads
//! it.
//!
//! - [`ProcFs`]: the [`Processes`](heli_core::Processes) table the
//!   controller asks who a client is (identity: pid and start time; parent;
//!   state; real and effective user), and through it whether a process is
//!   another's descendant.
//! - [`Proc`]: one process opened once, every fact read relative to its
//!   `/proc` directory (so a reused pid cannot mix in): its
//!   [info](Proc::info), its threads and [their status](Proc::thread_status)
//!   and [system call](Proc::thread_syscall) (what ptrace cares about), its
//!   [memory map](Proc::maps), auxiliary vector, program and capabilities,
//!   and whether a cgroup freezer holds it ([`is_frozen`]); what `ps`
//!   shows of it ([`usage`](Proc::usage),
//!   [`command_line`](Proc::command_line), cut at [`MAX_COMMAND_LINE`])
//!   and which program file it runs ([`exe_id`](Proc::exe_id)).
//! - [`ProcessHandle`]: one process held by a pidfd, which tells when it
//!   has exited however soon its pid is reused (what a listener keeps of
//!   a connected client).
//! - [`descendants`]: a process and its living descendants, for a
//!   supervisor's whole tree ([`members`]: with what `ps` shows of each;
//!   [`member`]: one process alone, read as `members` reads each);
//!   [`group_members`]: a process group's.
//! - [`Memory`]: another process's memory, read (and written) without
//!   stopping it.
//!
//! Parsing is the [`procfs`] crate's; this crate turns its answers into
//! heli's vocabulary ([`Pid`](heli_core::Pid),
//! [`ProcessId`](heli_core::ProcessId), ...) and decides once what a
//! failed read means: a process that is gone is `Ok(None)` (or
//! [`NotFound`](std::io::ErrorKind::NotFound)), never a parse error.
//! There is no `unsafe` code here.
//!
//! # Examples
//!
//! ```
//! use heli_core::{Pid, Processes};
//! use heli_proc::{Proc, ProcFs};
//!
//! let me = ProcFs.process(Pid::this())?.expect("this process runs");
//! assert_eq!(me.uid, nix::unistd::getuid().as_raw());
//! let exe = Proc::open_existing(Pid::this())?.exe()?;
//! assert_eq!(exe, std::env::current_exe()?);
//! # Ok::<(), std::io::Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod freezer;
mod handle;
mod maps;
mod memory;
mod process;
mod tree;
mod usage;

pub use freezer::is_frozen;
pub use handle::ProcessHandle;
pub use maps::{Mapped, Mapping};
pub use memory::Memory;
pub use process::{on_kernel_file_system, Proc, ProcFs, Syscall, ThreadStatus};
pub use tree::{descendants, group_members, member, members, Member};
pub use usage::{FileId, Usage, MAX_COMMAND_LINE};
