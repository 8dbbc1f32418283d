//! Text that the target controls, made harmless for a terminal.
//!
//! Command lines, thread names, Python's file and function names, source
//! lines and the reasons the controller quotes come from the processes of
//! the tree: a hostile one can put terminal escapes in them (set the title,
//! clear the screen, hide text) or a newline that fakes a line of output.
//! Before the client prints such data as text, each field is escaped here:
//! C0 controls (`\n`, `\r` and `\t` as such, the others as `\x1b`), DEL
//! (`\x7f`) and the C1 controls U+0080 to U+009F (`\u{9b}`, the one-byte
//! CSI, among them). Printable text, Unicode included, is left as it is;
//! a backslash too (so the escapes cannot be told from the same text
//! typed, but they do nothing).
//!
//! Escaping works on the data, field by field, before it is laid out: the
//! layout's own newlines and colours stay, and no field can break out of
//! its place. JSON output needs none of this (serde escapes controls).

use std::borrow::Cow;
use std::fmt::Write;

use crate::core::protocol::Status;
use crate::core::stacks::{ProcessStacks, ThreadStack};
use crate::core::tasks::AsyncTasks;
use crate::core::tree::Tree;

/// Whether `c` is a control character that a terminal may act on: C0,
/// DEL or C1.
fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}')
}

/// `text` with its control characters escaped (`a\x1b[2Jb\nc` for ESC
/// `[2J` and a newline); borrowed when it has none.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(escaped, "\\x{:02x}", u32::from(c));
            }
            '\u{80}'..='\u{9f}' => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Escapes `text` in place.
pub(crate) fn escape_string(text: &mut String) {
    if let Cow::Owned(escaped) = escape(text) {
        *text = escaped;
    }
}

fn escape_option(text: &mut Option<String>) {
    if let Some(text) = text {
        escape_string(text);
    }
}

/// Escapes every text field of `stacks`: commands, Python versions,
/// skip reasons, and each thread's.
pub(crate) fn stacks(stacks: &mut [ProcessStacks]) {
    for process in stacks {
        escape_string(&mut process.command);
        escape_option(&mut process.python);
        escape_option(&mut process.skipped);
        process.threads.iter_mut().for_each(thread);
    }
}

/// Escapes a thread's name, why its frames stop, and its frames' files,
/// functions and source lines.
fn thread(thread: &mut ThreadStack) {
    escape_option(&mut thread.name);
    escape_option(&mut thread.incomplete);
    for frame in &mut thread.frames {
        escape_string(&mut frame.function);
        escape_string(&mut frame.file);
        escape_option(&mut frame.source);
    }
}

/// Escapes every text field of asyncio tasks: names, frames, the note.
pub(crate) fn tasks(tasks: &mut AsyncTasks) {
    for task in &mut tasks.tasks {
        escape_string(&mut task.name);
        for frame in &mut task.coroutine_stack {
            escape_string(&mut frame.function);
            escape_string(&mut frame.file);
            escape_option(&mut frame.source);
        }
    }
    escape_option(&mut tasks.note);
}

/// Escapes every text field of a `PS` tree: commands and Python versions.
pub(crate) fn tree(tree: &mut Tree) {
    for process in &mut tree.processes {
        escape_string(&mut process.command);
        escape_option(&mut process.python);
    }
    escape_option(&mut tree.cut);
}

