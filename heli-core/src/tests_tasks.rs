//! `TASKS`: the asyncio tasks of the target or of a process of its tree,
//! read on the inspector's thread and authorized as `STACKS` is; they use
//! the fakes of [`super`].

use super::*;
use crate::protocol::{Dialect, MAX_REPLY};

#[test]
fn tasks_of_the_target_and_of_a_process_of_its_tree() {
    let (fake, _, target) = controller();
    add_workers(&target);
    let family = Family::of(&target, &[4242, 5002]);
    let running = start(controller_over(&fake, &Recorder::default(), &target).inspector(family));
    let client = fake.client();
    let tasks = client.tasks(None).unwrap();
    assert_eq!(tasks.pid, PID);
    let names: Vec<&str> = tasks.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["main-4242", "child"]);
    assert_eq!(tasks.tasks[1].awaited_by, [0x100]);
    let tasks = client.tasks(Some(pid(5002))).unwrap();
    assert_eq!(tasks.tasks[0].name, "main-5002");
    // In the lower-case dialect, as one line of JSON.
    let reply = fake.raw(b"tasks 5002\n");
    assert!(reply.starts_with("tasks {\"pid\":5002,"), "{reply}");
    assert_eq!(reply.matches('\n').count(), 1);
    running.terminate(&fake);
}

#[test]
fn tasks_of_a_process_outside_the_tree_or_not_python_are_refused_with_the_reason() {
    let (fake, _, target) = controller();
    add_workers(&target);
    // 6000 runs, but is no descendant of the target.
    target.table().add(6000, 1, 6000);
    let family = Family::of(&target, &[4242, 6000]);
    let running = start(controller_over(&fake, &Recorder::default(), &target).inspector(family));
    let client = fake.client();
    let err = client.tasks(Some(pid(6000))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.message().contains("6000"), "{err}");
    let err = client.tasks(Some(pid(5001))).unwrap_err();
    assert_eq!(
        err.message(),
        "Cannot read the asyncio tasks of PID 5001: not a Python 3.14 process"
    );
    running.terminate(&fake);
}

#[test]
fn a_controller_without_an_inspector_says_it_cannot_read_tasks() {
    let (fake, _, _, running) = started();
    let err = fake.client().tasks(None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(
        err.message()
            .contains("cannot read its target's asyncio tasks"),
        "{err}"
    );
    running.terminate(&fake);
}

#[test]
fn a_tasks_reply_too_long_leaves_the_last_tasks_out_and_says_how_many() {
    use crate::tasks::{AsyncTask, AsyncTasks};
    let mut tasks = AsyncTasks::new(PID);
    let name = "n".repeat(1 << 16);
    for id in 0..100 {
        tasks.tasks.push(AsyncTask::new(id, name.clone()));
    }
    let fitted = crate::event_loop::fit_tasks(tasks.clone());
    let line = Reply::Tasks(fitted.clone()).encode(Dialect::Upper);
    assert!(line.len() <= MAX_REPLY, "{}", line.len());
    let kept = fitted.tasks.len();
    assert!((50..100).contains(&kept), "{kept} kept");
    assert_eq!(fitted.tasks[..], tasks.tasks[..kept]);
    let note = fitted.note.unwrap();
    assert!(
        note.contains(&format!("{} of 100 tasks left out", 100 - kept)),
        "{note}"
    );
    // Small enough: as it was.
    tasks.tasks.truncate(3);
    assert_eq!(crate::event_loop::fit_tasks(tasks.clone()), tasks);
}

#[test]
fn a_cut_tasks_reply_keeps_as_many_tasks_as_fit() {
    use crate::tasks::{AsyncTask, AsyncTasks};
    // Many small tasks: a byte miscounted for each one left out would add
    // up to whole tasks.
    let mut tasks = AsyncTasks::new(PID);
    for id in 0..120_000 {
        tasks.tasks.push(AsyncTask::new(id, format!("t{id}")));
    }
    let fitted = crate::event_loop::fit_tasks(tasks.clone());
    let kept = fitted.tasks.len();
    assert!(kept < tasks.tasks.len());
    let room = MAX_REPLY - 300;
    let mut one_more = fitted.clone();
    one_more.note = None;
    assert!(serde_json::to_string(&one_more).unwrap().len() <= room);
    one_more.tasks.push(tasks.tasks[kept].clone());
    assert!(serde_json::to_string(&one_more).unwrap().len() > room);
}
