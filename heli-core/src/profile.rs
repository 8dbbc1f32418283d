//! Sampling profiles: the controller reads the stacks of processes of the
//! tree at a steady rate, never stopping them, and hands the client what
//! it saw, counted per distinct stack, each time the client collects
//! (`PROFILE`, then `SAMPLES` until the profile ends).
//!
//! The controller keeps only the counts since the client's last
//! collection ([`Aggregate`]), never every sample, within a byte budget:
//! a profile of any length costs it the same memory.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::process::Pid;
use crate::protocol::Scope;
use crate::stacks::{Activity, Frame, ThreadStack};

/// The highest sampling rate a controller takes, in samples a second.
pub const MAX_RATE: u32 = 10_000;

/// The rate a profile samples at when none is asked for (py-spy's).
pub const DEFAULT_RATE: u32 = 100;

/// How many bytes of frames and stacks one batch holds at most (as
/// [`Aggregate::cost`] counts them): a batch fits a reply line, whatever
/// the client's pace. Samples of new stacks past it are counted in
/// [`Samples::dropped`].
pub const BATCH_BUDGET: usize = 2 << 20;

/// What `PROFILE` asks for: sample `scope` of the tree `rate` times a
/// second, for `duration_ms` milliseconds (0: until the client stops it
/// or goes away).
///
/// # Examples
///
/// ```
/// use heli_core::profile::ProfileRequest;
/// use heli_core::protocol::{Request, Scope};
///
/// let profile = ProfileRequest::new(Scope::All, 250).duration_ms(30_000);
/// assert_eq!(Request::Profile(profile).to_string(), "PROFILE 250 30000 ALL");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ProfileRequest {
    /// Which processes: the target, one process of the tree, or all of it.
    pub scope: Scope,
    /// Samples a second, 1 to [`MAX_RATE`].
    pub rate: u32,
    /// How long to sample, in milliseconds; 0: until stopped.
    pub duration_ms: u64,
}

impl ProfileRequest {
    /// Samples `scope` `rate` times a second until stopped.
    pub fn new(scope: Scope, rate: u32) -> ProfileRequest {
        ProfileRequest {
            scope,
            rate,
            duration_ms: 0,
        }
    }

    /// Samples for `duration_ms` milliseconds (0: until stopped).
    pub fn duration_ms(mut self, duration_ms: u64) -> ProfileRequest {
        self.duration_ms = duration_ms;
        self
    }
}

/// What a profile saw since the last collection (`SAMPLES <json>`), with
/// its running totals.
///
/// Each stack is counted once per sample it was seen in; the frames of
/// all the batch's stacks are in one table, [`frames`](Samples::frames),
/// which the stacks index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Samples {
    /// How long the profile has run, in milliseconds.
    pub elapsed_ms: u64,
    /// The samples due so far at the rate asked for (running total).
    pub due: u64,
    /// The samples taken so far: moments at which the stacks of at least
    /// one process were read (running total). `due - taken` were lost: the
    /// controller fell behind, or the reads failed.
    pub taken: u64,
    /// Samples taken whose stacks were not kept, the batch being full
    /// (running total).
    pub dropped: u64,
    /// The frames the stacks of this batch name.
    pub frames: Vec<Frame>,
    /// Every distinct stack seen since the last collection, with how many
    /// samples saw it.
    pub stacks: Vec<SampledStack>,
    /// Why the profile ended, once it has: this batch is its last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// One distinct stack of a thread, and how many samples saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SampledStack {
    /// The process.
    pub pid: Pid,
    /// The thread's kernel id.
    pub thread: u64,
    /// The thread's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_name: Option<String>,
    /// Whether the thread was idle (asleep or waiting) in these samples.
    pub idle: bool,
    /// Its frames, outermost first, as indices into [`Samples::frames`].
    pub frames: Vec<u32>,
    /// How many samples saw it.
    pub count: u64,
}

impl SampledStack {
    /// `thread` of `pid` running `frames` (indices), seen `count` times.
    pub fn new(pid: Pid, thread: u64, idle: bool, frames: Vec<u32>, count: u64) -> SampledStack {
        SampledStack {
            pid,
            thread,
            thread_name: None,
            idle,
            frames,
            count,
        }
    }
}

