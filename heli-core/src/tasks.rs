//! The asyncio tasks of a Python process, read from its memory, as `TASKS`
//! sends them (JSON) and the client draws them (a tree, like CPython
//! 3.14's `python -m asyncio pstree`).
//!
//! Each task says which tasks await it ([`AsyncTask::awaited_by`]); the
//! tree hangs each task under the innermost coroutine of every task that
//! awaits it, reached through that task's coroutine stack. Tasks may await
//! each other in a cycle (a deadlock): then there is no tree to draw, and
//! [`tree_lines`] reports the cycles ([`Cycles`]) instead of looping.
//!
//! # Examples
//!
//! ```
//! use heli_core::stacks::Frame;
//! use heli_core::tasks::{tree_lines, AsyncTask, AsyncTasks};
//! use heli_core::Pid;
//!
//! let mut main = AsyncTask::new(0x10, "Task-1");
//! main.coroutine_stack.push(Frame::new("main", "app.py", Some(9)));
//! let mut worker = AsyncTask::new(0x20, "worker");
//! worker.coroutine_stack.push(Frame::new("work", "app.py", Some(4)));
//! worker.awaited_by.push(0x10);
//! let mut tasks = AsyncTasks::new(Pid::new(4242).unwrap());
//! tasks.tasks = vec![main, worker];
//! assert_eq!(
//!     tree_lines(&tasks).unwrap(),
//!     [
//!         "└── (T) Task-1 (0x10)",
//!         "    └──  main app.py:9",
//!         "        └── (T) worker (0x20)",
//!         "            └──  work app.py:4",
//!     ]
//! );
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::process::Pid;
use crate::stacks::Frame;

/// One asyncio task (a `Task` object, or an instance of a subclass of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AsyncTask {
    /// Its id: the address of the task object in the process (what
    /// `python -m asyncio ps` shows as `task id`).
    pub id: u64,
    /// Its name (`Task.get_name()`: `Task-<n>` unless it was named).
    pub name: String,
    /// The kernel's id of the thread whose list of tasks holds it (the
    /// thread that created it); 0 for the interpreter's own list, which
    /// holds the tasks of threads that ended.
    pub thread_id: u64,
    /// Its coroutine stack, outermost first: its coroutine, then the
    /// coroutine that one awaits, and so on while they are coroutines.
    pub coroutine_stack: Vec<Frame>,
    /// The ids of the tasks (or futures) that await it.
    pub awaited_by: Vec<u64>,
}

impl AsyncTask {
    /// Task `id` named `name`, with nothing else known yet.
    pub fn new(id: u64, name: impl Into<String>) -> AsyncTask {
        AsyncTask {
            id,
            name: name.into(),
            thread_id: 0,
            coroutine_stack: Vec::new(),
            awaited_by: Vec::new(),
        }
    }
}

/// The asyncio tasks of one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AsyncTasks {
    /// The process.
    pub pid: Pid,
    /// Its pending tasks, each thread's in the order they were created.
    pub tasks: Vec<AsyncTask>,
    /// The threads (kernel ids) running an event loop when it was read.
    pub running_loops: Vec<u64>,
    /// Why there is less than all of it, or why there are no tasks at all
    /// (`asyncio` not imported); `None` when nothing is to be said.
    pub note: Option<String>,
}

impl AsyncTasks {
    /// No task of process `pid`.
    pub fn new(pid: Pid) -> AsyncTasks {
        AsyncTasks {
            pid,
            tasks: Vec::new(),
            running_loops: Vec::new(),
            note: None,
        }
    }
}

/// Tasks that await each other in a circle: no tree can be drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycles {
    /// Each cycle's tasks, by id, the first repeated at the end (`a`
    /// awaits `b` awaits `a`: `[b, a, b]` or `[a, b, a]`).
    pub cycles: Vec<Vec<u64>>,
    /// Each task's name.
    pub names: HashMap<u64, String>,
}

impl fmt::Display for Cycles {
    /// As `pstree` reports them, each task with its id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ERROR: await-graph contains cycles - cannot print a tree!"
        )?;
        for cycle in &self.cycles {
            let names: Vec<String> = cycle
                .iter()
                .map(|id| match self.names.get(id) {
                    Some(name) => format!("{name} ({id:#x})"),
                    None => format!("{id:#x}"),
                })
                .collect();
            writeln!(f, "cycle: {}", names.join(" → "))?;
        }
        Ok(())
    }
}

