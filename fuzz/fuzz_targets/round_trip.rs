//! Encoding: any request or reply a program can build, encoded in either
//! dialect, is exactly one line, and parses back:
//! - a request to itself (in that dialect) when its PIDs are the protocol's
//!   (1 to `i32::MAX`), else to an `InvalidPid` refusal, never to another
//!   request;
//! - a reply as `heli_fuzz::normalized` says when it is in the protocol's
//!   domain, else to a `MalformedReply` error when a PID is out of range
//!   (an extra fact named like one of `STATUS`'s own fields is out of the
//!   domain: only that it does not panic is checked).
#![no_main]

use heli_core::protocol::{dialect_of_line, parse_request, Reply, Request, Status, MAX_LINE};
use heli_core::ErrorKind;
use heli_fuzz::{
    assert_one_line, extra_facts_free, normalized, reply_in_domain, request_in_domain, DIALECTS,
};
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

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    Ok(match u.choose_index(8)? {
        0 => Request::GetTargetPid,
        1 => Request::GrantAccess(u.arbitrary()?),
        2 => Request::TakeOver(u.arbitrary()?),
        3 => Request::Status,
        4 => Request::Stack,
        5 => Request::Revoke(None),
        6 => Request::Revoke(Some(u.arbitrary()?)),
        _ => Request::Terminate,
    })
}

fn reply(u: &mut Unstructured<'_>) -> Result<Reply> {
    Ok(match u.choose_index(5)? {
        0 => Reply::TargetPid(u.arbitrary()?),
        1 => Reply::Ready,
        2 => Reply::Error(u.arbitrary()?),
        3 => Reply::Stack(u.arbitrary()?),
        _ => Reply::Status(Status {
            pid: u.arbitrary()?,
            state: u.arbitrary()?,
            uptime_secs: u.arbitrary()?,
            granter: u.arbitrary()?,
            holder: u.arbitrary()?,
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
        if request_in_domain(request) {
            assert_eq!(parsed.unwrap(), (*request, dialect), "{line:?}");
        } else {
            assert_eq!(
                parsed.unwrap_err().kind(),
                ErrorKind::InvalidPid,
                "{line:?}"
            );
        }
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
        } else if extra_facts_free(reply) {
            assert_eq!(
                parsed.unwrap_err().kind(),
                ErrorKind::MalformedReply,
                "{line:?}"
            );
        }
    }
}
