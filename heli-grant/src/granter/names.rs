//! The names the granter choices parse from and display as (what a
//! `--granter` or `--grant-method` option takes).

use std::io;

/// Implements `FromStr` (with [`unknown`] for any other name) and
/// `Display` for a fieldless enum, from its variants' names:
/// `names!(Type, "what it is", [Variant => "name", ...]);`.
macro_rules! names {
    ($type:ident, $what:literal, [$($variant:ident => $name:literal),+ $(,)?]) => {
        impl std::str::FromStr for $type {
            type Err = std::io::Error;

            fn from_str(name: &str) -> std::io::Result<$type> {
                match name {
                    $($name => Ok($type::$variant),)+
                    _ => Err($crate::granter::names::unknown($what, name, &[$($name),+])),
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($type::$variant => $name,)+
                })
            }
        }
    };
}
pub(super) use names;

/// The error for `name`, no name of a `what`: an `InvalidInput` that lists
/// the `names` there are.
pub(super) fn unknown(what: &str, name: &str, names: &[&str]) -> io::Error {
    let expected = match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "nothing".to_owned(),
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("unknown {what} {name:?}: expected {expected}"),
    )
}

#[cfg(test)]
mod tests {
    use std::fmt::{Debug, Display};
    use std::str::FromStr;

    use super::super::{GrantMethod, GranterChoice};
    use super::*;

    /// Each of `all` displays as a name that parses back to it.
    fn round_trip<T: Display + FromStr + PartialEq + Debug>(all: &[T]) -> Vec<String> {
        all.iter()
            .map(|value| {
                let name = value.to_string();
                assert_eq!(name.parse::<T>().ok().as_ref(), Some(value), "{name}");
                name
            })
            .collect()
    }

    #[test]
    fn choices_parse_from_their_names() {
        use GrantMethod::{Ptrace, RemoteExec};
        use GranterChoice::{Noop, Yama};
        let choices = round_trip(&[GranterChoice::Auto, Noop, Yama]);
        assert_eq!(choices, ["auto", "noop", "yama"]);
        let methods = round_trip(&[GrantMethod::Auto, Ptrace, RemoteExec]);
        assert_eq!(methods, ["auto", "ptrace", "remote-exec"]);
        let err = "ptrace".parse::<GranterChoice>().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            err.to_string(),
            r#"unknown granter "ptrace": expected auto, noop or yama"#
        );
        let err = "remote_exec".parse::<GrantMethod>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown grant method "remote_exec": expected auto, ptrace or remote-exec"#
        );
        let err = unknown("number", "two", &["one"]);
        assert_eq!(err.to_string(), r#"unknown number "two": expected one"#);
    }
}
