//! `client profile`: collects a sampling profile from the controller
//! (`PROFILE`, then `SAMPLES` until it ends), merges its batches, and
//! writes it as an interactive flame graph (SVG, drawn by `inferno`), as
//! folded stacks (`a;b;c 12`, which `flamegraph.pl`, speedscope and others
//! read), or as speedscope's JSON.
//!
//! The merged profile keeps a count per distinct stack: its size follows
//! how many different stacks the program ran, not how long it ran.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use inferno::flamegraph::color::MultiPalette;
use inferno::flamegraph::{self, Palette};
use serde::Serialize;

use crate::core::profile::{ProfileRequest, Samples};
use crate::core::protocol::Scope;
use crate::core::stacks::Frame;
use crate::core::{Connection, Pid, Session};

use super::exit::{ClientExit, Failure};
use super::sanitize::escape;

/// What `client profile` writes.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// An interactive flame graph (SVG: open it in a browser)
    #[default]
    Svg,
    /// Folded stacks, a line per stack: `outer;inner 12`
    Collapsed,
    /// speedscope's JSON (https://www.speedscope.app)
    Speedscope,
}

impl Format {
    /// The file written when `-o` names none.
    pub(crate) fn default_output(self) -> &'static str {
        match self {
            Format::Svg => "profile.svg",
            Format::Collapsed => "profile.txt",
            Format::Speedscope => "profile.speedscope.json",
        }
    }
}

/// How samples are merged: which roots a stack gets, and whether the
/// samples of idle threads count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// A root frame per process (`process 4242`): profiles of the whole
    /// tree.
    pub(crate) processes: bool,
    /// A root frame per thread (`thread 4243 "worker"`), under its
    /// process's.
    pub(crate) threads: bool,
    /// Keep the samples of threads that were asleep or waiting (py-spy's
    /// `--idle`); left out by default.
    pub(crate) idle: bool,
}

/// A distinct stack of the merged profile: its frames (outermost first,
/// indices into [`Profile::frames`]) and, as the [`Shape`] asks, its
/// process and thread.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct StackKey {
    process: Option<Pid>,
    thread: Option<(Pid, u64)>,
    frames: Vec<u32>,
}

/// The running totals of a profile, as its last batch said them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// How long it ran, in milliseconds.
    pub(crate) elapsed_ms: u64,
    /// Samples due at the rate asked for.
    pub(crate) due: u64,
    /// Samples taken.
    pub(crate) taken: u64,
    /// Samples taken whose stacks the controller could not keep.
    pub(crate) dropped: u64,
}

impl Totals {
    /// Samples due but not taken.
    pub(crate) fn lost(&self) -> u64 {
        self.due.saturating_sub(self.taken)
    }
}

/// A profile merged from its batches: a table of frames (each batch has
/// its own, which its stacks index) and a count per distinct stack.
#[derive(Debug, Default)]
pub(crate) struct Profile {
    shape: Shape,
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, u32>,
    stacks: HashMap<StackKey, u64>,
    /// The threads' names, the latest seen.
    names: HashMap<(Pid, u64), String>,
    /// Thread samples counted in `stacks`.
    counted: u64,
    /// Thread samples left out, their thread being idle.
    idle_left_out: u64,
    totals: Totals,
    ended: Option<String>,
}

impl Profile {
    /// An empty profile, merged as `shape` says.
    pub(crate) fn new(shape: Shape) -> Profile {
        Profile {
            shape,
            ..Profile::default()
        }
    }

