//! Both sides: a byte stream cut into lines by `LineBuffer`, as the
//! transports read it, in chunks of any size, with lines taken out at any
//! time; each complete line then parsed as a request, as the controller does.
//!
//! The lines and errors that come out are those of a simple model of the
//! documented behaviour, whatever the chunks:
//! - each line ending in `\n` of at most `MAX_LINE` bytes comes out whole;
//! - each longer one gives exactly one `LineTooLong` error, and so does an
//!   unfinished line once it has `MAX_LINE` bytes (its rest is dropped);
//! - a partial line is reported until its newline.
//!
//! A line that comes out is never too long for `parse_request`.
#![no_main]

use heli_core::protocol::{parse_request, LineBuffer, MAX_LINE};
use heli_core::ErrorKind;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// What the buffer gave: a line, or a line too long.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Line(Vec<u8>),
    TooLong,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut lines = LineBuffer::new();
    let mut stream = Vec::new();
    let mut got = Vec::new();
    while !u.is_empty() {
        if feed(&mut u, &mut lines, &mut stream, &mut got).is_err() {
            break;
        }
    }
    take(&mut lines, usize::MAX, &mut got);

    let (expected, partial) = model(&stream);
    assert_eq!(got.len(), expected.len());
    for (at, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, expected, "output {at}");
    }
    assert_eq!(lines.has_partial_line(), partial);
});

/// One step: append some bytes (or one byte many times, to make long lines
/// from short inputs), then take out some of the lines.
fn feed(
    u: &mut Unstructured<'_>,
    lines: &mut LineBuffer,
    stream: &mut Vec<u8>,
    got: &mut Vec<Out>,
) -> Result<()> {
    let chunk: Vec<u8> = if u.arbitrary()? {
        let byte: u8 = u.arbitrary()?;
        let count = u.int_in_range(0..=MAX_LINE + 1)?;
        vec![byte; count]
    } else {
        let len = u.int_in_range(0..=64)?;
        u.bytes(len)?.to_vec()
    };
    lines.extend(&chunk);
    stream.extend_from_slice(&chunk);
    let count = u.int_in_range(0..=4)?;
    take(lines, count, got);
    Ok(())
}

/// Takes up to `count` lines or errors out of the buffer, checking each.
fn take(lines: &mut LineBuffer, count: usize, got: &mut Vec<Out>) {
    for _ in 0..count {
        let Some(next) = lines.next_line() else {
            return;
        };
        match next {
            Ok(line) => {
                assert!(line.len() <= MAX_LINE, "{} bytes", line.len());
                assert_eq!(line.last(), Some(&b'\n'));
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                if let Err(err) = parse_request(&line) {
                    assert_ne!(err.kind(), ErrorKind::LineTooLong, "{} bytes", line.len());
                }
                got.push(Out::Line(line));
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::LineTooLong);
                assert_eq!(
                    err.to_string(),
                    format!("Request longer than {MAX_LINE} bytes")
                );
                got.push(Out::TooLong);
            }
        }
    }
}

/// What a whole stream gives, and whether a partial line is left.
fn model(stream: &[u8]) -> (Vec<Out>, bool) {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(at) = rest.iter().position(|&b| b == b'\n') {
        let (line, after) = rest.split_at(at + 1);
        out.push(if line.len() <= MAX_LINE {
            Out::Line(line.to_vec())
        } else {
            Out::TooLong
        });
        rest = after;
    }
    if rest.len() >= MAX_LINE {
        out.push(Out::TooLong);
    }
    (out, !rest.is_empty())
}
