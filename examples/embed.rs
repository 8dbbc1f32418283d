//! Another tool on heli's traits: a `Supervisor` of its own in a `Controller`
//! with heli's FIFO transport and no-op granter. `cargo run --example embed`
use heli::core::{Client, Controller, Exit, Pid, ProcessInfo, Processes, Supervisor};
use heli::{grant::NoopGranter, grant::ProcessSupervisor, transport::FifoTransport};
use std::{error::Error, io, process::Command, thread, time::Duration};

/// Wraps any supervisor: the controller cannot tell the difference.
struct Counting<S>(S, u32);

impl<S: Processes> Processes for Counting<S> {
    fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
        self.0.process(pid)
    }
}
impl<S: Supervisor> Supervisor for Counting<S> {
    fn spawn(&mut self) -> io::Result<Pid> {
        self.1 += 1;
        (self.0.spawn()).inspect(|pid| println!("embed: spawn #{} is PID {pid}", self.1))
    }
    fn describe(&self) -> String {
        format!("{} (spawn #{})", self.0.describe(), self.1)
    }
    fn exits(&self) -> crossbeam_channel::Receiver<Exit> {
        self.0.exits()
    }
    fn pid(&self) -> Option<Pid> {
        self.0.pid()
    }
    fn signal(&mut self, signal: i32) -> io::Result<()> {
        self.0.signal(signal)
    }
    fn terminate(&mut self) -> io::Result<()> {
        self.0.terminate()
    }
    fn kill(&mut self) -> io::Result<()> {
        self.0.kill()
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let transport = FifoTransport::new(dir.path().join("pipes"));
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    let supervisor = Counting(ProcessSupervisor::new(sleep), 0);
    let controller = Controller::new(transport.clone(), NoopGranter, supervisor);
    let running = thread::spawn(move || controller.run());
    let client = Client::new(transport);
    while client.target_pid().is_err() && !running.is_finished() {
        thread::sleep(Duration::from_millis(20)); // until the controller listens
    }
    let (pid, status) = (client.target_pid()?, client.status()?);
    println!("embed: target {pid} runs {}", status.command);
    let mut debugger = Command::new("sleep").arg("60").spawn()?; // a debugger of ours
    client.grant_access(Pid::new(debugger.id()).ok_or("no pid")?)?;
    client.terminate()?;
    debugger.kill()?;
    println!("embed: target ended with {}", running.join().unwrap()?);
    Ok(())
}