    /// Adds a batch: its stacks' counts, its totals, and why the profile
    /// ended if it says so. A stack naming a frame the batch does not
    /// have is left out.
    pub(crate) fn add(&mut self, batch: &Samples) {
        self.totals = Totals {
            elapsed_ms: batch.elapsed_ms,
            due: batch.due,
            taken: batch.taken,
            dropped: batch.dropped,
        };
        if let Some(why) = &batch.ended {
            self.ended = Some(why.clone());
        }
        // The batch's frame indices, translated to ours as they come.
        let mut ids: Vec<Option<u32>> = vec![None; batch.frames.len()];
        for stack in &batch.stacks {
            if stack.idle && !self.shape.idle {
                self.idle_left_out += stack.count;
                continue;
            }
            let frames: Option<Vec<u32>> = stack
                .frames
                .iter()
                .map(|&index| {
                    let index = usize::try_from(index).ok()?;
                    let slot = ids.get_mut(index)?;
                    Some(*slot.get_or_insert_with(|| self.frame_id(&batch.frames[index])))
                })
                .collect();
            let Some(frames) = frames else {
                continue;
            };
            if let Some(name) = &stack.thread_name {
                self.names.insert((stack.pid, stack.thread), name.clone());
            }
            let key = StackKey {
                process: (self.shape.processes || self.shape.threads).then_some(stack.pid),
                thread: self.shape.threads.then_some((stack.pid, stack.thread)),
                frames,
            };
            *self.stacks.entry(key).or_default() += stack.count;
            self.counted += stack.count;
        }
    }

    /// The id of `frame` in the table, added if new.
    fn frame_id(&mut self, frame: &Frame) -> u32 {
        if let Some(&id) = self.frame_ids.get(frame) {
            return id;
        }
        let id = u32::try_from(self.frames.len()).unwrap_or(u32::MAX);
        let frame = Frame::new(frame.function.clone(), frame.file.clone(), frame.line);
        self.frame_ids.insert(frame.clone(), id);
        self.frames.push(frame);
        id
    }

    /// The totals, as the last batch said them.
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    /// Why the profile ended, once it has.
    pub(crate) fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// Thread samples in the profile.
    pub(crate) fn counted(&self) -> u64 {
        self.counted
    }

    /// Thread samples left out, their thread being idle.
    pub(crate) fn idle_left_out(&self) -> u64 {
        self.idle_left_out
    }

    /// How many distinct stacks it holds.
    #[cfg(test)]
    pub(crate) fn distinct_stacks(&self) -> usize {
        self.stacks.len()
    }

    /// The root frames `key` gets: its process's, its thread's.
    fn roots(&self, key: &StackKey) -> Vec<String> {
        let mut roots = Vec::new();
        if let (true, Some(pid)) = (self.shape.processes, key.process) {
            roots.push(format!("process {pid}"));
        }
        if let Some(thread) = key.thread {
            roots.push(self.thread_label(thread));
        }
        roots
    }

    /// `thread 4243 "worker"`, or `thread 4243` when it has no name.
    fn thread_label(&self, (pid, thread): (Pid, u64)) -> String {
        match self.names.get(&(pid, thread)) {
            Some(name) => format!("thread {thread} \"{}\"", label(name)),
            None => format!("thread {thread}"),
        }
    }

    /// The folded stacks, a line per distinct stack (`outer;inner 12`,
    /// outermost first), sorted.
    pub(crate) fn collapsed(&self) -> String {
        let labels: Vec<String> = self.frames.iter().map(frame_label).collect();
        let mut lines: Vec<String> = self
            .stacks
            .iter()
            .map(|(key, count)| {
                let mut line = self.roots(key).join(";");
                for &id in &key.frames {
                    if !line.is_empty() {
                        line.push(';');
                    }
                    line.push_str(&labels[id as usize]);
                }
                let _ = write!(line, " {count}");
                line
            })
            .collect();
        lines.sort_unstable();
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }

    /// An interactive flame graph of the profile, titled `title` with
    /// `subtitle` under it. A profile without a stack gives inferno's
    /// picture that says so.
    pub(crate) fn svg(&self, title: &str, subtitle: &str) -> io::Result<Vec<u8>> {
        let collapsed = self.collapsed();
        let mut options = flamegraph::Options::default();
        options.title = title.to_owned();
        options.subtitle = Some(subtitle.to_owned());
        options.colors = Palette::Multi(MultiPalette::Python);
        options.count_name = "samples".to_owned();
        let mut svg = Vec::new();
        match flamegraph::from_lines(&mut options, collapsed.lines(), &mut svg) {
            Err(_) if self.stacks.is_empty() && !svg.is_empty() => Ok(svg),
            Err(err) => Err(err),
            Ok(()) => Ok(svg),
        }
    }

