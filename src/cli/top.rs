//! `client top`: a live view of where the processes of the target's tree
//! spend their time, like `py-spy top`. The controller samples their
//! stacks (`PROFILE`); each refresh collects what it counted since the
//! last one (`SAMPLES`) into a [`Table`] of functions, by the samples in
//! which each was the innermost frame (own) or anywhere in the stack
//! (total, once per sample however deep the recursion).
//!
//! The table and its layout into lines are here, tested without a
//! terminal; [`screen`](super::screen) draws the lines and reads the keys.
//! Without a terminal on stdout, or with `--iterations N`, `--once` or
//! `--json`, the same lines (or one JSON object a line) are printed after
//! each refresh instead, as `top -b -n N` does.

use std::collections::{HashMap, HashSet};
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{value_parser, Args};
use serde_json::{json, Value};

use crate::core::profile::{ProfileRequest, Samples, DEFAULT_RATE, MAX_RATE};
use crate::core::protocol::Scope;
use crate::core::stacks::Frame;
use crate::core::{Client, Connection, Error, ErrorKind, Pid, Session, Transport};

use super::exit::{ClientExit, Failure};
use super::sanitize::escape;
use super::screen::{Input, Screen};

/// `top`'s own options (the processes are a [`ScopeArg`](super::command::ScopeArg)).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopOptions {
    /// Samples a second (1 to 10000)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE,
          value_parser = value_parser!(u32).range(1..=i64::from(MAX_RATE)))]
    pub(crate) rate: u32,
    /// How often to refresh: 1s, 250ms, 2.5 (seconds); 100 ms to 1 hour
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = interval)]
    pub(crate) interval: Duration,
    /// Count the samples of idle threads too (asleep or waiting)
    #[arg(long)]
    pub(crate) idle: bool,
    /// Percentages since the start rather than over the last refresh (the
    /// key c switches)
    #[arg(long)]
    pub(crate) cumulative: bool,
    /// Print the table as text after each of N refreshes, then stop (as
    /// `top -b -n N`)
    #[arg(long, value_name = "N", value_parser = value_parser!(u32).range(1..))]
    pub(crate) iterations: Option<u32>,
    /// Print the table once, after one refresh (--iterations 1)
    #[arg(long, conflicts_with = "iterations")]
    pub(crate) once: bool,
}

/// The shortest and longest `--interval`.
const INTERVALS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));

/// `--interval`: a duration as `--duration` reads it (`1s`, `250ms`,
/// `2.5`), from 100 ms to an hour.
fn interval(text: &str) -> Result<Duration, String> {
    match super::duration::parse_duration(text) {
        Ok(interval) if (INTERVALS.0..=INTERVALS.1).contains(&interval) => Ok(interval),
        _ => Err("a time from 100ms to 3600s, as 1s, 250ms or 2.5 (seconds)".into()),
    }
}

/// What the percentages are of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// The samples taken since the last refresh.
    Interval,
    /// The samples taken since the start.
    Cumulative,
}

impl View {
    fn toggled(self) -> View {
        match self {
            View::Interval => View::Cumulative,
            View::Cumulative => View::Interval,
        }
    }
}

/// The column the rows are sorted by, as py-spy's keys 1 to 4 choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sort {
    /// `%Own` (key 1 or o).
    OwnShare,
    /// `%Total` (key 2 or t).
    TotalShare,
    /// `OwnTime`, since the start (key 3).
    OwnTime,
    /// `TotalTime`, since the start (key 4).
    TotalTime,
}

impl Sort {
    /// The sort a key chooses, if any.
    pub(crate) fn for_key(key: char) -> Option<Sort> {
        match key {
            '1' | 'o' => Some(Sort::OwnShare),
            '2' | 't' => Some(Sort::TotalShare),
            '3' => Some(Sort::OwnTime),
            '4' => Some(Sort::TotalTime),
            _ => None,
        }
    }
}

/// Samples counted for a function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Those in which it was the innermost frame.
    pub(crate) own: u64,
    /// Those in which it was anywhere in the stack (once per sample).
    pub(crate) total: u64,
}

