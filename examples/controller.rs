//! The heli controller: runs a target and lets clients attach a debugger to
//! it later. The program is `heli::cli::controller`.
//!
//! ```text
//! cargo run --example controller -- examples/target.py
//! cargo run --example controller -- -- ./my-server --port 8080
//! ```

fn main() -> std::process::ExitCode {
    heli::cli::controller::main()
}