    /// The profile in speedscope's JSON format
    /// (<https://www.speedscope.app/file-format-schema.json>): a sampled
    /// profile per thread with [`Shape::threads`], else one; each sample
    /// weighs `1 / rate` seconds.
    pub(crate) fn speedscope(&self, name: &str, rate: u32) -> String {
        let mut frames: Vec<SpeedscopeFrame<'_>> = self
            .frames
            .iter()
            .map(|frame| SpeedscopeFrame {
                name: Cow::Borrowed(&frame.function),
                file: Some(&frame.file),
                line: frame.line,
            })
            .collect();
        // Without a profile per thread, a process's stacks go under its
        // own frame.
        let mut process_frames: BTreeMap<Pid, usize> = BTreeMap::new();
        let mut profiles: BTreeMap<Option<(Pid, u64)>, SampledProfile> = BTreeMap::new();
        let rate = f64::from(rate.max(1));
        let mut keys: Vec<(&StackKey, &u64)> = self.stacks.iter().collect();
        keys.sort_unstable();
        for (key, &count) in keys {
            let mut sample: Vec<usize> = Vec::with_capacity(key.frames.len() + 1);
            if let (true, false, Some(pid)) =
                (self.shape.processes, self.shape.threads, key.process)
            {
                let id = *process_frames.entry(pid).or_insert_with(|| {
                    frames.push(SpeedscopeFrame {
                        name: Cow::Owned(format!("process {pid}")),
                        file: None,
                        line: None,
                    });
                    frames.len() - 1
                });
                sample.push(id);
            }
            sample.extend(key.frames.iter().map(|&id| id as usize));
            let profile = profiles
                .entry(key.thread)
                .or_insert_with(|| SampledProfile {
                    kind: "sampled",
                    name: match key.thread {
                        Some(thread) if self.shape.processes => {
                            format!("process {} {}", thread.0, self.thread_label(thread))
                        }
                        Some(thread) => self.thread_label(thread),
                        None => name.to_owned(),
                    },
                    unit: "seconds",
                    start_value: 0.0,
                    end_value: 0.0,
                    samples: Vec::new(),
                    weights: Vec::new(),
                });
            let seconds = count as f64 / rate;
            profile.samples.push(sample);
            profile.weights.push(seconds);
            profile.end_value += seconds;
        }
        let file = SpeedscopeFile {
            schema: SPEEDSCOPE_SCHEMA,
            shared: Shared { frames },
            profiles: profiles.into_values().collect(),
            name,
            active_profile_index: 0,
            exporter: concat!("heli ", env!("CARGO_PKG_VERSION")),
        };
        let mut json = serde_json::to_string(&file).expect("a speedscope profile serializes");
        json.push('\n');
        json
    }
}

/// The `$schema` of speedscope's files.
pub(crate) const SPEEDSCOPE_SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

#[derive(Serialize)]
struct SpeedscopeFile<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    shared: Shared<'a>,
    profiles: Vec<SampledProfile>,
    name: &'a str,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    exporter: &'static str,
}

#[derive(Serialize)]
struct Shared<'a> {
    frames: Vec<SpeedscopeFrame<'a>>,
}

#[derive(Serialize)]
struct SpeedscopeFrame<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

#[derive(Serialize)]
struct SampledProfile {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: f64,
    #[serde(rename = "endValue")]
    end_value: f64,
    samples: Vec<Vec<usize>>,
    weights: Vec<f64>,
}