/// A function: its name and file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    function: String,
    file: String,
}

#[derive(Debug)]
struct Function {
    key: Key,
    /// The line it was first seen at.
    line: Option<u32>,
    /// Since the last refresh.
    last: Counts,
    /// Since the start.
    all: Counts,
}

/// What a profile has counted, per function, since the start and since
/// the last refresh, with its totals.
#[derive(Debug)]
pub(crate) struct Table {
    rate: u32,
    keep_idle: bool,
    functions: Vec<Function>,
    index: HashMap<Key, usize>,
    threads: HashSet<(Pid, u64)>,
    processes: HashSet<Pid>,
    elapsed_ms: u64,
    due: u64,
    taken: u64,
    dropped: u64,
    /// `taken` at the last refresh.
    taken_before: u64,
    ended: Option<String>,
}

/// A row of the table: a function and its numbers in the view asked for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row<'a> {
    pub(crate) function: &'a str,
    pub(crate) file: &'a str,
    pub(crate) line: Option<u32>,
    /// Percent of the samples taken in the view.
    pub(crate) own_share: f64,
    pub(crate) total_share: f64,
    /// Seconds since the start: the samples times the time between two
    /// taken.
    pub(crate) own_time: f64,
    pub(crate) total_time: f64,
    /// The counts behind them: in the view, and since the start.
    pub(crate) counts: Counts,
    pub(crate) all: Counts,
}

impl Table {
    /// An empty table for a profile at `rate` samples a second, counting
    /// idle threads' samples only if `keep_idle`.
    pub(crate) fn new(rate: u32, keep_idle: bool) -> Table {
        Table {
            rate: rate.max(1),
            keep_idle,
            functions: Vec::new(),
            index: HashMap::new(),
            threads: HashSet::new(),
            processes: HashSet::new(),
            elapsed_ms: 0,
            due: 0,
            taken: 0,
            dropped: 0,
            taken_before: 0,
            ended: None,
        }
    }

    /// Counts a batch of samples (the running totals replace the old).
    pub(crate) fn add(&mut self, batch: &Samples) {
        self.elapsed_ms = batch.elapsed_ms;
        self.due = batch.due;
        self.taken = batch.taken;
        self.dropped = batch.dropped;
        if let Some(why) = &batch.ended {
            self.ended.get_or_insert_with(|| why.clone());
        }
        let mut seen = Vec::new();
        for stack in &batch.stacks {
            self.threads.insert((stack.pid, stack.thread));
            self.processes.insert(stack.pid);
            if stack.idle && !self.keep_idle {
                continue;
            }
            seen.clear();
            let innermost = stack.frames.len().checked_sub(1);
            for (depth, &frame) in stack.frames.iter().enumerate() {
                let Some(frame) = batch.frames.get(frame as usize) else {
                    continue;
                };
                let id = self.function(frame);
                let function = &mut self.functions[id];
                if Some(depth) == innermost {
                    function.last.own += stack.count;
                    function.all.own += stack.count;
                }
                if !seen.contains(&id) {
                    seen.push(id);
                    function.last.total += stack.count;
                    function.all.total += stack.count;
                }
            }
        }
    }

    /// The index of `frame`'s function, added if new.
    fn function(&mut self, frame: &Frame) -> usize {
        let key = Key {
            function: frame.function.clone(),
            file: frame.file.clone(),
        };
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = self.functions.len();
        self.index.insert(key.clone(), id);
        self.functions.push(Function {
            key,
            line: frame.line,
            last: Counts::default(),
            all: Counts::default(),
        });
        id
    }

    /// Starts the next refresh's counts.
    pub(crate) fn next_interval(&mut self) {
        self.taken_before = self.taken;
        for function in &mut self.functions {
            function.last = Counts::default();
        }
    }

    /// Notes that the profile ended, for `why`, unless it had.
    pub(crate) fn end(&mut self, why: impl Into<String>) {
        self.ended.get_or_insert_with(|| why.into());
    }

    /// Why the profile ended, once it has.
    pub(crate) fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// The samples taken so far.
    pub(crate) fn taken(&self) -> u64 {
        self.taken
    }

