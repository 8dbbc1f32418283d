//! The tracer threads: each injection runs on one, one injection at a
//! time; a tracer thread that let its tracee go waits a while for the next
//! injection (which then saves starting a thread), and one that gave a
//! tracee up (it never stopped) ends at once, which is what lets that
//! tracee go.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use log::debug;

/// How long an idle tracer thread waits for another injection.
const IDLE: Duration = Duration::from_secs(5);

/// What a tracer thread runs.
pub(super) trait Work: Send + 'static {
    /// Runs on the tracer thread; returns whether the thread must end
    /// after it (it gave up a tracee that the end of the thread lets go).
    fn run(self) -> bool;
}

/// The tracer threads of one injector (clones share them): at most one of
/// them idle at a time.
pub(super) struct Tracers<W> {
    idle: Arc<Mutex<Option<Idle<W>>>>,
}

/// An idle tracer thread: where to send it work.
struct Idle<W> {
    work: Sender<W>,
    /// Tells it apart from the threads that follow it.
    id: u64,
}

impl<W> Clone for Tracers<W> {
    fn clone(&self) -> Self {
        Tracers {
            idle: self.idle.clone(),
        }
    }
}

impl<W> fmt::Debug for Tracers<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self
            .idle
            .lock()
            .ok()
            .and_then(|idle| idle.as_ref().map(|idle| idle.id));
        f.debug_struct("Tracers").field("idle", &idle).finish()
    }
}

impl<W> Default for Tracers<W> {
    fn default() -> Self {
        Tracers {
            idle: Arc::new(Mutex::new(None)),
        }
    }
}

impl<W: Work> Tracers<W> {
    fn lock(&self) -> MutexGuard<'_, Option<Idle<W>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` on the idle tracer thread, or on a new one.
    pub(super) fn run(&self, work: W) -> io::Result<()> {
        let idle = self.lock().take();
        let work = match idle {
            Some(idle) => match idle.work.send(work) {
                Ok(()) => return Ok(()),
                // It ended meanwhile.
                Err(unsent) => unsent.into_inner(),
            },
            None => work,
        };
        let tracers = self.clone();
        thread::Builder::new()
            .name("heli-tracer".to_owned())
            .spawn(move || tracers.serve(work))?;
        Ok(())
    }

    /// The body of a tracer thread.
    fn serve(self, first: W) {
        // Short sleeps between looks for a stop stay short.
        if let Err(err) = nix::sys::prctl::set_timerslack(1) {
            debug!("PR_SET_TIMERSLACK: {err}");
        }
        let id = nix::unistd::gettid().as_raw() as u64;
        let (sender, receiver) = bounded(1);
        let mut work = first;
        loop {
            if work.run() {
                return;
            }
            match self.wait(id, &sender, &receiver) {
                Some(next) => work = next,
                None => return,
            }
        }
    }

    /// Offers this thread (`id`) for the next injection, and waits for it;
    /// `None` when the thread should end (another one is idle already, or
    /// none came in time).
    fn wait(&self, id: u64, sender: &Sender<W>, receiver: &Receiver<W>) -> Option<W> {
        {
            let mut idle = self.lock();
            if idle.is_some() {
                return None;
            }
            *idle = Some(Idle {
                work: sender.clone(),
                id,
            });
        }
        match receiver.recv_timeout(IDLE) {
            Ok(work) => Some(work),
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = self.lock();
                if idle.as_ref().is_some_and(|idle| idle.id == id) {
                    *idle = None;
                    return None;
                }
                drop(idle);
                // Taken just now: the work is on its way.
                receiver.recv().ok()
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }
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
        fn run(self) -> bool {
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
