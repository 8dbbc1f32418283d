//! Shell integration of both programs: completion scripts (clap_complete)
//! and man pages (clap_mangen), generated from the same clap definitions
//! that parse their command lines, so they cannot drift from them.
//!
//! The client asks for them with subcommands (`client completions bash`,
//! `client man`), the controller with options (`controller --completions
//! bash`, `controller --man`): its positional arguments are the target's
//! command line, where `completions` would be the program to run.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use clap::Command;
pub(crate) use clap_complete::Shell;

/// Writes `shell`'s completion script for the program `command` describes,
/// installed under the name `bin`, to `out`.
pub(crate) fn completions(
    mut command: Command,
    bin: &str,
    shell: Shell,
    out: &mut dyn Write,
) -> io::Result<()> {
    // clap_complete panics on a write error; write to memory first.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, bin, &mut script);
    quiet_pipe(out.write_all(&script).and_then(|()| out.flush()))
}

/// The man page (roff, section 1) of the program `command` describes,
/// named `bin`, to `out`.
pub(crate) fn man_page(command: Command, bin: &'static str, out: &mut dyn Write) -> io::Result<()> {
    let written = clap_mangen::Man::new(named(command, bin)).render(out);
    quiet_pipe(written.and_then(|()| out.flush()))
}

/// A reader that stopped reading (`client man | head`) is no failure.
fn quiet_pipe(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes the man pages of `command` (named `bin`) into `dir`, created if
/// need be: `BIN.1`, and `BIN-SUB.1` for each of its subcommands, as
/// `clap_mangen::generate_to` names them. Returns the files' names, in
/// that order.
pub(crate) fn man_pages_to(
    command: Command,
    bin: &'static str,
    dir: &Path,
) -> io::Result<Vec<String>> {
    fs::create_dir_all(dir)?;
    let mut command = named(command, bin).disable_help_subcommand(true);
    // Gives each subcommand its display name, `client-attach`.
    command.build();
    let pages = std::iter::once(&command)
        .chain(command.get_subcommands().filter(|sub| !sub.is_hide_set()))
        .map(|command| clap_mangen::Man::new(command.clone()));
    let mut written = Vec::new();
    for man in pages {
        man.generate_to(dir)?;
        written.push(man.get_filename());
    }
    Ok(written)
}

/// `command` under its installed name, also in its usage lines.
fn named(command: Command, bin: &'static str) -> Command {
    command.name(bin).bin_name(bin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn toy() -> Command {
        Command::new("heli")
            .about("A toy")
            .arg(Arg::new("loud").long("loud").action(ArgAction::SetTrue))
            .subcommand(Command::new("attach").about("Attach"))
            .subcommand(Command::new("hidden").hide(true))
    }

    #[test]
    fn completions_name_the_installed_program() {
        let mut out = Vec::new();
        completions(toy(), "client", Shell::Bash, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("_client()"), "{script}");
        assert!(script.contains("attach"), "{script}");
        assert!(script.contains("--loud"), "{script}");
    }

    #[test]
    fn a_failed_write_is_an_error_not_a_panic() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = completions(toy(), "client", Shell::Zsh, &mut Full).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(man_page(toy(), "client", &mut Full).is_err());
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        completions(toy(), "client", Shell::Bash, &mut Closed).unwrap();
        man_page(toy(), "client", &mut Closed).unwrap();
    }

    #[test]
    fn man_page_is_roff_named_after_the_program() {
        let mut out = Vec::new();
        man_page(toy(), "client", &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains(".TH client 1"), "{page}");
        assert!(page.contains(".SH NAME"), "{page}");
    }

    #[test]
    fn man_pages_to_writes_one_per_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages_to(toy(), "client", &dir.path().join("man1")).unwrap();
        assert_eq!(written, ["client.1", "client-attach.1"]);
        let attach = fs::read_to_string(dir.path().join("man1/client-attach.1")).unwrap();
        assert!(attach.contains(".TH client-attach 1"), "{attach}");
        assert!(!dir.path().join("man1/client-hidden.1").exists());
    }
}