/// The key of a distinct stack in an [`Aggregate`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StackKey {
    pid: Pid,
    thread: u64,
    idle: bool,
    frames: Vec<u32>,
}

/// Counts samples per distinct stack between two collections, within
/// [`BATCH_BUDGET`].
///
/// # Examples
///
/// ```
/// use heli_core::profile::Aggregate;
/// use heli_core::stacks::{Frame, ThreadStack};
/// use heli_core::Pid;
///
/// let mut thread = ThreadStack::new(7);
/// thread.frames.push(Frame::new("main", "app.py", Some(3)));
/// let mut aggregate = Aggregate::default();
/// aggregate.add(Pid::this(), &[thread.clone()]);
/// aggregate.add(Pid::this(), &[thread]);
/// let (frames, stacks, dropped) = aggregate.take();
/// assert_eq!((frames.len(), stacks.len(), stacks[0].count, dropped), (1, 1, 2, 0));
/// assert!(aggregate.take().1.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct Aggregate {
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, u32>,
    stacks: HashMap<StackKey, u64>,
    names: HashMap<(Pid, u64), String>,
    /// Bytes used of the budget.
    cost: usize,
    dropped: u64,
}

impl Aggregate {
    /// Counts one sample of `threads`, the stacks of process `pid`. A
    /// thread without a Python frame is left out; a stack that does not
    /// fit the budget is counted as dropped.
    pub fn add(&mut self, pid: Pid, threads: &[ThreadStack]) {
        for thread in threads.iter().filter(|thread| !thread.frames.is_empty()) {
            let Some(frames) = self.frame_ids(&thread.frames) else {
                self.dropped += 1;
                continue;
            };
            let key = StackKey {
                pid,
                thread: thread.native_thread_id,
                idle: thread.activity == Some(Activity::Idle),
                frames,
            };
            if let Some(count) = self.stacks.get_mut(&key) {
                *count += 1;
                continue;
            }
            let cost = Self::stack_cost(&key);
            if self.cost + cost > BATCH_BUDGET {
                self.dropped += 1;
                continue;
            }
            self.cost += cost;
            if let Some(name) = &thread.name {
                if !self.names.contains_key(&(pid, key.thread)) {
                    self.cost += json_len(name);
                    self.names.insert((pid, key.thread), name.clone());
                }
            }
            self.stacks.insert(key, 1);
        }
    }

    /// The ids of `frames` in the table, added as needed; `None` when a
    /// new one does not fit the budget.
    fn frame_ids(&mut self, frames: &[Frame]) -> Option<Vec<u32>> {
        frames
            .iter()
            .map(|frame| {
                if let Some(&id) = self.frame_ids.get(frame) {
                    return Some(id);
                }
                let cost = Self::frame_cost(frame);
                let id = u32::try_from(self.frames.len()).ok()?;
                if self.cost + cost > BATCH_BUDGET {
                    return None;
                }
                self.cost += cost;
                let frame = Frame::new(frame.function.clone(), frame.file.clone(), frame.line);
                self.frame_ids.insert(frame.clone(), id);
                self.frames.push(frame);
                Some(id)
            })
            .collect()
    }

    /// What a frame costs the budget: about its size as JSON.
    fn frame_cost(frame: &Frame) -> usize {
        json_len(&frame.function) + json_len(&frame.file) + 48
    }

    /// What a stack costs the budget: about its size as JSON.
    fn stack_cost(key: &StackKey) -> usize {
        key.frames.len() * 7 + 96
    }

    /// Bytes of the budget used since the last [`take`](Self::take).
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// The frames and stacks counted since the last call, and how many
    /// samples were dropped meanwhile; starts afresh.
    pub fn take(&mut self) -> (Vec<Frame>, Vec<SampledStack>, u64) {
        let names = std::mem::take(&mut self.names);
        let mut stacks: Vec<SampledStack> = std::mem::take(&mut self.stacks)
            .into_iter()
            .map(|(key, count)| SampledStack {
                thread_name: names.get(&(key.pid, key.thread)).cloned(),
                pid: key.pid,
                thread: key.thread,
                idle: key.idle,
                frames: key.frames,
                count,
            })
            .collect();
        // The same counts give the same batch.
        stacks.sort_by(|a, b| {
            (a.pid, a.thread, a.idle, &a.frames).cmp(&(b.pid, b.thread, b.idle, &b.frames))
        });
        self.frame_ids.clear();
        self.cost = 0;
        let dropped = std::mem::take(&mut self.dropped);
        (std::mem::take(&mut self.frames), stacks, dropped)
    }
}