/// How a frame is labelled in the tree (`pstree`'s way): `function
/// file:line`, `function file` without a line.
pub fn frame_label(frame: &Frame) -> String {
    match frame.line {
        None if frame.file.is_empty() || frame.file == "~" => frame.function.clone(),
        None => format!("{} {}", frame.function, frame.file),
        Some(0) if frame.file.is_empty() => frame.function.clone(),
        Some(line) => format!("{} {}:{line}", frame.function, frame.file),
    }
}

/// A node of the tree: a task (its index) or a coroutine frame (its label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Node {
    Task(usize),
    Coroutine(usize),
}

/// At most this many bytes of lines [`tree_lines`] draws: a task awaited
/// by several tasks is drawn under each, so that a target's tasks of a few
/// kilobytes may draw a tree of exponential size (tasks that each gather
/// the same two tasks of the next layer), or of quadratic size (a long
/// chain, each level indented further).
pub const MAX_TREE_TEXT: usize = 128 << 20;

/// The tree of `tasks`, as lines (the way `python -m asyncio pstree` draws
/// it, each task followed by its id): one tree per task no task awaits,
/// in the order of the tasks; under a task, its coroutine stack, outermost
/// first, and under the innermost coroutine of an awaiting task, the tasks
/// it awaits. A task awaited by several tasks is drawn under each. An
/// awaiter that is not one of the tasks (a future that is not a task) is
/// left out. A tree past [`MAX_TREE_TEXT`] is cut there, its last line
/// saying so.
///
/// # Errors
///
/// [`Cycles`] when tasks await each other in a circle.
pub fn tree_lines(tasks: &AsyncTasks) -> Result<Vec<String>, Cycles> {
    let index: HashMap<u64, usize> = tasks
        .tasks
        .iter()
        .enumerate()
        .map(|(i, task)| (task.id, i))
        .collect();
    // (awaiter, awaited), in order.
    let mut awaits = Vec::new();
    for (child, task) in tasks.tasks.iter().enumerate() {
        for parent in &task.awaited_by {
            if let Some(&parent) = index.get(parent) {
                awaits.push((parent, child));
            }
        }
    }
    let cycles = find_cycles(tasks.tasks.len(), &awaits);
    if !cycles.is_empty() {
        return Err(Cycles {
            cycles: cycles
                .into_iter()
                .map(|cycle| cycle.into_iter().map(|i| tasks.tasks[i].id).collect())
                .collect(),
            names: tasks
                .tasks
                .iter()
                .map(|task| (task.id, task.name.clone()))
                .collect(),
        });
    }
    let mut labels: Vec<String> = Vec::new();
    let mut children: HashMap<Node, Vec<Node>> = HashMap::new();
    // Each parent's coroutine children, by label.
    let mut coroutines: HashMap<(Node, String), Node> = HashMap::new();
    let mut path = |parent: Node, stack: &[Frame], children: &mut HashMap<Node, Vec<Node>>| {
        let mut at = parent;
        for frame in stack {
            let label = frame_label(frame);
            at = *coroutines.entry((at, label.clone())).or_insert_with(|| {
                let node = Node::Coroutine(labels.len());
                labels.push(label);
                children.entry(at).or_default().push(node);
                node
            });
        }
        at
    };
    let mut hung = HashSet::new();
    for &(parent, child) in &awaits {
        let at = path(
            Node::Task(parent),
            &tasks.tasks[parent].coroutine_stack,
            &mut children,
        );
        if hung.insert((at, child)) {
            children.entry(at).or_default().push(Node::Task(child));
        }
    }
    let awaiting: HashSet<usize> = awaits.iter().map(|&(parent, _)| parent).collect();
    for (i, task) in tasks.tasks.iter().enumerate() {
        if !awaiting.contains(&i) {
            path(Node::Task(i), &task.coroutine_stack, &mut children);
        }
    }
    let awaited: HashSet<usize> = awaits.iter().map(|&(_, child)| child).collect();
    let label = |node: Node| match node {
        Node::Task(i) => {
            let task = &tasks.tasks[i];
            format!("(T) {} ({:#x})", task.name, task.id)
        }
        Node::Coroutine(i) => format!(" {}", labels[i]),
    };
    let mut lines = Vec::new();
    let mut drawn = 0;
    for root in (0..tasks.tasks.len()).filter(|i| !awaited.contains(i)) {
        // Depth first, without recursion: (node, prefix, last).
        let mut pending = vec![(Node::Task(root), String::new(), true)];
        while let Some((node, prefix, last)) = pending.pop() {
            let branch = if last { "└── " } else { "├── " };
            let line = format!("{prefix}{branch}{}", label(node));
            drawn += line.len() + 1;
            if drawn > MAX_TREE_TEXT {
                lines.push(format!(
                    "(cut: the tree passes {MAX_TREE_TEXT} bytes; `--json` lists each task once)"
                ));
                return Ok(lines);
            }
            lines.push(line);
            let prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
            let kids = children.get(&node).map_or(&[][..], Vec::as_slice);
            for (k, &kid) in kids.iter().enumerate().rev() {
                pending.push((kid, prefix.clone(), k == kids.len() - 1));
            }
        }
    }
    Ok(lines)
}

