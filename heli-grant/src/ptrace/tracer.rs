//! The tracer threads: each injection runs on one, one injection at a
//! time; a tracer thread that let its tracee go waits a while for the next
//! injection (which then saves starting a thread), and one that gave a
//! tracee up (it never stopped) ends at once, which is what lets that
//! tracee go.
//!
//! Work is handed over through a [`Bell`] (a pipe), not a futex: see
//! `bell.rs`.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use log::debug;

use crate::sys::ThreadTimer;

use super::bell::Bell;

/// How long an idle tracer thread waits for another injection.
const IDLE: Duration = Duration::from_secs(5);

/// What a tracer thread runs.
pub(super) trait Work: Send + 'static {
    /// Runs on the tracer thread, whose timer (if it has one) it may use;
    /// returns whether the thread must end after it (it gave up a tracee
    /// that the end of the thread lets go).
    fn run(self, timer: Option<&ThreadTimer>) -> bool;
}

/// The tracer threads of one injector (clones share them): at most one of
/// them idle at a time.
pub(super) struct Tracers<W> {
    idle: Arc<Mutex<Option<Arc<Tracer<W>>>>>,
}

/// One tracer thread's mailbox: the work, and the bell that says it came.
struct Tracer<W> {
    work: Mutex<Option<W>>,
    bell: Bell,
}

impl<W> Clone for Tracers<W> {
    fn clone(&self) -> Self {
        Tracers {
            idle: self.idle.clone(),
        }
    }
}

impl<W> Default for Tracers<W> {
    fn default() -> Self {
        Tracers {
            idle: Arc::new(Mutex::new(None)),
        }
    }
}

impl<W> fmt::Debug for Tracers<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.idle.lock().is_ok_and(|idle| idle.is_some());
        f.debug_struct("Tracers").field("idle", &idle).finish()
    }
}

impl<W: Work> Tracers<W> {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Tracer<W>>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` on the idle tracer thread, or on a new one.
    pub(super) fn run(&self, work: W) -> io::Result<()> {
        let idle = self.lock().take();
        if let Some(tracer) = idle {
            *lock(&tracer.work) = Some(work);
            return tracer.bell.ring();
        }
        let tracer = Arc::new(Tracer {
            work: Mutex::new(None),
            bell: Bell::new()?,
        });
        let tracers = self.clone();
        thread::Builder::new()
            .name("heli-tracer".to_owned())
            .spawn(move || tracers.serve(&tracer, work))?;
        Ok(())
    }

    /// The body of a tracer thread.
    fn serve(self, tracer: &Arc<Tracer<W>>, first: W) {
        // Short sleeps between looks for a stop stay short.
        if let Err(err) = nix::sys::prctl::set_timerslack(1) {
            debug!("PR_SET_TIMERSLACK: {err}");
        }
        let timer = ThreadTimer::new().unwrap_or_else(|err| {
            debug!("no timer for the tracer thread: {err}");
            None
        });
        let mut work = first;
        loop {
            if work.run(timer.as_ref()) {
                return;
            }
            match self.next(tracer) {
                Some(next) => work = next,
                None => return,
            }
        }
    }

    /// Offers this thread for the next injection, and waits for it; `None`
    /// when the thread should end (another one is idle already, or none
    /// came in time).
    fn next(&self, tracer: &Arc<Tracer<W>>) -> Option<W> {
        {
            let mut idle = self.lock();
            if idle.is_some() {
                return None;
            }
            *idle = Some(tracer.clone());
        }
        if !tracer.bell.wait(Some(IDLE)) {
            let mut idle = self.lock();
            if idle.as_ref().is_some_and(|idle| Arc::ptr_eq(idle, tracer)) {
                *idle = None;
                return None;
            }
            drop(idle);
            // Taken just now: the work is on its way.
            tracer.bell.wait(None);
        }
        lock(&tracer.work).take()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Report {
        to: mpsc::Sender<i32>,
        end: bool,
    }

    impl Work for Report {
        fn run(self, _timer: Option<&ThreadTimer>) -> bool {
            self.to
                .send(nix::unistd::gettid().as_raw())
                .expect("the test waits");
            self.end
        }
    }

    #[test]
    fn reuses_an_idle_thread_but_not_one_that_must_end() {
        let tracers = Tracers::default();
        let (to, from) = mpsc::channel();
        let run = |end| {
            tracers
                .run(Report {
                    to: to.clone(),
                    end,
                })
                .unwrap();
            let tid = from.recv().unwrap();
            // Let it offer itself again.
            thread::sleep(Duration::from_millis(20));
            tid
        };
        let first = run(false);
        assert_eq!(run(false), first);
        assert_eq!(run(true), first);
        let next = run(false);
        assert_ne!(next, first);
        assert_eq!(run(false), next);
    }
}
