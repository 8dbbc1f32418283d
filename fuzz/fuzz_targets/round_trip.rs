//! Encoding: any request or reply a program can build, encoded in either
//! dialect, is exactly one line, and parses back:
//! - a request to itself (in that dialect): its PIDs are the protocol's (1
//!   to `i32::MAX`) by construction, as `Pid`s;
//! - a reply as `heli_fuzz::normalized` says when it is in the protocol's
//!   domain (an extra fact named like one of `STATUS`'s own fields is out
//!   of the domain: only that it does not panic is checked).
#![no_main]

use heli_core::protocol::{dialect_of_line, parse_request, Reply, Request, Status, MAX_LINE};
use heli_core::Pid;
use heli_fuzz::{assert_one_line, normalized, reply_in_domain, DIALECTS};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(request) = request(&mut u) {
        check_request(&request);
    }
    if let Ok(reply) = reply(&mut u) {
        check_reply(&reply);
    }
});

/// Any pid: a `Pid` holds 1 to `i32::MAX` only.
fn pid(u: &mut Unstructured<'_>) -> Result<Pid> {
    let raw = u.int_in_range(1..=Pid::MAX)?;
    Ok(Pid::new(raw).expect("in range"))
}

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    Ok(match u.choose_index(8)? {
        0 => Request::GetTargetPid,
        1 => Request::GrantAccess(pid(u)?),
        2 => Request::TakeOver(pid(u)?),
        3 => Request::Status,
        4 => Request::Stack,
        5 => Request::Revoke(None),
        6 => Request::Revoke(Some(pid(u)?)),
        _ => Request::Terminate,
    })
}

fn reply(u: &mut Unstructured<'_>) -> Result<Reply> {
    Ok(match u.choose_index(5)? {
        0 => Reply::TargetPid(pid(u)?),
        1 => Reply::Ready,
        2 => Reply::Error(u.arbitrary()?),
        3 => Reply::Stack(u.arbitrary()?),
        _ => Reply::Status(Status {
            pid: pid(u)?,
            state: u.arbitrary()?,
            uptime_secs: u.arbitrary()?,
            granter: u.arbitrary()?,
            holder: if u.arbitrary()? { Some(pid(u)?) } else { None },
            extra: u.arbitrary()?,
            command: u.arbitrary()?,
        }),
    })
}

fn check_request(request: &Request) {
    for dialect in DIALECTS {
        let line = request.encode(dialect);
        assert_one_line(&line);
        assert!(line.len() <= MAX_LINE);
        assert_eq!(dialect_of_line(line.as_bytes()), dialect);
        let parsed = parse_request(line.as_bytes());
        assert_eq!(parsed.unwrap(), (*request, dialect), "{line:?}");
    }
}

fn check_reply(reply: &Reply) {
    for dialect in DIALECTS {
        let line = reply.encode(dialect);
        assert_one_line(&line);
        let parsed = Reply::parse(&line);
        if reply_in_domain(reply) {
            let parsed =
                parsed.unwrap_or_else(|err| panic!("{reply:?} encoded as {line:?}: {err}"));
            assert_eq!(parsed, normalized(reply), "{line:?}");
        }
    }
}
