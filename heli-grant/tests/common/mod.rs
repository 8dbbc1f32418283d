//! What heli-grant's test files share: a lock and watchdog per test, the
//! Python and the C programs they start (plain or supervised), the lines
//! those print, the temp directories of remote execution, and a way to act
//! as another user.

#![allow(dead_code, unused_imports)]

mod build;
mod python;
mod serial;
mod supervised;
mod target;
mod users;

pub(crate) use build::{build_c, FILTER_PRCTL_C};
pub(crate) use python::{deps_dir, existing, python314, tempdir};
pub(crate) use serial::{heli_dirs, serial, wait_for, SOON};
pub(crate) use supervised::{getpid_answers, identity, Supervised};
pub(crate) use target::{Lines, Target};
pub(crate) use users::as_nobody;
