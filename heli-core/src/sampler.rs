//! The samplers of `PROFILE`: a thread per profile reads the stacks of
//! the processes profiled at the rate asked for (through the
//! [`Inspector`], which never stops them) and counts them; the loop hands
//! the counts to the client each time it collects (`SAMPLES`).

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::debug;

use crate::authorize::other_user;
use crate::inspector::Inspector;
use crate::process::ProcessId;
use crate::profile::{Aggregate, Samples};

/// How long a process whose stacks were read before may fail to be read
/// before its profile ends (a process that execs another program, or whose
/// memory is no longer readable).
const FAILING_FOR: Duration = Duration::from_secs(2);

/// How long past its time a profile whose sampler is still in a read (of
/// a process in uninterruptible sleep, or whose memory a read waits on)
/// is ended without it, with what it has.
const LATE: Duration = Duration::from_secs(1);

/// How often the processes of a whole tree's profile are looked up again
/// (new workers are profiled from then on).
const TREE_REFRESH: Duration = Duration::from_secs(1);

/// Which processes a profile samples.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sampled {
    /// This one.
    One(ProcessId),
    /// The Python processes of the tree under this one, looked up again
    /// every [`TREE_REFRESH`].
    Tree(ProcessId),
}

/// A profile to start.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) sampled: Sampled,
    /// Samples a second, at least 1.
    pub(crate) rate: u32,
    /// How long to sample; `None`: until stopped.
    pub(crate) duration: Option<Duration>,
    /// How messages name what is sampled (`target PID 4242`).
    pub(crate) name: String,
    /// The controller's effective user, when known: a process of a tree
    /// that runs as another user is not sampled ([`other_user`], as
    /// `STACKS ALL` skips it).
    pub(crate) me: Option<u32>,
}

/// How many sampler threads may run at once: those of running profiles,
/// and those of profiles stopped while the thread was in a read that has
/// not returned yet (a process in uninterruptible sleep).
pub(crate) const MAX_SAMPLERS: usize = 8;

/// Starts samplers: each gets a share of the controller's inspector.
pub(crate) struct Profiler {
    start: Box<dyn Fn(Plan, Arc<()>) -> std::io::Result<Sampling> + Send>,
    /// Held by every sampler thread while it runs.
    threads: Arc<()>,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl Profiler {
    /// Samplers that read through `inspector`.
    pub(crate) fn new<I: Inspector + Send + Sync + 'static>(inspector: Arc<I>) -> Profiler {
        Profiler {
            start: Box::new(move |plan, running| Sampling::start(inspector.clone(), plan, running)),
            threads: Arc::new(()),
        }
    }

    /// Starts sampling as `plan` says, on a thread of its own, unless
    /// [`MAX_SAMPLERS`] run already.
    pub(crate) fn start(&self, plan: Plan) -> std::io::Result<Sampling> {
        if self.running() >= MAX_SAMPLERS {
            return Err(std::io::Error::other(format!(
                "{MAX_SAMPLERS} samplers run already (some may be stuck reading a process in uninterruptible sleep)"
            )));
        }
        (self.start)(plan, self.threads.clone())
    }

    /// How many sampler threads run.
    pub(crate) fn running(&self) -> usize {
        Arc::strong_count(&self.threads) - 1
    }
}

/// What a sampler has counted since the last collection, and its totals.
#[derive(Debug, Default)]
struct Progress {
    aggregate: Aggregate,
    due: u64,
    taken: u64,
    dropped: u64,
    /// Why it ended, and when (milliseconds after its start).
    ended: Option<(String, u64)>,
}

/// A running (or ended, not yet collected) profile. Dropping it stops the
/// sampler at once (a thread in the middle of a read ends after it).
#[derive(Debug)]
pub(crate) struct Sampling {
    progress: Arc<Mutex<Progress>>,
    /// Dropped to wake the sampler and stop it.
    stop: Option<Sender<()>>,
    started: Instant,
    /// How long it samples, and how often ([`Plan`]'s).
    duration: Option<Duration>,
    period: Duration,
}