    /// The samples due that were not taken.
    pub(crate) fn lost(&self) -> u64 {
        self.due.saturating_sub(self.taken)
    }

    /// The samples taken in `view`.
    fn taken_in(&self, view: View) -> u64 {
        match view {
            View::Interval => self.taken.saturating_sub(self.taken_before),
            View::Cumulative => self.taken,
        }
    }

    /// The functions seen in `view`, sorted by `sort` (ties: by the
    /// cumulative own samples, then by name).
    pub(crate) fn rows(&self, view: View, sort: Sort) -> Vec<Row<'_>> {
        let taken = self.taken_in(view);
        let share = |count: u64| {
            if taken == 0 {
                0.0
            } else {
                count as f64 * 100.0 / taken as f64
            }
        };
        // A sample stands for the time between two taken: the period at
        // the rate, more when some were lost.
        let time = |count: u64| {
            let at_rate = count as f64 * 1000.0 / f64::from(self.rate);
            let taken = count as f64 * self.elapsed_ms as f64 / self.taken.max(1) as f64;
            at_rate.max(taken) / 1000.0
        };
        let mut rows: Vec<Row<'_>> = self
            .functions
            .iter()
            .map(|function| {
                let counts = match view {
                    View::Interval => function.last,
                    View::Cumulative => function.all,
                };
                Row {
                    function: &function.key.function,
                    file: &function.key.file,
                    line: function.line,
                    own_share: share(counts.own),
                    total_share: share(counts.total),
                    own_time: time(function.all.own),
                    total_time: time(function.all.total),
                    counts,
                    all: function.all,
                }
            })
            .filter(|row| row.counts.total > 0)
            .collect();
        let key = |row: &Row<'_>| match sort {
            Sort::OwnShare => row.counts.own,
            Sort::TotalShare => row.counts.total,
            Sort::OwnTime => row.all.own,
            Sort::TotalTime => row.all.total,
        };
        rows.sort_by(|a, b| {
            key(b)
                .cmp(&key(a))
                .then(b.all.own.cmp(&a.all.own))
                .then(a.function.cmp(b.function))
                .then(a.file.cmp(b.file))
        });
        rows
    }
}

/// How a line of the view looks on the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    /// Bold: the title, the end of the profile.
    Strong,
    /// Reversed: the columns' names.
    Heading,
}

/// A line of the view, its fields escaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) style: Style,
    pub(crate) text: String,
}

impl Line {
    fn new(style: Style, text: impl Into<String>) -> Line {
        Line {
            style,
            text: text.into(),
        }
    }
}

/// What the view shows and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shown {
    /// What is sampled: `target PID 4242`.
    pub(crate) what: String,
    pub(crate) rate: u32,
    pub(crate) interval: Duration,
    pub(crate) view: View,
    pub(crate) sort: Sort,
    /// On the screen: the keys' line, and the rows that fit.
    pub(crate) keys: bool,
}