/// About the length of `text` as a JSON string: a control character is
/// written `\u00XX`.
fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|byte| if byte < 0x20 { 6 } else { 1 })
        .sum::<usize>()
        + text.bytes().filter(|&b| b == b'"' || b == b'\\').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(id: u64, idle: bool, functions: &[&str]) -> ThreadStack {
        let mut thread = ThreadStack::new(id);
        thread.name = Some(format!("t{id}"));
        thread.activity = Some(if idle {
            Activity::Idle
        } else {
            Activity::Running
        });
        for (line, function) in functions.iter().enumerate() {
            thread
                .frames
                .push(Frame::new(*function, "app.py", Some(line as u32 + 1)));
        }
        thread
    }

    #[test]
    fn counts_distinct_stacks_per_thread_and_activity_sharing_frames() {
        let pid = Pid::new(40).unwrap();
        let mut aggregate = Aggregate::default();
        for _ in 0..7 {
            aggregate.add(
                pid,
                &[thread(1, false, &["main", "a"]), thread(2, true, &[])],
            );
        }
        for _ in 0..3 {
            aggregate.add(pid, &[thread(1, false, &["main", "b"])]);
        }
        aggregate.add(pid, &[thread(1, true, &["main", "b"])]);
        let (frames, stacks, dropped) = aggregate.take();
        assert_eq!(dropped, 0);
        let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names, ["main", "a", "b"]);
        let counts: Vec<(Vec<u32>, bool, u64)> = stacks
            .iter()
            .map(|s| (s.frames.clone(), s.idle, s.count))
            .collect();
        assert_eq!(
            counts,
            [
                (vec![0, 1], false, 7),
                (vec![0, 2], false, 3),
                (vec![0, 2], true, 1)
            ]
        );
        assert!(stacks
            .iter()
            .all(|s| s.thread_name.as_deref() == Some("t1")));
        assert_eq!(aggregate.cost(), 0);
        assert_eq!(aggregate.take(), (vec![], vec![], 0));
    }

    #[test]
    fn a_stack_costs_its_frames_once_and_seven_bytes_a_frame() {
        let pid = Pid::new(42).unwrap();
        let mut aggregate = Aggregate::default();
        // One frame ("f" in "a.py": 1 + 4 + 48), a stack of ten of it.
        let mut deep = ThreadStack::new(1);
        deep.frames = vec![Frame::new("f", "a.py", Some(1)); 10];
        aggregate.add(pid, &[deep.clone()]);
        assert_eq!(aggregate.cost(), 53 + 10 * 7 + 96);
        // Seen again, it costs nothing more; a name costs its JSON.
        aggregate.add(pid, &[deep]);
        assert_eq!(aggregate.cost(), 53 + 10 * 7 + 96);
        let mut named = ThreadStack::new(2);
        named.name = Some("w\"\n".into());
        named.frames.push(Frame::new("f", "a.py", Some(1)));
        aggregate.add(pid, &[named]);
        assert_eq!(aggregate.cost(), 53 + 10 * 7 + 96 + 7 + 96 + (1 + 2 + 6));
    }

    #[test]
    fn the_budget_bounds_a_batch_and_counts_what_it_drops() {
        let pid = Pid::new(41).unwrap();
        let mut aggregate = Aggregate::default();
        let long = "f".repeat(4096);
        let mut kept = 0;
        for i in 0..2000 {
            let function = format!("{long}{i}");
            aggregate.add(pid, &[thread(1, false, &[function.as_str()])]);
            assert!(aggregate.cost() <= BATCH_BUDGET);
            kept = kept.max(aggregate.stacks.len());
        }
        // Known stacks are still counted once the budget is spent.
        let first = format!("{long}0");
        aggregate.add(pid, &[thread(1, false, &[first.as_str()])]);
        let (frames, stacks, dropped) = aggregate.take();
        assert_eq!(stacks.len(), kept);
        assert_eq!(frames.len(), kept);
        assert_eq!(dropped, 2000 - kept as u64);
        assert_eq!(stacks.iter().map(|s| s.count).sum::<u64>(), kept as u64 + 1);
        let json = serde_json::to_string(&Samples {
            frames,
            stacks,
            ..Samples::default()
        })
        .unwrap();
        assert!(json.len() < crate::protocol::MAX_REPLY, "{}", json.len());
    }

    /// Stacks of one frame, each of another thread: the frame is paid for
    /// once, and the stacks alone spend the budget.
    #[test]
    fn stacks_of_known_frames_are_bounded_by_the_budget_too() {
        let pid = Pid::new(43).unwrap();
        let mut aggregate = Aggregate::default();
        let each = 7 + 96;
        let threads = BATCH_BUDGET / each + 100;
        for id in 0..threads as u64 {
            let mut unnamed = ThreadStack::new(id);
            unnamed.frames.push(Frame::new("f", "a.py", Some(1)));
            aggregate.add(pid, &[unnamed]);
            assert!(aggregate.cost() <= BATCH_BUDGET, "{}", aggregate.cost());
        }
        let (frames, stacks, dropped) = aggregate.take();
        assert_eq!(frames.len(), 1);
        assert!(stacks.len() >= BATCH_BUDGET / each - 1, "{}", stacks.len());
        assert_eq!(stacks.len() as u64 + dropped, threads as u64);
    }

    /// A stack whose cost fills the budget to the byte is kept; the next
    /// new one is dropped.
    #[test]
    fn a_stack_that_fits_the_budget_exactly_is_kept() {
        let pid = Pid::new(44).unwrap();
        let frame = Frame::new("f", "a.py", Some(1));
        let stack = |id: u64, depth: usize| {
            let mut thread = ThreadStack::new(id);
            thread.frames = vec![frame.clone(); depth];
            thread
        };
        let mut aggregate = Aggregate::default();
        aggregate.add(pid, &[stack(0, 1)]);
        // Stacks of one frame (7 + 96 bytes) until what is left is what a
        // deeper stack costs (7 bytes a frame + 96).
        let mut id = 1;
        while (BATCH_BUDGET - aggregate.cost()) % 7 != 96 % 7
            || BATCH_BUDGET - aggregate.cost() > 1000
        {
            aggregate.add(pid, &[stack(id, 1)]);
            id += 1;
        }
        let depth = (BATCH_BUDGET - aggregate.cost() - 96) / 7;
        aggregate.add(pid, &[stack(id, depth)]);
        assert_eq!(aggregate.cost(), BATCH_BUDGET);
        aggregate.add(pid, &[stack(id + 1, 1)]);
        let (_, stacks, dropped) = aggregate.take();
        assert_eq!((stacks.len() as u64, dropped), (id + 1, 1));
    }

    /// A new frame whose cost fills the budget to the byte is kept (its
    /// stack, which does not fit then, is dropped).
    #[test]
    fn a_frame_that_fits_the_budget_exactly_is_kept() {
        let pid = Pid::new(45).unwrap();
        let mut aggregate = Aggregate::default();
        let mut id = 0;
        while BATCH_BUDGET - aggregate.cost() > 160 {
            let mut thread = ThreadStack::new(id);
            thread.frames.push(Frame::new("f", "a.py", Some(1)));
            aggregate.add(pid, &[thread]);
            id += 1;
        }
        // A frame costs its function's and file's JSON and 48 bytes.
        let left = BATCH_BUDGET - aggregate.cost();
        let mut thread = ThreadStack::new(id);
        thread
            .frames
            .push(Frame::new("g".repeat(left - 4 - 48), "a.py", Some(1)));
        aggregate.add(pid, &[thread]);
        assert_eq!(aggregate.cost(), BATCH_BUDGET);
        let (frames, stacks, dropped) = aggregate.take();
        assert_eq!((frames.len(), stacks.len() as u64, dropped), (2, id, 1));
    }
}