/// The cycles of the graph of `n` nodes with edges `edges`, as `pstree`
/// finds them: a depth-first search from each node in order, each edge
/// back to a node on the path closing a cycle. Without recursion.
fn find_cycles(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut seen = HashSet::new();
    for &(from, to) in edges {
        if seen.insert((from, to)) {
            out[from].push(to);
        }
    }
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Color {
        White,
        Grey,
        Black,
    }
    let mut color = vec![Color::White; n];
    let mut cycles = Vec::new();
    for start in 0..n {
        if color[start] != Color::White {
            continue;
        }
        // The path, each node with the next of its edges to follow.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = Color::Grey;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            match out[node].get(*next).copied() {
                Some(to) => {
                    *next += 1;
                    match color[to] {
                        Color::White => {
                            color[to] = Color::Grey;
                            path.push((to, 0));
                        }
                        Color::Grey => {
                            let from = path.iter().position(|&(on, _)| on == to).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                path[from..].iter().map(|&(on, _)| on).collect();
                            cycle.push(to);
                            cycles.push(cycle);
                        }
                        Color::Black => {}
                    }
                }
                None => {
                    color[node] = Color::Black;
                    path.pop();
                }
            }
        }
    }
    cycles
}

/// What `client tasks` prints: the tree of [`tree_lines`], or a line
/// saying there is no task (and whether an event loop runs), and
/// [`note`](AsyncTasks::note) when there is one.
///
/// # Errors
///
/// [`Cycles`] when tasks await each other in a circle.
pub fn tasks_text(tasks: &AsyncTasks) -> Result<String, Cycles> {
    let mut text = String::new();
    if let Some(note) = &tasks.note {
        text.push_str(&format!("({note})\n"));
    }
    if tasks.tasks.is_empty() {
        let loops = match tasks.running_loops.len() {
            0 => "no event loop runs".to_owned(),
            _ => format!(
                "an event loop runs in thread {}",
                tasks
                    .running_loops
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        text.push_str(&format!("No asyncio task in PID {} ({loops})\n", tasks.pid));
        return Ok(text);
    }
    for line in tree_lines(tasks)? {
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, name: &str, stack: &[&str], awaited_by: &[u64]) -> AsyncTask {
        let mut task = AsyncTask::new(id, name);
        task.coroutine_stack = stack
            .iter()
            .map(|function| Frame::new(*function, "t.py", Some(1)))
            .collect();
        task.awaited_by = awaited_by.to_vec();
        task
    }

    fn of(tasks: Vec<AsyncTask>) -> AsyncTasks {
        let mut all = AsyncTasks::new(Pid::new(7).unwrap());
        all.tasks = tasks;
        all
    }

    #[test]
    fn nested_groups_share_their_coroutine_path() {
        let tasks = of(vec![
            task(1, "Task-1", &["main", "TaskGroup.__aexit__"], &[]),
            task(2, "a", &["inner", "TaskGroup.__aexit__"], &[1]),
            task(3, "b", &["sleeper"], &[1]),
            task(4, "c", &["sleeper"], &[2]),
        ]);
        assert_eq!(
            tree_lines(&tasks).unwrap(),
            [
                "└── (T) Task-1 (0x1)",
                "    └──  main t.py:1",
                "        └──  TaskGroup.__aexit__ t.py:1",
                "            ├── (T) a (0x2)",
                "            │   └──  inner t.py:1",
                "            │       └──  TaskGroup.__aexit__ t.py:1",
                "            │           └── (T) c (0x4)",
                "            │               └──  sleeper t.py:1",
                "            └── (T) b (0x3)",
                "                └──  sleeper t.py:1",
            ]
        );
        let text = tasks_text(&tasks).unwrap();
        assert_eq!(text.lines().count(), 10);
    }

    #[test]
    fn cycles_are_reported_not_followed() {
        let tasks = of(vec![
            task(1, "Task-1", &["main"], &[]),
            task(2, "a", &["wait_b"], &[3]),
            task(3, "b", &["wait_a"], &[2]),
            task(4, "self", &["me"], &[4]),
        ]);
        let err = tree_lines(&tasks).unwrap_err();
        assert_eq!(err.cycles, [vec![2, 3, 2], vec![4, 4]]);
        let text = err.to_string();
        assert!(
            text.contains("cycle: a (0x2) → b (0x3) → a (0x2)"),
            "{text}"
        );
        assert!(tasks_text(&tasks).is_err());
    }

    #[test]
    fn long_chains_and_unknown_awaiters_neither_overflow_nor_vanish() {
        // Deep enough to overflow a recursive drawing's stack in a test thread.
        let n = 3000u64;
        let chain: Vec<AsyncTask> = (1..=n).map(|i| task(i, "t", &["f"], &[i - 1])).collect();
        let lines = tree_lines(&of(chain)).unwrap();
        assert_eq!(lines.len() as u64, 2 * n);
        // Awaited by a future that is no task: a tree of its own.
        let lines = tree_lines(&of(vec![task(5, "lone", &[], &[0x999])])).unwrap();
        assert_eq!(lines, ["└── (T) lone (0x5)"]);
        let n = 50_000u64;
        let mut cyclic: Vec<AsyncTask> = (1..=n).map(|i| task(i, "t", &[], &[i + 1])).collect();
        cyclic.last_mut().unwrap().awaited_by = vec![1];
        let err = tree_lines(&of(cyclic)).unwrap_err();
        assert_eq!(err.cycles.len(), 1);
        assert_eq!(err.cycles[0].len() as u64, n + 1);
    }

    #[test]
    fn a_tree_that_would_explode_is_cut() {
        // Layers of two tasks, each awaited by both tasks of the layer
        // above: 2^60 paths from the top.
        let mut tasks = vec![task(1, "top", &["main"], &[])];
        let mut above = vec![1];
        for layer in 0..60u64 {
            let ids = [10 + 2 * layer, 11 + 2 * layer];
            for id in ids {
                tasks.push(task(id, "t", &["gather"], &above));
            }
            above = ids.to_vec();
        }
        let lines = tree_lines(&of(tasks)).unwrap();
        let bytes: usize = lines.iter().map(|line| line.len() + 1).sum();
        assert!(bytes <= MAX_TREE_TEXT + 200, "{bytes}");
        assert!(lines.last().unwrap().starts_with("(cut: the tree passes"));
        // A chain of 10,000, each level indented further.
        let chain: Vec<AsyncTask> = (1..=10_000u64)
            .map(|i| task(i, "t", &["f"], &[i - 1]))
            .collect();
        let lines = tree_lines(&of(chain)).unwrap();
        assert!(lines.last().unwrap().starts_with("(cut: the tree passes"));
    }

    #[test]
    fn no_task_says_whether_a_loop_runs() {
        let mut tasks = of(Vec::new());
        assert_eq!(
            tasks_text(&tasks).unwrap(),
            "No asyncio task in PID 7 (no event loop runs)\n"
        );
        tasks.running_loops = vec![7];
        tasks.note = Some("asyncio is not imported".into());
        assert_eq!(
            tasks_text(&tasks).unwrap(),
            "(asyncio is not imported)\nNo asyncio task in PID 7 (an event loop runs in thread 7)\n"
        );
    }

    #[test]
    fn frames_are_labelled_as_pstree_does() {
        assert_eq!(frame_label(&Frame::new("f", "a.py", Some(3))), "f a.py:3");
        assert_eq!(frame_label(&Frame::new("f", "a.py", None)), "f a.py");
        assert_eq!(frame_label(&Frame::new("f", "", None)), "f");
        assert_eq!(frame_label(&Frame::new("f", "", Some(0))), "f");
    }

    #[test]
    fn json_round_trips() {
        let tasks = of(vec![task(1, "Task-1", &["main"], &[2])]);
        let json = serde_json::to_string(&tasks).unwrap();
        assert_eq!(serde_json::from_str::<AsyncTasks>(&json).unwrap(), tasks);
    }
}
