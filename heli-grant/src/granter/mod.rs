//! The granters: each lets a client ptrace the target its own way, chosen
//! by the kernel's Yama setting.
//!
//! - [`NoopGranter`] (`noop.rs`): nothing to do, any process of the user may
//!   attach.
//! - [`YamaGranter`] (`yama.rs`): has the target name the client with
//!   `prctl(PR_SET_PTRACER)`, by ptrace or by CPython's remote execution.
//! - [`AutoGranter`] and [`auto()`] (`auto.rs`): one of the two, as the
//!   running kernel needs.
//!
//! `names.rs`, beneath them: the names [`GranterChoice`] and [`GrantMethod`]
//! parse from and display as.

mod auto;
mod names;
mod noop;
mod yama;

pub use auto::{auto, AutoGranter, GranterChoice};
pub use noop::NoopGranter;
pub use yama::{GrantMethod, YamaGranter};
