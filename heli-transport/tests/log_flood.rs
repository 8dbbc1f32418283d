//! What a peer can make the socket listener log as often as it likes:
//! connections closed with half a line, and idle connections closed to
//! make room for new ones. A few lines per window, the rest counted, not a
//! line each. (A test binary of its own: it installs a logger that keeps
//! what is logged.)

mod common;

use common::{bounded, standard, told, Server};

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use heli_core::{log_limit, test_log};
use heli_transport::UnixSocketTransport;

/// One test at a time: they count lines in one log.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the test lock, with the logger installed and its lines cleared.
fn logging() -> MutexGuard<'static, ()> {
    let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    assert!(test_log::capture(log::LevelFilter::Info));
    test_log::clear();
    serial
}

/// The lines logged so far that contain `text`.
fn logged(text: &str) -> Vec<String> {
    test_log::lines()
        .into_iter()
        .map(|line| line.text)
        .filter(|line| line.contains(text))
        .collect()
}

/// A served session in a temporary directory, allowing `max` connections.
fn server(max: usize) -> Server<UnixSocketTransport> {
    let tmp = tempfile::tempdir().unwrap();
    let transport = UnixSocketTransport::session_in(tmp.path().join("run"), "test")
        .unwrap()
        .max_connections(max);
    Server::on(Some(tmp), transport, standard)
}

#[test]
fn unfinished_lines_log_a_few_warnings_only() {
    let _serial = logging();
    bounded(20, || {
        let server = server(64);
        let path = server.transport.path().to_owned();
        // Twelve connections, each with half a line: each is closed after
        // 2 s, and logged, up to the peer's allowance.
        let mut streams: Vec<UnixStream> = (0..12)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for stream in &mut streams {
            stream.write_all(b"STA").unwrap();
        }
        for stream in &mut streams {
            assert!(told(stream).contains("not finished"));
        }
        let warned = logged("was not finished within");
        assert_eq!(warned.len(), log_limit::PER_KEY as usize, "{warned:#?}");
        assert!(warned.last().unwrap().contains("held back"), "{warned:#?}");
        server.shut_down().unwrap();
    })
}

#[test]
fn connections_closed_to_make_room_log_a_few_lines_only() {
    let _serial = logging();
    bounded(20, || {
        let server = server(2);
        let path = server.transport.path().to_owned();
        // Twelve times: two idle connections, then two more that push them
        // out.
        let mut streams: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for _ in 0..6 {
            thread::sleep(UnixSocketTransport::EVICTABLE_AFTER + Duration::from_millis(50));
            let newcomers = (0..2)
                .map(|_| UnixStream::connect(&path).unwrap())
                .collect();
            let mut pushed_out = std::mem::replace(&mut streams, newcomers);
            for stream in &mut pushed_out {
                assert!(told(stream).contains("idle while session test was full"));
            }
        }
        let lines = logged("to make room for another");
        assert_eq!(lines.len(), log_limit::PER_KEY as usize, "{lines:#?}");
        assert!(lines.last().unwrap().contains("held back"), "{lines:#?}");
        server.shut_down().unwrap();
    })
}
