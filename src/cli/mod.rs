//! The `controller` and `client` programs (feature `cli`).

pub mod client;
mod common;
pub mod controller;
