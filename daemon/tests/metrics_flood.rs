//! The metrics endpoint under a flood of idle connections, on the public
//! API (`MetricsServer::start`, its 5 s deadline). One test in this binary:
//! it counts the process's threads, which other tests would disturb.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use whelm_daemon::metrics_http::MetricsServer;

const BODY: &str = "whelm_up 1\n";

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Whether the server has closed `s`: EOF (or a reset) within `wait`.
fn closed_within(mut s: &TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("an idle connection got {n} bytes"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("reading an idle connection: {e}"),
    }
}

#[test]
fn idle_connections_neither_add_threads_nor_shut_a_scrape_out() {
    let before = threads();
    let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), "flood-metrics", || {
        BODY.into()
    })
    .unwrap();
    assert!(threads() <= before + 1);

    // 200 connections that never send a byte: over three times the cap.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(m.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        threads() <= before + 1,
        "{} threads, {before} before",
        threads()
    );

    // A scrape still gets through, at once (the deadline is 5 s).
    let t = Instant::now();
    let r = scrape(m.addr);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        r,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        )
    );

    // Past the cap of 64 the server closed connections (the ones waiting
    // longest): one of the later ones, number 100, sees EOF soon, and at
    // most 64 are left open.
    assert!(closed_within(&idle[100], Duration::from_secs(1)));
    assert!(closed_within(&idle[0], Duration::from_secs(1)));
    let open = idle
        .iter()
        .filter(|s| !closed_within(s, Duration::from_millis(5)))
        .count();
    assert!(open <= 64, "{open} idle connections still open");
    assert!(
        threads() <= before + 1,
        "{} threads, {before} before",
        threads()
    );

    // Still answering with the survivors held open; then stop at once.
    assert!(scrape(m.addr).starts_with("HTTP/1.1 200 OK\r\n"));
    let t = Instant::now();
    m.stop();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(1);
    while threads() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(threads(), before);
}