/// A frame as py-spy names it: `function (file:line)`.
fn frame_label(frame: &Frame) -> String {
    let (function, file) = (label(&frame.function), label(&frame.file));
    match frame.line {
        Some(line) => format!("{function} ({file}:{line})"),
        None => format!("{function} ({file})"),
    }
}

/// `text` fit for a folded line: control characters escaped (a line is
/// never broken) and `;`, which separates frames, written `\x3b`.
fn label(text: &str) -> Cow<'_, str> {
    let escaped = escape(text);
    if escaped.contains(';') {
        Cow::Owned(escaped.replace(';', "\\x3b"))
    } else {
        escaped
    }
}

/// How often the client collects the samples.
const COLLECT_EVERY: Duration = Duration::from_millis(250);

/// How often it looks whether Ctrl-C was pressed meanwhile.
const INTERRUPT_POLL: Duration = Duration::from_millis(25);

/// What `client profile` was asked for.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) request: ProfileRequest,
    pub(crate) shape: Shape,
    pub(crate) format: Format,
    /// The file, or `-`: standard output.
    pub(crate) output: PathBuf,
}

/// How the profile's run ended, for the end message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It ran to its end (its `ended` says why).
    Ended,
    /// Ctrl-C stopped it.
    Interrupted,
    /// The controller stopped answering: the error.
    Lost(Failure),
}

/// Runs a profile as `job` says on `session` until it ends, Ctrl-C sets
/// `interrupted` (the profile is then stopped and its last samples
/// collected), or the controller fails to answer. `progress` is called
/// after each collection.
///
/// # Errors
///
/// When the controller refuses the profile (the FIFO transport, a `--pid`
/// outside the tree, too many profiles).
pub(crate) fn collect<C: Connection>(
    session: &mut Session<C>,
    job: &Job,
    interrupted: &AtomicBool,
    mut progress: impl FnMut(&Profile),
) -> Result<(Profile, Outcome), Failure> {
    let mut profile = Profile::new(job.shape);
    session.profile(job.request)?;
    loop {
        let wake = Instant::now() + COLLECT_EVERY;
        while Instant::now() < wake && !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(INTERRUPT_POLL.min(wake.saturating_duration_since(Instant::now())));
        }
        let stop = interrupted.load(Ordering::SeqCst);
        match session.samples(stop) {
            Ok(batch) => profile.add(&batch),
            Err(err) => return Ok((profile, Outcome::Lost(err.into()))),
        }
        progress(&profile);
        if profile.ended().is_some() {
            let outcome = if stop {
                Outcome::Interrupted
            } else {
                Outcome::Ended
            };
            return Ok((profile, outcome));
        }
    }
}

/// The progress line: `3.2 s: 320 of 321 samples taken, 1 lost, 0 dropped`.
pub(crate) fn progress_line(profile: &Profile) -> String {
    let totals = profile.totals();
    format!(
        "profiling: {:.1} s, {} of {} samples taken, {} lost, {} dropped (Ctrl-C stops)",
        totals.elapsed_ms as f64 / 1000.0,
        totals.taken,
        totals.due,
        totals.lost(),
        totals.dropped
    )
}

/// What a profile is of, for its title: `target PID 4242 (app.py)`,
/// `PID 4300 of the tree of target PID 4242`, `every Python process of
/// the tree of target PID 4242`.
pub(crate) fn title(scope: Scope, target: Pid, command: &str) -> String {
    let command = if command.is_empty() {
        String::new()
    } else {
        format!(" ({})", escape(command))
    };
    match scope {
        Scope::Target => format!("Profile of target PID {target}{command}"),
        Scope::Process(pid) => {
            format!("Profile of PID {pid}, in the tree of target PID {target}{command}")
        }
        _ => format!("Profile of every Python process in the tree of target PID {target}{command}"),
    }
}