/// The view of `table` as lines: a header, the columns' names, then a
/// row per function (all of those seen in the view; since the start once
/// the profile has ended).
pub(crate) fn layout(table: &Table, shown: &Shown) -> Vec<Line> {
    let mut lines = Vec::new();
    let seconds = |d: Duration| format!("{} s", d.as_secs_f64());
    match table.ended() {
        None => lines.push(Line::new(
            Style::Strong,
            format!(
                "Collecting samples from {} ({} a second, shown every {})",
                shown.what,
                shown.rate,
                seconds(shown.interval)
            ),
        )),
        Some(why) => lines.push(Line::new(
            Style::Strong,
            format!("Profile of {} ended: {}", shown.what, escape(why)),
        )),
    }
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    lines.push(Line::new(
        Style::Plain,
        format!(
            "Samples: {} taken of {} due, {} lost, {} dropped; elapsed {:.1} s; {}, {}",
            table.taken,
            table.due,
            table.lost(),
            table.dropped,
            table.elapsed_ms as f64 / 1000.0,
            count(table.threads.len(), "thread"),
            count(table.processes.len(), "process"),
        ),
    ));
    // Once the profile has ended, the last refresh may have seen little:
    // the totals since the start are what is left to look at.
    let shown_view = match table.ended() {
        Some(_) => View::Cumulative,
        None => shown.view,
    };
    let view = match shown_view {
        View::Interval => format!("% of the samples of the last {}", seconds(shown.interval)),
        View::Cumulative => "% of the samples since the start".to_owned(),
    };
    if shown.keys {
        let sorts = [
            (Sort::OwnShare, "1 %Own"),
            (Sort::TotalShare, "2 %Total"),
            (Sort::OwnTime, "3 OwnTime"),
            (Sort::TotalTime, "4 TotalTime"),
        ]
        .map(|(sort, name)| {
            if sort == shown.sort {
                format!("[{name}]")
            } else {
                name.to_owned()
            }
        })
        .join(" ");
        lines.push(Line::new(Style::Plain, view));
        lines.push(Line::new(
            Style::Plain,
            format!("Sort: {sorts}   c: last/since start   q: quit"),
        ));
    } else {
        lines.push(Line::new(Style::Plain, view));
    }
    lines.push(Line::new(Style::Plain, ""));
    lines.push(Line::new(
        Style::Heading,
        format!(
            "{:>7} {:>8} {:>8} {:>10}  Function (file)",
            "%Own", "%Total", "OwnTime", "TotalTime"
        ),
    ));
    for row in table.rows(shown_view, shown.sort) {
        lines.push(Line::new(
            Style::Plain,
            format!(
                "{:>6.2}% {:>7.2}% {:>7.2}s {:>9.2}s  {} ({})",
                row.own_share,
                row.total_share,
                row.own_time,
                row.total_time,
                escape(row.function),
                escape(file_name(row.file)),
            ),
        ));
    }
    lines
}

/// A file's last component, as py-spy shows it (`<frozen ...>` and other
/// names that are no path stay whole).
fn file_name(file: &str) -> &str {
    if file.starts_with('<') {
        return file;
    }
    Path::new(file)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(file)
}

/// The view of `table` as one JSON object (`--json`): the totals, and a
/// row per function seen since the start, with its counts since the last
/// refresh and since the start, sorted by `sort` in `view`.
pub(crate) fn json(table: &Table, shown: &Shown) -> Value {
    let functions: Vec<Value> = table
        .rows(View::Cumulative, shown.sort)
        .iter()
        .map(|row| {
            let last = table
                .index
                .get(&Key {
                    function: row.function.to_owned(),
                    file: row.file.to_owned(),
                })
                .map(|&id| table.functions[id].last)
                .unwrap_or_default();
            json!({
                "function": row.function,
                "file": row.file,
                "line": row.line,
                "own": last.own,
                "total": last.total,
                "own_since_start": row.all.own,
                "total_since_start": row.all.total,
            })
        })
        .collect();
    json!({
        "what": shown.what,
        "rate": shown.rate,
        "elapsed_ms": table.elapsed_ms,
        "due": table.due,
        "taken": table.taken,
        "taken_since_refresh": table.taken_in(View::Interval),
        "lost": table.lost(),
        "dropped": table.dropped,
        "threads": table.threads.len(),
        "processes": table.processes.len(),
        "ended": table.ended,
        "functions": functions,
    })
}

/// How `top` shows its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Full screen on the terminal, until q.
    Screen,
    /// Text (or JSON) after each refresh, `Some(n)` times or until the
    /// profile ends.
    Printed { json: bool, refreshes: Option<u32> },
}

/// How long after the start `top` first collects: a target whose stacks
/// cannot be read is told at once, before the screen opens.
const PROBE: Duration = Duration::from_millis(100);

/// How long a key is waited for at most, between looks at the signals.
const TICK: Duration = Duration::from_millis(100);

