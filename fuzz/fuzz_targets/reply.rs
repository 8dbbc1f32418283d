//! The client's side: any bytes read as a reply line.
//!
//! - a client takes a reply as UTF-8 text; `Reply::parse` never panics on
//!   it, and refuses what it does not understand as `MalformedReply`;
//! - a trailing newline makes no difference;
//! - a reply that parses, encoded again in either dialect, is one line that
//!   parses to the same reply (normalised as `heli_fuzz::normalized` says:
//!   only line breaks inside free text, and `=` or blanks inside `STATUS`
//!   words, may change), and encoding that gives the same line again.
#![no_main]

use heli_core::protocol::Reply;
use heli_core::ErrorKind;
use heli_fuzz::{assert_one_line, normalized, reply_in_domain, DIALECTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let parsed = Reply::parse(text);
    let with_newline = Reply::parse(&format!("{text}\n"));
    let reply = match parsed {
        Ok(reply) => {
            assert_eq!(with_newline.unwrap(), reply);
            reply
        }
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::MalformedReply);
            assert_eq!(with_newline.unwrap_err().kind(), ErrorKind::MalformedReply);
            return;
        }
    };
    assert!(reply_in_domain(&reply), "{reply:?}");
    for dialect in DIALECTS {
        let encoded = reply.encode(dialect);
        assert_one_line(&encoded);
        let again = Reply::parse(&encoded)
            .unwrap_or_else(|err| panic!("{reply:?} encoded as {encoded:?}: {err}"));
        assert_eq!(again, normalized(&reply), "{encoded:?}");
        assert_eq!(again.encode(dialect), encoded);
    }
});
