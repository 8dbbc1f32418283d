//! heli: attach a debugger to a supervised process later, even under Yama
//! `ptrace_scope=1`.
//!
//! This facade re-exports the four crates heli is made of:
//! [`core`] (traits, protocol, controller, client), [`proc`] (process facts
//! from Linux's `/proc`), [`transport`] (named pipes, Unix socket) and
//! [`grant`] (granters, the process supervisor and the CPython inspector).
//! With the `cli` feature (on by default) it also holds `heli::cli`, the
//! controller and client programs that `examples/controller.rs` and
//! `examples/client.rs` run; `default-features = false` leaves them, and
//! their dependencies (clap, rustyline, ...), out. See the README for the
//! design.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use heli_core as core;
pub use heli_grant as grant;
pub use heli_proc as proc;
pub use heli_transport as transport;

#[cfg(feature = "cli")]
pub mod cli;

pub use heli_core::{
    Client, Controller, Error, ErrorKind, Granter, Inspector, Pid, Supervisor, Transport,
};

/// The README's code blocks, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