/// Runs `top` on `scope` through `client`. Without a terminal on stdout,
/// with `--iterations`, `--once` or `json`, prints the table (or JSON) at
/// each refresh; else draws it full screen until q or Ctrl-C.
///
/// A profile that ends (its process exited) is shown with why: printed,
/// it ends `top` (successfully); on the screen it stays until q. A profile
/// that ends before any sample (no Python whose stacks can be read) is a
/// failure.
pub(crate) fn run<T: Transport>(
    client: &Client<T>,
    scope: Scope,
    options: &TopOptions,
    json: bool,
) -> Result<(), Failure> {
    let refreshes = options.iterations.or(options.once.then_some(1));
    let output = if json || refreshes.is_some() || !io::stdout().is_terminal() {
        Output::Printed { json, refreshes }
    } else {
        Output::Screen
    };
    let mut session = client.session()?;
    let target = session.target_pid()?;
    let what = match scope {
        Scope::Target => format!("target PID {target}"),
        Scope::Process(pid) => format!("PID {pid}"),
        // All (Scope is non-exhaustive).
        _ => format!("the tree of target PID {target}"),
    };
    session.profile(ProfileRequest::new(scope, options.rate))?;
    let mut profile = Profile {
        session,
        table: Table::new(options.rate, options.idle),
        what: what.clone(),
    };
    let shown = Shown {
        what,
        rate: options.rate,
        interval: options.interval,
        view: if options.cumulative {
            View::Cumulative
        } else {
            View::Interval
        },
        sort: Sort::OwnShare,
        keys: output == Output::Screen,
    };
    let started = Instant::now();
    std::thread::sleep(PROBE.min(options.interval));
    profile.collect()?;
    let result = match output {
        Output::Screen => profile.screen(shown, started),
        Output::Printed { json, refreshes } => profile.print(&shown, started, json, refreshes),
    };
    profile.stop();
    result
}

/// A profile running on a session, and what it counted.
struct Profile<C: Connection> {
    session: Session<C>,
    table: Table,
    what: String,
}

impl<C: Connection> Profile<C> {
    /// Adds what the profile counted since the last collection. A
    /// profile that ended without a sample fails; a controller that stops
    /// answering after samples ends the profile (it went away with its
    /// target).
    fn collect(&mut self) -> Result<(), Failure> {
        if self.table.ended().is_some() {
            return Ok(());
        }
        match self.session.samples(false) {
            Ok(batch) => self.table.add(&batch),
            Err(err) if self.table.taken() > 0 && gone(&err) => {
                log::debug!("SAMPLES: {err}");
                self.table
                    .end("the controller went away (its target exited, or it was stopped)");
            }
            Err(err) => return Err(err.into()),
        }
        match self.table.ended() {
            Some(why) if self.table.taken() == 0 => Err(Failure::new(
                ClientExit::Failed,
                format!("Cannot profile {}: {}", self.what, escape(why)),
            )),
            _ => Ok(()),
        }
    }

    /// Stops the profile, if it runs (what it counted last is not shown).
    fn stop(&mut self) {
        if self.table.ended().is_none() {
            let _ = self.session.samples(true);
        }
    }

    /// Prints the table (or its JSON) after each refresh, `refreshes`
    /// times or until the profile ends (or stdout is closed).
    fn print(
        &mut self,
        shown: &Shown,
        started: Instant,
        json: bool,
        refreshes: Option<u32>,
    ) -> Result<(), Failure> {
        let mut stdout = io::stdout().lock();
        let mut done = 0;
        while refreshes.is_none_or(|n| done < n) && self.table.ended().is_none() {
            done += 1;
            sleep_until(started + shown.interval * done);
            self.collect()?;
            let written = if json {
                writeln!(stdout, "{}", self::json(&self.table, shown))
            } else {
                let mut text = String::new();
                for line in layout(&self.table, shown) {
                    text.push_str(&line.text);
                    text.push('\n');
                }
                writeln!(stdout, "{text}")
            };
            if written.and_then(|()| stdout.flush()).is_err() {
                // Whoever read it is gone (`client top | head`).
                break;
            }
            self.table.next_interval();
        }
        Ok(())
    }

