//! What both transports' test files share: watchdogs and bounded waits,
//! file helpers, and a served listener answered by a fake controller.

#![allow(dead_code, unused_imports)]

mod files;
mod server;
mod watch;

pub(crate) use files::{
    expect_refused, expect_unusable, is_root, mode_of, names_in, private_dir, NOBODY,
};
pub(crate) use server::{
    as_pid, ask, counting, line_of, standard, told, Fresh, Seen, Server, TARGET,
};
pub(crate) use watch::{bounded, join_within, wait_until};
