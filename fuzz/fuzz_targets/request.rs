//! The controller's side: any bytes a client sends as a request line.
//!
//! - `parse_request` never panics;
//! - a line whose text (without its `\n` or `\r\n`) has `MAX_LINE` bytes or
//!   more is refused as too long, and only such a line;
//! - a request that parses is in the protocol's domain, was read in the
//!   dialect `dialect_of_line` gives, and encoded in either dialect parses
//!   back to itself in that dialect;
//! - a refusal is one `ERROR:` line that a client parses back to exactly the
//!   error's message;
//! - commands are case-insensitive (the dialect follows the case) and blanks
//!   around the words do not matter.
#![no_main]

use heli_core::protocol::{dialect_of_line, parse_request, Dialect, Reply, Request, MAX_LINE};
use heli_core::{Error, ErrorKind};
use heli_fuzz::{assert_one_line, DIALECTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let parsed = parse_request(line);
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    assert_eq!(
        matches!(&parsed, Err(err) if err.kind() == ErrorKind::LineTooLong),
        text.len() >= MAX_LINE,
        "{} bytes without the newline: {parsed:?}",
        text.len()
    );

    match &parsed {
        Ok((request, dialect)) => {
            assert_eq!(*dialect, dialect_of_line(line));
            for dialect in DIALECTS {
                let encoded = request.encode(dialect);
                assert_one_line(&encoded);
                assert!(encoded.len() <= MAX_LINE);
                assert_eq!(
                    parse_request(encoded.as_bytes()).unwrap(),
                    (*request, dialect),
                    "{encoded:?}"
                );
            }
            assert_eq!(
                request.to_string(),
                request.encode(Dialect::Upper).trim_end()
            );
        }
        Err(err) => {
            let reply = Reply::error(err).encode(dialect_of_line(line));
            assert_one_line(&reply);
            assert!(reply.len() <= MAX_LINE, "{} bytes", reply.len());
            assert_eq!(
                Reply::parse(&reply).unwrap(),
                Reply::Error(err.message().to_owned())
            );
        }
    }

    let upper = parse_request(&line.to_ascii_uppercase());
    let lower = parse_request(&line.to_ascii_lowercase());
    match &parsed {
        Ok((request, _)) => {
            assert_eq!(upper.unwrap(), (*request, Dialect::Upper));
            assert_eq!(lower.unwrap(), (*request, Dialect::Lower));
        }
        Err(err) => {
            assert_eq!(upper.unwrap_err().kind(), err.kind());
            assert_eq!(lower.unwrap_err().kind(), err.kind());
        }
    }

    if text.len() + 3 < MAX_LINE {
        let padded = [b" \t", text, b" \n"].concat();
        assert_eq!(outcome(&parse_request(&padded)), outcome(&parsed));
    }
});

/// A parse result in a form that compares errors by kind and message.
fn outcome(
    parsed: &Result<(Request, Dialect), Error>,
) -> Result<(Request, Dialect), (ErrorKind, String)> {
    parsed
        .as_ref()
        .map(|ok| *ok)
        .map_err(|err| (err.kind(), err.message().to_owned()))
}