    /// Draws the table full screen, refreshing it, until q, Ctrl-C, or a
    /// signal that ends the program; the terminal is given back as it
    /// was, on an error or a panic too.
    fn screen(&mut self, mut shown: Shown, started: Instant) -> Result<(), Failure> {
        let quit = Arc::new(AtomicBool::new(false));
        let _handlers = Handlers::quit_on([libc::SIGTERM, libc::SIGHUP], &quit)
            .map_err(|err| screen_failure("cannot handle signals", &err))?;
        let mut screen = Screen::open().map_err(|err| screen_failure("cannot open", &err))?;
        let mut refreshes = 1;
        let mut next = started + shown.interval;
        let mut draw = true;
        while !quit.load(Ordering::Relaxed) {
            if draw {
                screen
                    .draw(&layout(&self.table, &shown))
                    .map_err(|err| screen_failure("cannot draw", &err))?;
                draw = false;
            }
            let wait = match self.table.ended() {
                // Nothing more to collect: only keys and signals.
                Some(_) => TICK,
                None => TICK.min(next.saturating_duration_since(Instant::now())),
            };
            match screen
                .input(wait)
                .map_err(|err| screen_failure("cannot read the keys", &err))?
            {
                Some(Input::Quit) => break,
                Some(Input::Redraw) => draw = true,
                Some(Input::Key('c')) => {
                    shown.view = shown.view.toggled();
                    draw = true;
                }
                Some(Input::Key(key)) => {
                    if let Some(sort) = Sort::for_key(key) {
                        shown.sort = sort;
                        draw = true;
                    }
                }
                None => {}
            }
            if Instant::now() >= next && self.table.ended().is_none() {
                self.table.next_interval();
                self.collect()?;
                refreshes += 1;
                next = started + shown.interval * refreshes;
                draw = true;
            }
        }
        Ok(())
    }
}

/// Signal handlers that set a flag, removed when dropped (at the prompt,
/// the signals act as before once `top` is over).
struct Handlers(Vec<signal_hook::SigId>);

