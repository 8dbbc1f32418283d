//! The `controller` and `client` programs, for `cargo run --example
//! controller` and `cargo run --example client` (or a `main.rs` of your
//! own): their options, output and exit statuses. Needs the `cli` feature
//! (on by default); without it the facade is the four crates alone, and
//! clap, rustyline and the programs' other dependencies are not built.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     heli::cli::client::main()
//! }
//! ```
//!
//! What scripts may rely on: the exit statuses ([`ClientExit`],
//! [`ControllerExit`]), and the JSON of `client status --json`,
//! `client ps --json`, `client stack --json`, `client top --json` and
//! `client --list --json`.

mod attach;
pub mod client;
mod command;
pub mod controller;
mod duration;
mod exit;
mod profile;
pub mod python;
mod render;
mod repl;
mod sanitize;
mod screen;
mod shell;
mod source;
mod time_limit;
mod tool;
mod top;
mod transport;

pub use exit::{ClientExit, ControllerExit};
