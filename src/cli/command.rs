//! The client's commands, given on its command line or at its prompt: one
//! `clap` definition parses both, so both accept the same commands.

use clap::{value_parser, Arg, ArgAction, ArgMatches, Args, FromArgMatches, Subcommand};

use std::path::PathBuf;
use std::time::Duration;

use crate::core::profile::{ProfileRequest, DEFAULT_RATE, MAX_RATE};
use crate::core::protocol::Scope;
use crate::core::Pid;

use super::duration;
use super::profile::{Format, Job, Shape};
use super::top::TopOptions;

/// A command of the client.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cmd {
    /// Get ptrace permission and attach pdb (or the --with tool) to the
    /// target, or to another process of its tree
    Attach {
        #[command(flatten)]
        process: ProcessArg,
        /// Take the grant over from another client that holds it
        #[arg(long)]
        force: bool,
        /// Run COMMAND instead of pdb, on this terminal, as a child of this
        /// client; {pid} is replaced by the process's PID, e.g. 'gdb -p
        /// {pid}' or 'py-spy dump --pid {pid}'
        #[arg(long, value_name = "COMMAND")]
        with: Option<String>,
        /// End the debugger after this long (30s, 10m, 1h; whole seconds,
        /// within the controller's --max-grant): warned a minute before
        /// (halfway for two minutes or less), the debugger detaches and
        /// the target runs on
        #[arg(long = "for", value_name = "TIME", value_parser = duration::parse_grant_time)]
        for_: Option<Duration>,
    },
    /// Print the target's PID
    Pid,
    /// List the supervised tree: the target and its descendants (--json for
    /// scripts)
    Ps,
    /// Show what the controller and its target are doing, and the grants
    /// in force (--json for scripts)
    Status,
    /// Print every thread's Python stack, read from memory without
    /// stopping the process (no ptrace right needed; --json for scripts)
    Stack {
        #[command(flatten)]
        scope: ScopeArg,
    },
    /// Sample the Python stacks at a steady rate, never stopping the
    /// processes, and write a flame graph (SVG), folded stacks or a
    /// speedscope profile; Ctrl-C stops and writes what was sampled
    Profile {
        #[command(flatten)]
        scope: ScopeArg,
        #[command(flatten)]
        options: ProfileArgs,
    },
    /// Print the asyncio task tree of the target (or of a process of its
    /// tree): each task, its coroutine stack, the tasks awaiting it; read
    /// from memory as `python -m asyncio pstree` does, without a ptrace
    /// right (--json for scripts)
    Tasks {
        #[command(flatten)]
        process: ProcessArg,
    },
    /// A live view of the functions the target spends its time in, by own
    /// and total samples, like py-spy top (q quits; --iterations N prints
    /// N tables as text; --json one object per refresh)
    Top {
        #[command(flatten)]
        scope: ScopeArg,
        #[command(flatten)]
        options: TopOptions,
    },
    /// Withdraw the ptrace permission given to this client
    Revoke {
        #[command(flatten)]
        process: ProcessArg,
    },
    /// Stop the target and the controller
    Terminate,
    /// Show the controller's recent audit records: who was granted,
    /// refused, revoked, read stacks or profiled what, and when (the
    /// controller's memory of them; --json: JSON Lines, as in its
    /// --audit-log file)
    Audit {
        /// Only the records of this last while: 30s, 10m, 1h [default: all
        /// the controller keeps]
        #[arg(long, value_name = "TIME", value_parser = duration::parse_duration)]
        since: Option<Duration>,
    },
}

impl Cmd {
    /// `attach` on the target, as a bare `attach` means.
    #[cfg(test)]
    pub(crate) fn attach() -> Cmd {
        Cmd::Attach {
            process: ProcessArg(None),
            force: false,
            with: None,
            for_: None,
        }
    }

    /// Whether `--json` means something for it.
    pub(crate) fn has_json(&self) -> bool {
        matches!(
            self,
            Cmd::Ps
                | Cmd::Status
                | Cmd::Stack { .. }
                | Cmd::Tasks { .. }
                | Cmd::Top { .. }
                | Cmd::Audit { .. }
        )
    }
}

