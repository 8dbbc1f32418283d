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
    pub(crate) fn for_target(&self, target: crate::core::Pid) -> Vec<String> {
        self.0
            .iter()
            .map(|word| word.replace("{pid}", &target.to_string()))
            .collect()
    }

    /// The command line for `target`, its program found in `PATH` (or, named
    /// with a `/`, executable); a missing program makes attaching
    /// impossible.
    pub(crate) fn resolve(self, target: crate::core::Pid) -> Result<Vec<String>, Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(raw: u32) -> crate::core::Pid {
        crate::core::Pid::new(raw).unwrap()
    }

    fn words(tool: &Tool) -> Vec<&str> {
        tool.0.iter().map(String::as_str).collect()
    }

    #[test]
    fn with_is_split_like_a_shell_would() {
        let tool = Tool::parse("gdb -p {pid}").unwrap();
        assert_eq!(words(&tool), ["gdb", "-p", "{pid}"]);
        let tool = Tool::parse("  'py-spy' dump   --pid \"{pid}\" ").unwrap();
        assert_eq!(words(&tool), ["py-spy", "dump", "--pid", "{pid}"]);
        let tool = Tool::parse(r#"sh -c 'echo "a b" {pid}'"#).unwrap();
        assert_eq!(words(&tool), ["sh", "-c", r#"echo "a b" {pid}"#]);
    }

    #[test]
    fn an_empty_or_unbalanced_with_is_bad_usage() {
        for empty in ["", "   ", " \t "] {
            let failure = Tool::parse(empty).unwrap_err();
            assert_eq!(failure.exit, ClientExit::Usage, "{empty:?}");
            assert_eq!(
                failure.message,
                "--with needs a command, e.g. --with 'gdb -p {pid}'"
            );
        }
        let failure = Tool::parse("gdb 'unclosed").unwrap_err();
        assert_eq!(failure.exit, ClientExit::Usage);
        assert_eq!(
            failure.message,
            r#"--with "gdb 'unclosed": unmatched quote"#
        );
    }

    #[test]
    fn every_pid_is_replaced() {
        let tool = Tool::parse("strace -p {pid} -o /tmp/trace.{pid} --x={pid}{pid}").unwrap();
        assert_eq!(
            tool.for_target(pid(4321)),
            [
                "strace",
                "-p",
                "4321",
                "-o",
                "/tmp/trace.4321",
                "--x=43214321"
            ]
        );
        let tool = Tool::parse("true").unwrap();
        assert_eq!(tool.for_target(pid(1)), ["true"]);
    }

    #[test]
    fn an_installed_tool_resolves() {
        let argv = Tool::parse("sh -c 'exit {pid}'")
            .unwrap()
            .resolve(pid(42))
            .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(argv, ["sh", "-c", "exit 42"]);
        let argv = Tool::parse("/bin/sh -c true").unwrap().resolve(pid(42));
        assert!(argv.is_ok());
    }

    #[test]
    fn a_missing_tool_makes_attaching_impossible() {
        for (tool, message) in [
            (
                "heli-no-such-tool -p {pid}",
                "heli-no-such-tool not found in PATH: install it, or give its full path",
            ),
            (
                "/nonexistent/bin/tool",
                "/nonexistent/bin/tool not found or not executable",
            ),
            // A tool heli knows: how to install it.
            (
                "/nonexistent/bin/gdb -p {pid}",
                "gdb not found: install it, e.g. apt-get install gdb",
            ),
        ] {
            let failure = Tool::parse(tool).unwrap().resolve(pid(42)).unwrap_err();
            assert_eq!(failure.exit, ClientExit::Impossible, "{tool}");
            assert_eq!(failure.message, message);
        }
    }

    #[test]
    fn not_installed_says_how_to_install() {
        let expected = [
            ("gdb", "gdb not found: install it, e.g. apt-get install gdb"),
            (
                "strace",
                "strace not found: install it, e.g. apt-get install strace",
            ),
            (
                "ltrace",
                "ltrace not found: install it, e.g. apt-get install ltrace",
            ),
            (
                "lldb",
                "lldb not found: install it, e.g. apt-get install lldb",
            ),
            (
                "py-spy",
                "py-spy not found: install it, e.g. pip install py-spy",
            ),
            (
                "pystack",
                "pystack not found: install it, e.g. pip install pystack",
            ),
            (
                "memray",
                "memray not found: install it, e.g. pip install memray",
            ),
            (
                "austin",
                "austin not found: install it, e.g. pip install austin-dist",
            ),
            (
                "/usr/local/bin/py-spy",
                "py-spy not found: install it, e.g. pip install py-spy",
            ),
            ("./mytool", "./mytool not found or not executable"),
            (
                "mytool",
                "mytool not found in PATH: install it, or give its full path",
            ),
        ];
        for (program, message) in expected {
            assert_eq!(not_installed(program), message, "{program}");
        }
    }

    #[test]
    fn tool_names_are_file_names() {
        assert_eq!(tool_name("/usr/bin/gdb"), "gdb");
        assert_eq!(tool_name("gdb"), "gdb");
        assert_eq!(tool_name("./bin/py-spy"), "py-spy");
    }
}