impl Handlers {
    fn quit_on<const N: usize>(signals: [i32; N], quit: &Arc<AtomicBool>) -> io::Result<Handlers> {
        let mut handlers = Handlers(Vec::new());
        for signal in signals {
            handlers
                .0
                .push(signal_hook::flag::register(signal, quit.clone())?);
        }
        Ok(handlers)
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for id in self.0.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Whether `err` says the controller is gone (rather than refusing).
fn gone(err: &Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Io | ErrorKind::NotRunning | ErrorKind::MalformedReply
    )
}

fn screen_failure(what: &str, err: &io::Error) -> Failure {
    Failure::new(
        ClientExit::Failed,
        format!("top: {what} the terminal: {err}"),
    )
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

#[cfg(test)]
mod tests {
    use crate::core::profile::SampledStack;

    use super::*;

    fn pid(raw: u32) -> Pid {
        Pid::new(raw).unwrap()
    }

    /// A batch: `stacks` of (pid, thread, idle, function names outermost
    /// first, count), all in `app.py`, with the totals.
    fn batch(due: u64, taken: u64, stacks: &[(u32, u64, bool, &[&str], u64)]) -> Samples {
        let mut samples = Samples::default();
        samples.due = due;
        samples.taken = taken;
        samples.elapsed_ms = due * 10;
        let mut ids: HashMap<&str, u32> = HashMap::new();
        for &(process, thread, idle, functions, count) in stacks {
            let frames = functions
                .iter()
                .map(|&function| {
                    *ids.entry(function).or_insert_with(|| {
                        samples.frames.push(Frame::new(
                            function,
                            "/srv/app.py",
                            Some(samples.frames.len() as u32 + 1),
                        ));
                        samples.frames.len() as u32 - 1
                    })
                })
                .collect();
            samples
                .stacks
                .push(SampledStack::new(pid(process), thread, idle, frames, count));
        }
        samples
    }

    fn shares(table: &Table, view: View, sort: Sort) -> Vec<(String, f64, f64)> {
        table
            .rows(view, sort)
            .iter()
            .map(|row| (row.function.to_owned(), row.own_share, row.total_share))
            .collect()
    }

    #[test]
    fn own_is_the_innermost_frame_and_total_counts_a_sample_once() {
        let mut table = Table::new(100, false);
        table.add(&batch(
            100,
            100,
            &[
                (1, 1, false, &["main", "seventy"], 70),
                (1, 1, false, &["main", "thirty"], 20),
                // Recursion: counted once in total.
                (1, 1, false, &["main", "thirty", "thirty", "thirty"], 10),
            ],
        ));
        assert_eq!(
            shares(&table, View::Interval, Sort::OwnShare),
            [
                ("seventy".into(), 70.0, 70.0),
                ("thirty".into(), 30.0, 30.0),
                ("main".into(), 0.0, 100.0),
            ]
        );
        assert_eq!(
            shares(&table, View::Interval, Sort::TotalShare)[0],
            ("main".into(), 0.0, 100.0)
        );
        let rows = table.rows(View::Cumulative, Sort::OwnTime);
        assert_eq!(rows[0].own_time, 0.7);
        assert_eq!(rows[2].total_time, 1.0);
        assert_eq!(rows[0].file, "/srv/app.py");
        assert_eq!(rows[0].line, Some(2));
    }

    #[test]
    fn the_interval_view_shows_the_last_refresh_and_the_cumulative_all() {
        let mut table = Table::new(100, false);
        table.add(&batch(100, 100, &[(1, 1, false, &["a"], 100)]));
        table.next_interval();
        table.add(&batch(200, 200, &[(1, 1, false, &["b"], 50)]));
        // Another batch within the same refresh adds up.
        table.add(&batch(200, 200, &[(1, 1, false, &["b"], 25)]));
        assert_eq!(
            shares(&table, View::Interval, Sort::OwnShare),
            [("b".into(), 75.0, 75.0)]
        );
        assert_eq!(
            shares(&table, View::Cumulative, Sort::OwnShare),
            [("a".into(), 50.0, 50.0), ("b".into(), 37.5, 37.5)]
        );
        // Times are since the start, whatever the view.
        let rows = table.rows(View::Interval, Sort::OwnShare);
        assert_eq!(
            (rows[0].own_time, rows[0].counts.own, rows[0].all.own),
            (0.75, 75, 75)
        );
    }

    #[test]
    fn idle_samples_are_dropped_unless_kept_but_their_threads_are_seen() {
        let stacks: &[(u32, u64, bool, &[&str], u64)] = &[
            (1, 1, false, &["work"], 40),
            (1, 2, true, &["wait"], 100),
            (2, 3, true, &["wait"], 100),
        ];
        let mut table = Table::new(100, false);
        table.add(&batch(100, 100, stacks));
        assert_eq!(
            shares(&table, View::Interval, Sort::OwnShare),
            [("work".into(), 40.0, 40.0)]
        );
        assert_eq!((table.threads.len(), table.processes.len()), (3, 2));
        let mut table = Table::new(100, true);
        table.add(&batch(100, 100, stacks));
        assert_eq!(
            shares(&table, View::Interval, Sort::OwnShare),
            [("wait".into(), 200.0, 200.0), ("work".into(), 40.0, 40.0)]
        );
    }

    #[test]
    fn nothing_taken_is_no_share_and_lost_is_due_less_taken() {
        let mut table = Table::new(100, false);
        table.add(&batch(10, 4, &[(1, 1, false, &["a"], 4)]));
        assert_eq!(table.lost(), 6);
        // Each sample taken stands for 100 ms / 4.
        assert_eq!(table.rows(View::Interval, Sort::OwnShare)[0].own_time, 0.1);
        table.next_interval();
        table.add(&batch(12, 4, &[]));
        assert!(table.rows(View::Interval, Sort::OwnShare).is_empty());
        assert_eq!(
            table.rows(View::Cumulative, Sort::OwnShare)[0].own_share,
            100.0
        );
    }

    #[test]
    fn the_end_is_kept_once() {
        let mut table = Table::new(100, false);
        let mut last = batch(10, 10, &[]);
        last.ended = Some("target PID 7 exited".into());
        table.add(&last);
        table.end("later");
        assert_eq!(table.ended(), Some("target PID 7 exited"));
    }

    fn shown(keys: bool) -> Shown {
        Shown {
            what: "target PID 4242".into(),
            rate: 100,
            interval: Duration::from_secs(1),
            view: View::Interval,
            sort: Sort::OwnShare,
            keys,
        }
    }

    #[test]
    fn the_layout_is_a_header_then_aligned_rows_with_names_escaped() {
        let mut table = Table::new(100, false);
        let mut samples = batch(100, 100, &[(1, 1, false, &["main", "seventy"], 70)]);
        samples.frames[0].function = "evil\x1b[2J".into();
        table.add(&samples);
        let text: Vec<String> = layout(&table, &shown(false))
            .into_iter()
            .map(|line| line.text)
            .collect();
        assert_eq!(
            text,
            [
                "Collecting samples from target PID 4242 (100 a second, shown every 1 s)",
                "Samples: 100 taken of 100 due, 0 lost, 0 dropped; elapsed 1.0 s; 1 thread, 1 process",
                "% of the samples of the last 1 s",
                "",
                "   %Own   %Total  OwnTime  TotalTime  Function (file)",
                " 70.00%   70.00%    0.70s      0.70s  seventy (app.py)",
                "  0.00%   70.00%    0.00s      0.70s  evil\\x1b[2J (app.py)",
            ]
        );
        let lines = layout(&table, &shown(true));
        assert_eq!(lines[0].style, Style::Strong);
        assert_eq!(
            lines[3].text,
            "Sort: [1 %Own] 2 %Total 3 OwnTime 4 TotalTime   c: last/since start   q: quit"
        );
        assert_eq!(lines[5].style, Style::Heading);
        table.next_interval();
        table.end("target PID 4242 exited");
        let lines = layout(&table, &shown(true));
        assert_eq!(
            lines[0].text,
            "Profile of target PID 4242 ended: target PID 4242 exited"
        );
        // The rows since the start, the last refresh having none.
        assert_eq!(lines[2].text, "% of the samples since the start");
        assert_eq!(lines.len(), 8, "{lines:?}");
    }

    #[test]
    fn json_has_the_counts_of_the_last_refresh_and_since_the_start() {
        let mut table = Table::new(100, false);
        table.add(&batch(100, 100, &[(1, 1, false, &["a"], 60)]));
        table.next_interval();
        table.add(&batch(200, 190, &[(1, 1, false, &["a"], 30)]));
        let value = json(&table, &shown(false));
        assert_eq!(value["taken"], 190);
        assert_eq!(value["taken_since_refresh"], 90);
        assert_eq!(value["lost"], 10);
        assert_eq!(value["ended"], Value::Null);
        assert_eq!(
            value["functions"][0],
            json!({"function": "a", "file": "/srv/app.py", "line": 1,
                   "own": 30, "total": 30, "own_since_start": 90, "total_since_start": 90})
        );
    }

    #[test]
    fn keys_choose_the_sort_as_py_spy_does() {
        assert_eq!(Sort::for_key('1'), Some(Sort::OwnShare));
        assert_eq!(Sort::for_key('o'), Some(Sort::OwnShare));
        assert_eq!(Sort::for_key('2'), Some(Sort::TotalShare));
        assert_eq!(Sort::for_key('t'), Some(Sort::TotalShare));
        assert_eq!(Sort::for_key('3'), Some(Sort::OwnTime));
        assert_eq!(Sort::for_key('4'), Some(Sort::TotalTime));
        assert_eq!(Sort::for_key('x'), None);
    }

    #[test]
    fn intervals_in_seconds_or_milliseconds() {
        assert_eq!(interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(interval("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(interval(" 3600s "), Ok(Duration::from_secs(3600)));
        assert_eq!(interval("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "99ms", "0", "-1s", "inf", "NaN", "3601"] {
            assert!(interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names_are_the_last_component() {
        assert_eq!(file_name("/srv/app/views.py"), "views.py");
        assert_eq!(file_name("views.py"), "views.py");
        assert_eq!(
            file_name("<frozen importlib._bootstrap>"),
            "<frozen importlib._bootstrap>"
        );
    }
}
