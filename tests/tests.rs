//! heli's end-to-end tests: one binary, real processes, real Python 3.14.
//!
//! The example binaries are built by `cargo test` itself; the tests find
//! them next to this binary. Python 3.14 comes from `$HELI_PYTHON` or the
//! private install of `scripts/install-python314.sh`: without it the tests
//! that need it fail (they never skip).

#![allow(unreachable_pub)]

#[allow(dead_code)]
mod deps;
mod util;

mod agent;
mod attach;
mod audit;
mod client_tree;
mod dialect;
mod embed;
#[allow(dead_code)]
mod freezer;
mod frozen;
mod gunicorn;
mod init;
mod inspect;
mod profile;
mod refusals;
mod remote_grant;
mod repl;
mod service;
mod sessions;
mod shell;
mod supervise;
mod tasks;
mod terminal;
mod time_limit;
mod top;
mod tree;
mod with_tool;
mod zombie_leader;