/// The process of the target's tree a command is for: `PID` or `--pid PID`;
/// `None`: the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProcessArg(pub(crate) Option<Pid>);

impl FromArgMatches for ProcessArg {
    fn from_arg_matches(matches: &ArgMatches) -> Result<ProcessArg, clap::Error> {
        let given = matches
            .get_one::<Pid>("process")
            .or_else(|| matches.get_one::<Pid>("pid"));
        Ok(ProcessArg(given.copied()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = ProcessArg::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ProcessArg {
    fn augment_args(command: clap::Command) -> clap::Command {
        command
            .arg(
                Arg::new("process")
                    .value_name("PID")
                    .value_parser(value_parser!(Pid))
                    .help("A process of the target's tree (see `ps`) [default: the target]"),
            )
            .arg(
                Arg::new("pid")
                    .long("pid")
                    .value_name("PID")
                    .value_parser(value_parser!(Pid))
                    .conflicts_with("process")
                    .help("The same, as an option"),
            )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        ProcessArg::augment_args(command)
    }
}

/// Which processes `stack` reads: `PID` or `--pid PID`, `all` or `--all`;
/// none of them: the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ScopeArg(pub(crate) Scope);

impl FromArgMatches for ScopeArg {
    fn from_arg_matches(matches: &ArgMatches) -> Result<ScopeArg, clap::Error> {
        let scope = if matches.get_flag("all") {
            Scope::All
        } else if let Some(scope) = matches.get_one::<Scope>("process") {
            *scope
        } else if let Some(pid) = matches.get_one::<Pid>("pid") {
            Scope::Process(*pid)
        } else {
            Scope::Target
        };
        Ok(ScopeArg(scope))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = ScopeArg::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ScopeArg {
    fn augment_args(command: clap::Command) -> clap::Command {
        command
            .arg(
                Arg::new("process")
                    .value_name("PID|all")
                    .value_parser(scope_word)
                    .help(
                        "A process of the target's tree instead of the target, \
                         or all: every one",
                    ),
            )
            .arg(
                Arg::new("pid")
                    .long("pid")
                    .value_name("PID")
                    .value_parser(value_parser!(Pid))
                    .conflicts_with_all(["process", "all"])
                    .help("A process of the target's tree, as an option"),
            )
            .arg(
                Arg::new("all")
                    .long("all")
                    .action(ArgAction::SetTrue)
                    .conflicts_with("process")
                    .help("Every process of the target's tree"),
            )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        ScopeArg::augment_args(command)
    }
}

/// `profile`'s options.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProfileArgs {
    /// How long to sample: 30s, 2m, 500ms [default: until Ctrl-C]
    #[arg(long, value_name = "TIME", value_parser = duration::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Samples a second
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE,
          value_parser = value_parser!(u32).range(1..=i64::from(MAX_RATE)))]
    pub(crate) rate: u32,
    /// The file to write, - for standard output [default: profile.svg,
    /// profile.txt or profile.speedscope.json, by --format]
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// What to write
    #[arg(long, value_enum, default_value_t = Format::Svg)]
    pub(crate) format: Format,
    /// A root frame per thread (`thread TID "name"`): threads apart
    #[arg(long)]
    pub(crate) threads: bool,
    /// Keep the samples of threads that were asleep or waiting (left out
    /// by default)
    #[arg(long)]
    pub(crate) idle: bool,
}

impl ProfileArgs {
    /// The profile these options ask for, of `scope`.
    pub(crate) fn job(&self, scope: Scope) -> Job {
        let duration_ms = self.duration.map_or(0, |duration| {
            u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
        });
        Job {
            request: ProfileRequest::new(scope, self.rate).duration_ms(duration_ms),
            shape: Shape {
                processes: scope == Scope::All,
                threads: self.threads,
                idle: self.idle,
            },
            format: self.format,
            output: self
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(self.format.default_output())),
        }
    }
}

/// `stack`'s word: a pid, or `all` (in any case).
fn scope_word(word: &str) -> Result<Scope, String> {
    if word.eq_ignore_ascii_case("all") {
        return Ok(Scope::All);
    }
    word.parse()
        .map(Scope::Process)
        .map_err(|_| "a PID or all (see ps for the tree's pids)".to_owned())
}