impl Sampling {
    fn start<I: Inspector + Send + Sync + 'static>(
        inspector: Arc<I>,
        plan: Plan,
        running: Arc<()>,
    ) -> std::io::Result<Sampling> {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (stop, stopped) = bounded::<()>(0);
        let started = Instant::now();
        let (duration, period) = (plan.duration, period(&plan));
        let shared = progress.clone();
        thread::Builder::new()
            .name("heli-sampler".into())
            .spawn(move || {
                let _running = running;
                let why = panic::catch_unwind(AssertUnwindSafe(|| {
                    sample(&*inspector, &plan, started, &shared, &stopped)
                }))
                .unwrap_or_else(|_| "the sampler failed (see the controller's log)".into());
                debug!("profile of {} ended: {why}", plan.name);
                end(&mut lock(&shared), why, started);
            })?;
        Ok(Sampling {
            progress,
            stop: Some(stop),
            started,
            duration,
            period,
        })
    }

    /// What was counted since the last collection, with the totals; its
    /// [`ended`](Samples::ended) says why once the profile is over (it is
    /// then the last).
    pub(crate) fn collect(&self) -> Samples {
        let mut progress = lock(&self.progress);
        // Its time is over, but its sampler is still in a read that has
        // not returned (or a round over a tree that takes long): the
        // profile ends all the same; the thread ends after the read.
        if let Some(duration) = self.duration {
            if progress.ended.is_none() && self.started.elapsed() >= duration + LATE {
                progress.due = due(duration, self.period);
                let why = format!(
                    "the {} asked for are over (the sampler was still reading {} later: a round \
                     over a large tree, or a process in uninterruptible sleep)",
                    seconds(duration),
                    seconds(LATE)
                );
                end(&mut progress, why, self.started);
            }
        }
        let (frames, stacks, dropped) = progress.aggregate.take();
        progress.dropped += dropped;
        let elapsed_ms = match &progress.ended {
            Some((_, at)) => *at,
            None => millis(self.started.elapsed()),
        };
        Samples {
            elapsed_ms,
            due: progress.due,
            taken: progress.taken,
            dropped: progress.dropped,
            frames,
            stacks,
            ended: progress.ended.as_ref().map(|(why, _)| why.clone()),
        }
    }

    /// Stops sampling, for `why` (unless it had ended already).
    pub(crate) fn stop(&mut self, why: &str) {
        end(&mut lock(&self.progress), why.to_owned(), self.started);
        self.stop = None;
    }
}

fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Notes that the profile ended for `why`, unless it had already.
fn end(progress: &mut Progress, why: String, started: Instant) {
    if progress.ended.is_none() {
        progress.ended = Some((why, millis(started.elapsed())));
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Samples as `plan` says from `started` on, until its time is over, its
/// processes are gone, or `stopped` wakes it; returns why it ended.
fn sample<I: Inspector>(
    inspector: &I,
    plan: &Plan,
    started: Instant,
    progress: &Mutex<Progress>,
    stopped: &Receiver<()>,
) -> String {
    let period = period(plan);
    let end = plan.duration.map(|duration| started + duration);
    let mut processes = match plan.sampled {
        Sampled::One(process) => vec![process],
        Sampled::Tree(_) => Vec::new(),
    };
    let mut reader = inspector.stack_reader();
    let mut refresh = started;
    let mut failing_since: Option<Instant> = None;
    // The sample due now: the one due `period * tick` after the start.
    let mut tick: u64 = 0;
    loop {
        let now = Instant::now();
        if end.is_some_and(|end| now >= end) {
            let asked = plan.duration.unwrap_or_default();
            lock(progress).due = due(asked, period);
            return format!("the {} asked for are over", seconds(asked));
        }
        if let Sampled::Tree(root) = plan.sampled {
            if now >= refresh {
                refresh = now + TREE_REFRESH;
                match inspector.tree(root) {
                    Ok(tree) if tree.is_empty() => return format!("{} exited", plan.name),
                    Ok(tree) => {
                        processes = tree
                            .iter()
                            .filter(|process| {
                                process.is_python()
                                    && plan.me.is_none_or(|me| {
                                        other_user(process.uid, process.euid, me).is_none()
                                    })
                            })
                            .map(|process| ProcessId {
                                pid: process.pid,
                                start_time: process.start_time,
                            })
                            .collect();
                    }
                    Err(err) => return format!("cannot list the tree of {}: {err}", plan.name),
                }
                if processes.is_empty() && lock(progress).taken == 0 {
                    return format!(
                        "no process of the tree of {} runs a Python whose stacks can be read (3.14 or later)",
                        plan.name
                    );
                }
            }
        }
        let mut read = false;
        let mut failed = None;
        for (i, &process) in processes.iter().enumerate() {
            // A round over a large tree takes long: a profile stopped
            // meanwhile ends now, not after it (its thread counts against
            // MAX_SAMPLERS until it ends). Before the first read, the wait
            // below has just looked.
            if i > 0 && !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                return "stopped".into();
            }
            match reader.stacks(process) {
                Ok(threads) => {
                    read = true;
                    lock(progress).aggregate.add(process.pid, &threads);
                }
                Err(err) => failed = Some((process, err)),
            }
        }
        let taken = {
            let mut progress = lock(progress);
            progress.due = tick + 1;
            progress.taken += u64::from(read);
            progress.taken
        };
        if read {
            failing_since = None;
        } else if let (Sampled::One(_), Some((process, err))) = (plan.sampled, failed) {
            if matches!(inspector.process(process), Ok(None)) {
                return format!("{} exited", plan.name);
            }
            if taken == 0 {
                return format!("cannot read the stacks of {}: {err}", plan.name);
            }
            if failing_since.get_or_insert(now).elapsed() >= FAILING_FOR {
                return format!(
                    "the stacks of {} could not be read for {}: {err}",
                    plan.name,
                    seconds(FAILING_FOR)
                );
            }
        }
        // The next sample due; those whose time passed meanwhile are lost.
        let behind = started.elapsed().as_nanos() / period.as_nanos().max(1);
        tick = (tick + 1).max(u64::try_from(behind).unwrap_or(u64::MAX));
        let at = period
            .as_nanos()
            .checked_mul(u128::from(tick))
            .and_then(|nanos| u64::try_from(nanos).ok())
            .and_then(|nanos| started.checked_add(Duration::from_nanos(nanos)));
        let Some(at) = at else {
            return "the profile ran for too long".into();
        };
        match stopped.recv_timeout(at.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return "stopped".into(),
        }
    }
}

/// The time between two samples of `plan`.
fn period(plan: &Plan) -> Duration {
    Duration::from_secs(1) / plan.rate.max(1)
}

/// How many samples are due in `duration`: every one within it, the last
/// ones too if the thread woke late for them.
fn due(duration: Duration, period: Duration) -> u64 {
    let due = duration.as_nanos().div_ceil(period.as_nanos().max(1));
    u64::try_from(due).unwrap_or(u64::MAX)
}

/// `30 s`, `1.5 s`.
fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::process::Pid;
    use crate::stacks::{Frame, ThreadStack};
    use crate::tree::TreeProcess;

    /// A process whose main thread alternates between two functions, and
    /// which is gone after `lives` reads (0: never).
    #[derive(Default)]
    struct Alternating {
        reads: AtomicU32,
        lives: u32,
        fails: bool,
    }

    impl Inspector for Alternating {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            let read = self.reads.fetch_add(1, Ordering::SeqCst);
            if self.fails || (self.lives != 0 && read >= self.lives) {
                return Err(io::Error::other("not a Python process"));
            }
            let mut thread = ThreadStack::new(process.pid.get().into());
            let function = if read % 2 == 0 { "even" } else { "odd" };
            thread.frames.push(Frame::new(function, "app.py", Some(1)));
            Ok(vec![thread])
        }
        fn process(&self, process: ProcessId) -> io::Result<Option<TreeProcess>> {
            let gone = self.lives != 0 && self.reads.load(Ordering::SeqCst) >= self.lives;
            Ok((!gone).then(|| TreeProcess::new(process.pid)))
        }
    }

    fn plan(rate: u32, duration_ms: Option<u64>) -> Plan {
        Plan {
            sampled: Sampled::One(ProcessId {
                pid: Pid::this(),
                start_time: 1,
            }),
            rate,
            duration: duration_ms.map(Duration::from_millis),
            name: "target PID 1".into(),
            me: None,
        }
    }

    fn until_ended(sampling: &Sampling) -> Vec<Samples> {
        let mut batches = Vec::new();
        loop {
            let batch = sampling.collect();
            let ended = batch.ended.is_some();
            batches.push(batch);
            if ended {
                return batches;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn samples_at_the_rate_for_the_duration_and_says_so() {
        let profiler = Profiler::new(Arc::new(Alternating::default()));
        let sampling = profiler.start(plan(200, Some(500))).unwrap();
        assert_eq!(profiler.running(), 1);
        assert_eq!(format!("{profiler:?}"), "Profiler { running: 1, .. }");
        let batches = until_ended(&sampling);
        let last = batches.last().unwrap();
        assert_eq!(last.ended.as_deref(), Some("the 0.5 s asked for are over"));
        assert_eq!(last.due, 100, "{last:?}");
        // A loaded machine may make it late for some.
        assert!(last.taken >= 50 && last.taken <= last.due, "{last:?}");
        let counted: u64 = batches
            .iter()
            .flat_map(|b| &b.stacks)
            .map(|s| s.count)
            .sum();
        assert_eq!(counted, last.taken);
        assert!(last.elapsed_ms >= 500 && last.elapsed_ms < 1500, "{last:?}");
        // Collected after its end, it says so again, with nothing new.
        let again = sampling.collect();
        assert!(again.stacks.is_empty() && again.ended == last.ended);
        while profiler.running() != 0 {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads only through its stack readers, and counts how many it made
    /// and the reads each did.
    #[derive(Default)]
    struct Readers {
        made: AtomicU32,
    }

    struct Counting<'a>(&'a Readers, u32);

    impl crate::inspector::StackReader for Counting<'_> {
        fn stacks(&mut self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            self.1 += 1;
            let mut thread = ThreadStack::new(process.pid.get().into());
            let function = format!(
                "reader{}_read{}",
                self.0.made.load(Ordering::SeqCst),
                self.1
            );
            thread.frames.push(Frame::new(&function, "app.py", Some(1)));
            Ok(vec![thread])
        }
    }

    impl Inspector for Readers {
        fn stacks(&self, _: ProcessId) -> io::Result<Vec<ThreadStack>> {
            Err(io::Error::other("read without a reader"))
        }
        fn stack_reader(&self) -> Box<dyn crate::inspector::StackReader + '_> {
            self.made.fetch_add(1, Ordering::SeqCst);
            Box::new(Counting(self, 0))
        }
    }

    #[test]
    fn a_profile_reads_through_one_stack_reader_from_start_to_end() {
        let readers = Arc::new(Readers::default());
        let profiler = Profiler::new(readers.clone());
        let sampling = profiler.start(plan(200, Some(300))).unwrap();
        let batches = until_ended(&sampling);
        let last = batches.last().unwrap();
        assert_eq!(last.ended.as_deref(), Some("the 0.3 s asked for are over"));
        assert_eq!(readers.made.load(Ordering::SeqCst), 1);
        let mut functions: Vec<String> = batches
            .iter()
            .flat_map(|batch| &batch.frames)
            .map(|frame| frame.function.clone())
            .collect();
        functions.sort();
        functions.dedup();
        // Each sample the next read of the one reader.
        let mut expected: Vec<String> = (1..=last.taken)
            .map(|read| format!("reader1_read{read}"))
            .collect();
        expected.sort();
        assert!(last.taken >= 2, "{last:?}");
        assert_eq!(functions, expected);
    }

    /// Reads that block until the test lets them go.
    struct Stuck(Mutex<Receiver<()>>);

    impl Inspector for Stuck {
        fn stacks(&self, _: ProcessId) -> io::Result<Vec<ThreadStack>> {
            let _ = self.0.lock().unwrap().recv();
            Err(io::Error::other("let go"))
        }
    }

    #[test]
    fn samplers_stuck_in_a_read_count_against_the_limit_until_it_returns() {
        let (release, stuck) = bounded::<()>(0);
        let profiler = Profiler::new(Arc::new(Stuck(Mutex::new(stuck))));
        for _ in 0..MAX_SAMPLERS {
            let mut sampling = profiler.start(plan(100, None)).unwrap();
            sampling.stop("stopped by the client");
        }
        assert_eq!(profiler.running(), MAX_SAMPLERS);
        let err = profiler.start(plan(100, None)).unwrap_err();
        assert!(
            err.to_string().starts_with("8 samplers run already"),
            "{err}"
        );
        drop(release);
        while profiler.running() != 0 {
            thread::sleep(Duration::from_millis(5));
        }
        profiler.start(plan(100, Some(10))).unwrap();
    }

    #[test]
    fn a_profile_ends_on_time_while_a_read_never_returns() {
        let (release, stuck) = bounded::<()>(0);
        let profiler = Profiler::new(Arc::new(Stuck(Mutex::new(stuck))));
        let sampling = profiler.start(plan(100, Some(200))).unwrap();
        let started = Instant::now();
        let last = loop {
            let batch = sampling.collect();
            if batch.ended.is_some() {
                break batch;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never ended: {batch:?}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        assert!(started.elapsed() >= Duration::from_millis(200) + LATE);
        assert_eq!(
            last.ended.as_deref(),
            Some(
                "the 0.2 s asked for are over (the sampler was still reading 1 s later: a round \
                 over a large tree, or a process in uninterruptible sleep)"
            )
        );
        assert_eq!((last.due, last.taken), (20, 0));
        // The thread still counts until its read returns.
        assert_eq!(profiler.running(), 1);
        drop(release);
        while profiler.running() != 0 {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sampling.collect().ended, last.ended);
    }

    #[test]
    fn a_process_that_goes_ends_the_profile_with_what_it_had() {
        let inspector = Alternating {
            lives: 10,
            ..Alternating::default()
        };
        let sampling = Profiler::new(Arc::new(inspector))
            .start(plan(1000, None))
            .unwrap();
        let batches = until_ended(&sampling);
        let last = batches.last().unwrap();
        assert_eq!(last.ended.as_deref(), Some("target PID 1 exited"));
        assert_eq!(last.taken, 10);
    }

    #[test]
    fn a_process_never_read_ends_the_profile_with_why() {
        let inspector = Alternating {
            fails: true,
            ..Alternating::default()
        };
        let sampling = Profiler::new(Arc::new(inspector))
            .start(plan(100, None))
            .unwrap();
        let last = until_ended(&sampling).pop().unwrap();
        assert_eq!(
            last.ended.as_deref(),
            Some("cannot read the stacks of target PID 1: not a Python process")
        );
        assert_eq!(last.taken, 0);
    }

    /// A tree of 20 Python processes, each read taking 50 ms.
    struct SlowTree;

    impl Inspector for SlowTree {
        fn stacks(&self, _: ProcessId) -> io::Result<Vec<ThreadStack>> {
            thread::sleep(Duration::from_millis(50));
            Ok(Vec::new())
        }
        fn tree(&self, _: ProcessId) -> io::Result<Vec<TreeProcess>> {
            Ok((1..=20)
                .map(|pid| {
                    let mut process = TreeProcess::new(Pid::new(pid).unwrap());
                    process.python = Some("3.14.0".into());
                    process
                })
                .collect())
        }
    }

    /// A tree of three Python processes, the second of another user,
    /// each running a function named after its pid.
    struct TwoUsers;

    impl Inspector for TwoUsers {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            let mut thread = ThreadStack::new(process.pid.get().into());
            let function = format!("f{}", process.pid);
            thread.frames.push(Frame::new(function, "app.py", Some(1)));
            Ok(vec![thread])
        }
        fn tree(&self, _: ProcessId) -> io::Result<Vec<TreeProcess>> {
            Ok((1..=3)
                .map(|pid| {
                    let mut process = TreeProcess::new(Pid::new(pid).unwrap());
                    process.python = Some("3.14.0".into());
                    (process.uid, process.euid) = if pid == 2 { (1000, 0) } else { (0, 0) };
                    process
                })
                .collect())
        }
    }

    #[test]
    fn a_tree_profile_samples_no_process_of_another_user() {
        let profiler = Profiler::new(Arc::new(TwoUsers));
        let mut sampled = plan(100, Some(300));
        sampled.sampled = Sampled::Tree(ProcessId {
            pid: Pid::this(),
            start_time: 1,
        });
        sampled.me = Some(0);
        let sampling = profiler.start(sampled).unwrap();
        let batches = until_ended(&sampling);
        let mut pids: Vec<u32> = batches
            .iter()
            .flat_map(|batch| &batch.stacks)
            .map(|stack| stack.pid.get())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids, [1, 3]);
    }

    #[test]
    fn stopping_a_tree_profile_ends_its_sampler_within_a_read_not_a_round() {
        let profiler = Profiler::new(Arc::new(SlowTree));
        let mut sampled = plan(10_000, None);
        sampled.sampled = Sampled::Tree(ProcessId {
            pid: Pid::this(),
            start_time: 1,
        });
        let mut sampling = profiler.start(sampled).unwrap();
        // Into its first round (of 1 s: 20 reads of 50 ms).
        thread::sleep(Duration::from_millis(120));
        let asked = Instant::now();
        sampling.stop("stopped by the client");
        drop(sampling);
        while profiler.running() != 0 {
            thread::sleep(Duration::from_millis(5));
        }
        let took = asked.elapsed();
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn stopping_wakes_the_sampler_at_once() {
        let profiler = Profiler::new(Arc::new(Alternating::default()));
        // One sample a second: stopping must not wait for the next.
        let mut sampling = profiler.start(plan(1, None)).unwrap();
        while sampling.collect().taken == 0 {
            thread::sleep(Duration::from_millis(5));
        }
        let asked = Instant::now();
        sampling.stop("stopped by the client");
        let last = sampling.collect();
        assert_eq!(last.ended.as_deref(), Some("stopped by the client"));
        assert_eq!(last.taken, 1);
        while profiler.running() != 0 {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(asked.elapsed() < Duration::from_millis(500));
    }
}
