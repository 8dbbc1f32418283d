//! The heli client: asks the controller for ptrace rights over its target
//! and attaches pdb (or another ptrace tool) to it. The program is
//! `heli::cli::client`.
//!
//! ```text
//! cargo run --example client                # interactive: attach, status, quit, help
//! cargo run --example client -- attach      # one command, then exit
//! cargo run --example client -- attach --with 'gdb -p {pid}'
//! cargo run --example client -- --list      # the running sessions (--json for scripts)
//! ```

fn main() -> std::process::ExitCode {
    heli::cli::client::main()
}
