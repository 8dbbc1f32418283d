//! `attach --with COMMAND`: another ptrace tool instead of pdb, its command
//! line split like a shell would, `{pid}` replaced by the target's PID.

use std::path::Path;

use super::exit::{ClientExit, Failure};
use super::python::{is_executable, which};

/// An `--with` command line, split like a shell would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tool(Vec<String>);

impl Tool {
    /// Splits `template`; an empty or unbalanced one is bad usage.
    pub(crate) fn parse(template: &str) -> Result<Tool, Failure> {
        match shlex::split(template) {
            Some(words) if !words.is_empty() => Ok(Tool(words)),
            Some(_) => Err(Failure::new(
                ClientExit::Usage,
                "--with needs a command, e.g. --with 'gdb -p {pid}'",
            )),
            None => Err(Failure::new(
                ClientExit::Usage,
                format!("--with {template:?}: unmatched quote"),
            )),
        }
    }

    /// The command line for `target`: every `{pid}` replaced.
    pub(crate) fn for_target(&self, target: u32) -> Vec<String> {
        self.0
            .iter()
            .map(|word| word.replace("{pid}", &target.to_string()))
            .collect()
    }

    /// The command line for `target`, its program found in `PATH` (or, named
    /// with a `/`, executable); a missing program makes attaching
    /// impossible.
    pub(crate) fn resolve(self, target: u32) -> Result<Vec<String>, Failure> {
        let argv = self.for_target(target);
        let program = Path::new(&argv[0]);
        let found = if argv[0].contains('/') {
            is_executable(program)
        } else {
            which(program.as_os_str()).is_some()
        };
        if !found {
            return Err(Failure::new(
                ClientExit::Impossible,
                not_installed(&argv[0]),
            ));
        }
        Ok(argv)
    }
}

/// "gdb not found: install it, e.g. apt-get install gdb".
pub(crate) fn not_installed(program: &str) -> String {
    let name = tool_name(program);
    let how = match name.as_str() {
        "gdb" | "strace" | "ltrace" | "lldb" => format!("apt-get install {name}"),
        "py-spy" | "pystack" | "memray" => format!("pip install {name}"),
        "austin" => "pip install austin-dist".to_owned(),
        _ if program.contains('/') => return format!("{program} not found or not executable"),
        _ => return format!("{name} not found in PATH: install it, or give its full path"),
    };
    format!("{name} not found: install it, e.g. {how}")
}

/// The program's file name: `gdb` for `/usr/bin/gdb`.
pub(crate) fn tool_name(program: &str) -> String {
    Path::new(program)
        .file_name()
        .map_or_else(|| program.to_owned(), |n| n.to_string_lossy().into_owned())
}