/// The summary under the title, and at the end: `N samples (M lost) over
/// T s; the profile ended: why`.
pub(crate) fn summary(profile: &Profile, outcome: &Outcome) -> String {
    let totals = profile.totals();
    let mut text = format!("{} samples ({} lost", totals.taken, totals.lost());
    if totals.dropped > 0 {
        let _ = write!(
            text,
            ", {} dropped: too many distinct stacks",
            totals.dropped
        );
    }
    let _ = write!(
        text,
        ") over {:.1} s; the profile ended: {}",
        totals.elapsed_ms as f64 / 1000.0,
        match outcome {
            Outcome::Ended => escape(profile.ended().unwrap_or("?")).into_owned(),
            Outcome::Interrupted => "stopped (Ctrl-C)".to_owned(),
            Outcome::Lost(failure) =>
                format!("the controller stopped answering: {}", failure.message),
        }
    );
    if profile.counted() == 0 && profile.idle_left_out() > 0 {
        let _ = write!(
            text,
            "; every thread sample was idle ({}), left out: --idle keeps them",
            profile.idle_left_out()
        );
    }
    text
}

/// A profile that ended before any sample, with nobody stopping it,
/// failed: the reason (a target that is not Python, a process gone).
pub(crate) fn failed_before_any_sample(profile: &Profile, outcome: &Outcome) -> Option<Failure> {
    match outcome {
        Outcome::Ended if profile.totals().taken == 0 => Some(Failure::new(
            ClientExit::Failed,
            format!(
                "Nothing to profile: {}",
                escape(
                    profile
                        .ended()
                        .unwrap_or("the profile ended before any sample")
                )
            ),
        )),
        _ => None,
    }
}

/// The profile as `job.format` says, titled `title` (SVG and speedscope)
/// with `subtitle` (SVG).
pub(crate) fn render(
    profile: &Profile,
    job: &Job,
    title: &str,
    subtitle: &str,
) -> io::Result<Vec<u8>> {
    Ok(match job.format {
        Format::Svg => profile.svg(title, subtitle)?,
        Format::Collapsed => profile.collapsed().into_bytes(),
        Format::Speedscope => profile.speedscope(title, job.request.rate).into_bytes(),
    })
}