/// Escapes every text field of a `STATUS` reply: the command, and the
/// other facts (a controller of the same user, but its words all the same).
pub(crate) fn status(status: &mut Status) {
    escape_string(&mut status.command);
    escape_string(&mut status.state);
    escape_string(&mut status.granter);
    for (key, value) in &mut status.extra {
        escape_string(key);
        escape_string(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stacks::Frame;
    use crate::core::tree::TreeProcess;
    use crate::core::Pid;

    /// What a hostile process puts in its names: an OSC title, a screen
    /// clear, colour, a newline and a carriage return that fake a line, a
    /// one-byte CSI, DEL, a NUL.
    const EVIL: &str = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mRED\nFAKE\r\u{9b}1m\x7f\0";

    /// Whether `text` has a control character other than newline.
    fn has_control(text: &str) -> bool {
        text.chars().any(|c| is_control(c) && c != '\n')
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(
            escape(EVIL),
            "\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31mRED\\nFAKE\\r\\u{9b}1m\\x7f\\x00"
        );
        assert_eq!(escape("a\tb"), "a\\tb");
        assert_eq!(escape("\x01\x1f"), "\\x01\\x1f");
        assert_eq!(escape("\u{80}\u{85}\u{9f}"), "\\u{80}\\u{85}\\u{9f}");
    }

    #[test]
    fn printable_text_is_left_alone_and_borrowed() {
        for text in [
            "",
            "python3.14 -m gunicorn -w 2 app:app",
            "gunicorn: worker [app:app]",
            "naïve café — 日本語 🐍 \u{a0}\u{a1}",
            "a literal \\n and \\x1b stay",
            "~!@#$%^&*()_+{}|:\"<>?`-=[];',./",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
        let mut text = String::from("unchanged");
        escape_string(&mut text);
        assert_eq!(text, "unchanged");
        let mut text = String::from("two\nlines");
        escape_string(&mut text);
        assert_eq!(text, "two\\nlines");
    }

    /// Every string of a JSON value.
    fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(text) => out.push(text.clone()),
            serde_json::Value::Array(values) => values.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    out.push(key.clone());
                    strings(value, out);
                }
            }
            _ => {}
        }
    }

    /// No string anywhere in `value` (as serde sees its fields, so a field
    /// added later is checked too) has a control character.
    fn assert_clean(value: serde_json::Value) {
        let mut all = Vec::new();
        strings(&value, &mut all);
        for text in all {
            assert!(!text.chars().any(is_control), "{text:?}");
        }
    }

    fn evil_stacks() -> Vec<ProcessStacks> {
        let mut thread = ThreadStack::new(7);
        thread.name = Some(format!("thr{EVIL}"));
        thread.incomplete = Some(format!("cut{EVIL}"));
        let mut frame = Frame::new(format!("fn{EVIL}"), format!("/tmp/x{EVIL}.py"), Some(1));
        frame.source = Some(format!("sleep()  # {EVIL}"));
        thread.frames = vec![frame];
        let mut process = ProcessStacks::new(Pid::new(42).unwrap());
        process.target = true;
        process.command = format!("python arg{EVIL}");
        process.python = Some(format!("3.14{EVIL}"));
        process.threads = vec![thread];
        let mut skipped = ProcessStacks::new(Pid::new(43).unwrap());
        skipped.parent = Pid::new(42);
        skipped.command = format!("sleep{EVIL}");
        skipped.skipped = Some(format!("not Python{EVIL}"));
        vec![process, skipped]
    }

    #[test]
    fn every_field_of_stacks_is_escaped() {
        let mut stacks = evil_stacks();
        self::stacks(&mut stacks);
        assert_clean(serde_json::to_value(&stacks).unwrap());
        let frame = &stacks[0].threads[0].frames[0];
        assert_eq!(frame.function, format!("fn{}", escape(EVIL)));
        // Laid out, each field stays on its line.
        let text = super::super::render::processes_stack_text(&stacks);
        assert!(!has_control(&text), "{text:?}");
        assert_eq!(text.lines().count(), 8, "{text}");
    }

    #[test]
    fn every_field_of_a_tree_is_escaped() {
        let mut process = TreeProcess::new(Pid::new(42).unwrap());
        process.command = format!("python{EVIL}");
        process.python = Some(format!("3.14{EVIL}"));
        let mut tree = Tree::new(vec![process.clone(), process], false);
        self::tree(&mut tree);
        assert_clean(serde_json::to_value(&tree).unwrap());
        let text = super::super::render::ps_text(&tree, super::super::render::Paint(false));
        assert!(!has_control(&text), "{text:?}");
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn every_field_of_a_status_is_escaped() {
        let line = "STATUS pid=42 state=run\x1b[2Jning uptime=1 granter=ya\u{9b}ma holder=none \
                    grants=none ke\x07y=val\x1bue command=python \x1b]0;T\x07 x\r\n";
        let crate::core::protocol::Reply::Status(mut status) =
            crate::core::protocol::Reply::parse(line).unwrap()
        else {
            panic!("not a status");
        };
        self::status(&mut status);
        assert_eq!(status.command, "python \\x1b]0;T\\x07 x");
        assert_eq!(status.state, "run\\x1b[2Jning");
        assert_eq!(status.granter, "ya\\u{9b}ma");
        assert_eq!(status.extra, [("ke\\x07y".into(), "val\\x1bue".into())]);
        let text = super::super::render::status_text(
            &status,
            |_| None,
            super::super::render::Paint(false),
        );
        assert!(!has_control(&text), "{text:?}");
    }
}
