//! What the fuzz targets of heli's line protocol share: a model of what a
//! request or reply becomes on the wire, written from the documentation of
//! `heli_core::protocol` (and, where it says nothing, from what its encoding
//! can carry) rather than copied from its code.
//!
//! - A value is *in the protocol's domain* when it can travel at all: no
//!   extra `STATUS` fact is named like a field `STATUS` has itself. (Its
//!   process ids are the protocol's, 1 to `i32::MAX`, by construction: a
//!   `Pid` holds no other.)
//! - Such a value, encoded in either dialect and parsed again, comes back as
//!   [`normalized`] says: `STATUS` words without white space or `=`, line
//!   breaks in free text turned into spaces, an error message without
//!   leading white space, a `STACK` text without carriage returns at its
//!   end. Everything else comes back unchanged.

#![forbid(unsafe_code)]

use heli_core::protocol::{Dialect, Reply, Status};

/// Both dialects, to check each property in each.
pub const DIALECTS: [Dialect; 2] = [Dialect::Upper, Dialect::Lower];

/// The fields a `STATUS` reply has by name; an extra fact may not use them.
pub const STATUS_FIELDS: [&str; 7] = [
    "pid", "state", "uptime", "granter", "holder", "grants", "command",
];

/// Asserts that `line` is exactly one protocol line: it ends in its only
/// newline.
pub fn assert_one_line(line: &str) {
    assert!(line.ends_with('\n'), "no newline at the end: {line:?}");
    assert_eq!(
        line.matches('\n').count(),
        1,
        "more than one line: {line:?}"
    );
}

/// Whether `reply` can be encoded and parsed back: [`extra_facts_free`].
pub fn reply_in_domain(reply: &Reply) -> bool {
    extra_facts_free(reply)
}

/// Whether no extra `STATUS` fact of `reply` is written with the name of one
/// of the fields `STATUS` has itself.
pub fn extra_facts_free(reply: &Reply) -> bool {
    match reply {
        Reply::Status(status) => status
            .extra
            .iter()
            .all(|(key, _)| !STATUS_FIELDS.contains(&word(key).as_str())),
        _ => true,
    }
}

/// A `STATUS` value as it is written: white space and `=` become `_`, and
/// nothing at all becomes `-`.
pub fn word(value: &str) -> String {
    if value.is_empty() {
        return "-".to_owned();
    }
    value
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// What `reply` (in the protocol's domain) is once it has been encoded and
/// parsed again.
pub fn normalized(reply: &Reply) -> Reply {
    let one_line = |text: &str| text.replace(['\n', '\r'], " ");
    match reply {
        Reply::Error(message) => Reply::Error(one_line(message).trim_start().to_owned()),
        // `\n` and `\\` are escaped; a carriage return is sent as it is, and
        // at the end of the line the reader takes it for part of a `\r\n`.
        Reply::Stack(text) => Reply::Stack(text.trim_end_matches('\r').to_owned()),
        Reply::Status(status) => Reply::Status(Status {
            pid: status.pid,
            state: word(&status.state),
            uptime_secs: status.uptime_secs,
            granter: word(&status.granter),
            holder: status.holder,
            grants: status.grants.clone(),
            extra: status
                .extra
                .iter()
                .map(|(key, value)| (word(key), word(value)))
                .collect(),
            command: one_line(&status.command),
        }),
        // The version is the rest of the line.
        Reply::Agent { pid, python } => Reply::Agent {
            pid: *pid,
            python: one_line(python),
        },
        other => other.clone(),
    }
}