/// Writes `bytes` to `output`, or to standard output for `-`.
pub(crate) fn write_output(output: &Path, bytes: &[u8]) -> io::Result<()> {
    if output == Path::new("-") {
        return super::render::emit(&mut io::stdout().lock(), bytes);
    }
    std::fs::write(output, bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::core::profile::SampledStack;

    fn pid(raw: u32) -> Pid {
        Pid::new(raw).unwrap()
    }

    fn frame(function: &str) -> Frame {
        Frame::new(function, "app.py", Some(function.len() as u32))
    }

    /// A batch with `frames` (by function) and stacks of
    /// (pid, thread, idle, frame indices, count).
    fn batch(frames: &[&str], stacks: &[(u32, u64, bool, &[u32], u64)]) -> Samples {
        let mut batch = Samples::default();
        batch.frames = frames.iter().map(|f| frame(f)).collect();
        batch.stacks = stacks
            .iter()
            .map(|&(p, thread, idle, frames, count)| {
                let mut stack = SampledStack::new(pid(p), thread, idle, frames.to_vec(), count);
                stack.thread_name = Some(format!("t{thread}"));
                stack
            })
            .collect();
        batch
    }

    fn shape(processes: bool, threads: bool, idle: bool) -> Shape {
        Shape {
            processes,
            threads,
            idle,
        }
    }

    #[test]
    fn batches_each_with_their_own_frame_table_merge_by_frame() {
        let mut profile = Profile::new(Shape::default());
        profile.add(&batch(
            &["main", "work"],
            &[(7, 7, false, &[0, 1], 5), (7, 7, false, &[0], 1)],
        ));
        // The same frames, numbered otherwise, and a new one.
        profile.add(&batch(
            &["other", "work", "main"],
            &[(7, 7, false, &[2, 1], 2), (7, 7, false, &[2, 0], 3)],
        ));
        assert_eq!(
            profile.collapsed(),
            "main (app.py:4) 1\n\
             main (app.py:4);other (app.py:5) 3\n\
             main (app.py:4);work (app.py:4) 7\n"
        );
        assert_eq!(profile.counted(), 11);
        assert_eq!(profile.frames.len(), 3);
    }

    #[test]
    fn merged_data_grows_with_distinct_stacks_not_samples() {
        let mut profile = Profile::new(shape(false, true, false));
        let one = batch(
            &["main", "a", "b"],
            &[(7, 7, false, &[0, 1], 1), (7, 8, false, &[0, 2], 1)],
        );
        for _ in 0..10_000 {
            profile.add(&one);
        }
        assert_eq!(profile.distinct_stacks(), 2);
        assert_eq!(profile.frames.len(), 3);
        assert_eq!(profile.counted(), 20_000);
    }

    #[test]
    fn idle_samples_are_left_out_unless_asked_for() {
        let idle = batch(
            &["main", "sleep"],
            &[(7, 7, false, &[0], 4), (7, 7, true, &[0, 1], 6)],
        );
        let mut profile = Profile::new(Shape::default());
        profile.add(&idle);
        assert_eq!(profile.collapsed(), "main (app.py:4) 4\n");
        assert_eq!((profile.counted(), profile.idle_left_out()), (4, 6));
        let mut profile = Profile::new(shape(false, false, true));
        profile.add(&idle);
        assert_eq!(
            profile.collapsed(),
            "main (app.py:4) 4\nmain (app.py:4);sleep (app.py:5) 6\n"
        );
        assert_eq!((profile.counted(), profile.idle_left_out()), (10, 0));
    }

    #[test]
    fn threads_and_processes_get_root_frames() {
        let two = batch(
            &["main", "a"],
            &[
                (7, 7, false, &[0, 1], 2),
                (7, 9, false, &[0, 1], 3),
                (8, 8, false, &[0], 1),
            ],
        );
        let mut merged = Profile::new(Shape::default());
        merged.add(&two);
        assert_eq!(
            merged.collapsed(),
            "main (app.py:4) 1\nmain (app.py:4);a (app.py:1) 5\n"
        );
        let mut threads = Profile::new(shape(false, true, false));
        threads.add(&two);
        assert_eq!(
            threads.collapsed(),
            "thread 7 \"t7\";main (app.py:4);a (app.py:1) 2\n\
             thread 8 \"t8\";main (app.py:4) 1\n\
             thread 9 \"t9\";main (app.py:4);a (app.py:1) 3\n"
        );
        let mut processes = Profile::new(shape(true, false, false));
        processes.add(&two);
        assert_eq!(
            processes.collapsed(),
            "process 7;main (app.py:4);a (app.py:1) 5\nprocess 8;main (app.py:4) 1\n"
        );
        let mut both = Profile::new(shape(true, true, false));
        both.add(&two);
        assert!(both
            .collapsed()
            .starts_with("process 7;thread 7 \"t7\";main (app.py:4);a (app.py:1) 2\n"));
        // A thread without a name.
        let mut nameless = batch(&["main"], &[(7, 3, false, &[0], 1)]);
        nameless.stacks[0].thread_name = None;
        let mut profile = Profile::new(shape(false, true, false));
        profile.add(&nameless);
        assert_eq!(profile.collapsed(), "thread 3;main (app.py:4) 1\n");
    }

    #[test]
    fn names_never_break_a_folded_line() {
        let mut odd = Samples::default();
        odd.frames = vec![
            Frame::new("f;g", "a\nb.py", Some(1)),
            Frame::new("<module>", "x;y.py", None),
        ];
        let mut stack = SampledStack::new(pid(7), 7, false, vec![1, 0], 2);
        stack.thread_name = Some("we;ird\r".into());
        odd.stacks = vec![stack];
        let mut profile = Profile::new(shape(false, true, false));
        profile.add(&odd);
        assert_eq!(
            profile.collapsed(),
            "thread 7 \"we\\x3bird\\r\";<module> (x\\x3by.py);f\\x3bg (a\\nb.py:1) 2\n"
        );
    }

    #[test]
    fn a_stack_naming_a_frame_its_batch_lacks_is_left_out() {
        let mut profile = Profile::new(Shape::default());
        profile.add(&batch(
            &["main"],
            &[(7, 7, false, &[0, 5], 9), (7, 7, false, &[0], 1)],
        ));
        assert_eq!(profile.collapsed(), "main (app.py:4) 1\n");
        assert_eq!(profile.counted(), 1);
    }

    #[test]
    fn totals_and_the_end_come_from_the_last_batch() {
        let mut profile = Profile::new(Shape::default());
        let mut first = batch(&[], &[]);
        (first.elapsed_ms, first.due, first.taken, first.dropped) = (250, 25, 24, 0);
        profile.add(&first);
        assert_eq!(profile.ended(), None);
        let mut last = batch(&[], &[]);
        (last.elapsed_ms, last.due, last.taken, last.dropped) = (1500, 150, 140, 3);
        last.ended = Some("target PID 7 exited".into());
        profile.add(&last);
        let totals = profile.totals();
        assert_eq!((totals.due, totals.taken, totals.lost()), (150, 140, 10));
        assert_eq!(profile.ended(), Some("target PID 7 exited"));
        assert_eq!(
            summary(&profile, &Outcome::Ended),
            "140 samples (10 lost, 3 dropped: too many distinct stacks) over 1.5 s; \
             the profile ended: target PID 7 exited"
        );
        assert_eq!(
            summary(&profile, &Outcome::Interrupted),
            "140 samples (10 lost, 3 dropped: too many distinct stacks) over 1.5 s; \
             the profile ended: stopped (Ctrl-C)"
        );
        assert_eq!(
            progress_line(&profile),
            "profiling: 1.5 s, 140 of 150 samples taken, 10 lost, 3 dropped (Ctrl-C stops)"
        );
    }

    #[test]
    fn a_profile_that_ended_before_any_sample_failed_unless_stopped() {
        let mut profile = Profile::new(Shape::default());
        let mut only = batch(&[], &[]);
        only.ended = Some("cannot read the stacks of target PID 7: not Python".into());
        profile.add(&only);
        let failure = failed_before_any_sample(&profile, &Outcome::Ended).unwrap();
        assert_eq!(failure.exit, ClientExit::Failed);
        assert_eq!(
            failure.message,
            "Nothing to profile: cannot read the stacks of target PID 7: not Python"
        );
        assert!(failed_before_any_sample(&profile, &Outcome::Interrupted).is_none());
        only.taken = 1;
        profile.add(&only);
        assert!(failed_before_any_sample(&profile, &Outcome::Ended).is_none());
    }

    #[test]
    fn all_idle_says_how_to_keep_them() {
        let mut profile = Profile::new(Shape::default());
        let mut idle = batch(&["main"], &[(7, 7, true, &[0], 5)]);
        (idle.due, idle.taken, idle.elapsed_ms) = (5, 5, 50);
        idle.ended = Some("stopped by the client".into());
        profile.add(&idle);
        assert!(summary(&profile, &Outcome::Ended).ends_with(
            "the profile ended: stopped by the client; every thread sample was idle (5), \
             left out: --idle keeps them"
        ));
    }

    /// The titles of an SVG's frames: `(name, percent)`.
    fn svg_titles(svg: &str) -> Vec<(String, f64)> {
        svg.split("<title>")
            .skip(1)
            .filter_map(|rest| {
                let title = &rest[..rest.find("</title>")?];
                let (name, counts) = title.rsplit_once(" (")?;
                let percent = counts.rsplit_once(", ")?.1.strip_suffix("%)")?;
                Some((name.to_owned(), percent.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn the_flame_graph_shows_each_frame_with_its_share() {
        let mut profile = Profile::new(Shape::default());
        profile.add(&batch(
            &["main", "seventy", "thirty"],
            &[(7, 7, false, &[0, 1], 70), (7, 7, false, &[0, 2], 30)],
        ));
        let svg =
            String::from_utf8(profile.svg("Profile of <x> & y", "100 samples").unwrap()).unwrap();
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Profile of &lt;x&gt; &amp; y"));
        let titles = svg_titles(&svg);
        assert!(
            titles.contains(&("main (app.py:4)".into(), 100.0)),
            "{titles:?}"
        );
        assert!(
            titles.contains(&("seventy (app.py:7)".into(), 70.0)),
            "{titles:?}"
        );
        assert!(
            titles.contains(&("thirty (app.py:6)".into(), 30.0)),
            "{titles:?}"
        );
    }

    #[test]
    fn an_empty_flame_graph_is_still_a_picture() {
        let profile = Profile::new(Shape::default());
        let svg = String::from_utf8(profile.svg("t", "0 samples").unwrap()).unwrap();
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    }

    #[test]
    fn speedscope_has_a_profile_per_thread_with_weights_in_seconds() {
        let two = batch(
            &["main", "a"],
            &[
                (7, 7, false, &[0, 1], 2),
                (7, 9, false, &[0], 3),
                (8, 8, false, &[0], 1),
            ],
        );
        let mut threads = Profile::new(shape(false, true, false));
        threads.add(&two);
        let json: Value = serde_json::from_str(&threads.speedscope("P", 100)).unwrap();
        assert_eq!(json["$schema"], SPEEDSCOPE_SCHEMA);
        assert_eq!(json["name"], "P");
        assert_eq!(
            json["shared"]["frames"][0],
            serde_json::json!({"name": "main", "file": "app.py", "line": 4})
        );
        let profiles = json["profiles"].as_array().unwrap();
        let names: Vec<&str> = profiles
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["thread 7 \"t7\"", "thread 9 \"t9\"", "thread 8 \"t8\""]
        );
        assert_eq!(profiles[0]["type"], "sampled");
        assert_eq!(profiles[0]["unit"], "seconds");
        assert_eq!(profiles[0]["samples"], serde_json::json!([[0, 1]]));
        assert_eq!(profiles[0]["weights"], serde_json::json!([0.02]));
        assert_eq!(profiles[0]["endValue"], 0.02);

        // The whole tree in one profile: a frame per process at the root.
        let mut tree = Profile::new(shape(true, false, false));
        tree.add(&two);
        let json: Value = serde_json::from_str(&tree.speedscope("P", 10)).unwrap();
        let frames = json["shared"]["frames"].as_array().unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[2], serde_json::json!({"name": "process 7"}));
        assert_eq!(frames[3], serde_json::json!({"name": "process 8"}));
        let profiles = json["profiles"].as_array().unwrap();
        assert_eq!(profiles.len(), 1);
        assert_eq!(
            profiles[0]["samples"],
            serde_json::json!([[2, 0], [2, 0, 1], [3, 0]])
        );
        assert_eq!(profiles[0]["weights"], serde_json::json!([0.3, 0.2, 0.1]));
    }

    #[test]
    fn titles_name_what_was_profiled() {
        let target = pid(42);
        assert_eq!(
            title(Scope::Target, target, "python3 app.py"),
            "Profile of target PID 42 (python3 app.py)"
        );
        assert_eq!(
            title(Scope::Process(pid(43)), target, ""),
            "Profile of PID 43, in the tree of target PID 42"
        );
        assert_eq!(
            title(Scope::All, target, "x\x1b"),
            "Profile of every Python process in the tree of target PID 42 (x\\x1b)"
        );
    }

    #[test]
    fn each_format_has_its_default_file() {
        assert_eq!(Format::Svg.default_output(), "profile.svg");
        assert_eq!(Format::Collapsed.default_output(), "profile.txt");
        assert_eq!(
            Format::Speedscope.default_output(),
            "profile.speedscope.json"
        );
    }
}
