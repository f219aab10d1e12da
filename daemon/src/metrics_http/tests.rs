//! The responder over real sockets on 127.0.0.1. The flood of idle
//! connections (and the thread count) is in tests/metrics_flood.rs, a binary
//! of its own so that no other test's threads are counted.

use super::*;

use std::net::TcpStream as StdStream;

const BODY: &str = "whelm_up 1\n# HELP x y\nwhelm_x{a=\"b\"} 2\n";

fn server(deadline: Duration) -> MetricsServer {
    MetricsServer::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "metrics-test",
        || BODY.to_string(),
        deadline,
    )
    .unwrap()
}

/// Sends `raw`, then reads until the server closes; a reset ends the read
/// like EOF (what came before it is kept).
fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = StdStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(raw);
    read_until_closed(&mut s)
}

fn read_until_closed(s: &mut StdStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("reading the response: {e} (after {} bytes)", out.len()),
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn expected_200(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n{body}",
        body.len()
    )
}

#[test]
fn get_metrics_is_200_with_the_rendered_body_and_exact_headers() {
    let m = server(CONN_DEADLINE);
    let r = exchange(
        m.addr,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Prometheus/2\r\n\
          Accept: text/plain\r\n\r\n",
    );
    assert_eq!(text(&r), expected_200(BODY));
    // HTTP/1.0, `/`, a query string, bare LF line ends: the same answer.
    for req in [
        &b"GET /metrics HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics?name[]=whelm_up HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.0\n\n",
    ] {
        assert_eq!(
            text(&exchange(m.addr, req)),
            expected_200(BODY),
            "{}",
            text(req)
        );
    }
    m.stop();
}

#[test]
fn head_is_the_get_response_without_the_body() {
    let m = server(CONN_DEADLINE);
    let r = exchange(m.addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(text(&r), expected_200(BODY).replace(BODY, ""));
    m.stop();
}

#[test]
fn another_path_is_404() {
    let m = server(CONN_DEADLINE);
    for req in [
        &b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /metricsx HTTP/1.0\r\n\r\n",
        b"GET metrics HTTP/1.0\r\n\r\n",
    ] {
        let r = text(&exchange(m.addr, req));
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r:?}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r:?}");
        assert!(r.ends_with("\r\n\r\nnot found\n"), "{r:?}");
        assert!(!r.contains("whelm_up"), "{r:?}");
    }
    m.stop();
}

#[test]
fn another_method_is_405() {
    let m = server(CONN_DEADLINE);
    for req in [
        &b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na=b"[..],
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"get /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let r = text(&exchange(m.addr, req));
        assert!(
            r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{r:?}"
        );
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r:?}");
        assert!(!r.contains("whelm_up"), "{r:?}");
    }
    m.stop();
}

#[test]
fn a_malformed_request_line_is_400() {
    let m = server(CONN_DEADLINE);
    for req in [
        &b"GET /metrics\r\n\r\n"[..],
        b"GET /metrics SPDY/3\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 x y z\r\n\r\n",
    ] {
        let r = text(&exchange(m.addr, req));
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r:?}");
    }
    m.stop();
}

#[test]
fn a_head_sent_in_pieces_is_answered() {
    let m = server(CONN_DEADLINE);
    let mut s = StdStream::connect(m.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for piece in [
        &b"GET /met"[..],
        b"rics HTTP/1.1\r\nHost: x\r",
        b"\n\r",
        b"\n",
    ] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(text(&read_until_closed(&mut s)), expected_200(BODY));
    m.stop();
}

#[test]
fn a_head_over_8_kib_is_refused() {
    let m = server(CONN_DEADLINE);
    let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 10 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let r = text(&exchange(m.addr, &req));
    // A 431, or (should the close overtake it) nothing: never the metrics.
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{r:?}"
    );
    assert!(!r.contains("whelm_up"), "{r:?}");
    // Just under the cap is fine.
    let mut req = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    let pad = MAX_HEAD - req.len() - 4;
    req.extend(std::iter::repeat_n(b'a', pad));
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req.len(), MAX_HEAD);
    assert_eq!(text(&exchange(m.addr, &req)), expected_200(BODY));
    m.stop();
}

#[test]
fn an_idle_connection_is_closed_at_its_deadline() {
    let m = server(Duration::from_millis(300));
    let t = Instant::now();
    let mut idle = StdStream::connect(m.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut partial = StdStream::connect(m.addr).unwrap();
    partial
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    partial.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    assert_eq!(read_until_closed(&mut idle), b"");
    assert_eq!(read_until_closed(&mut partial), b"");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The server is still there.
    assert_eq!(
        text(&exchange(m.addr, b"GET /metrics HTTP/1.0\r\n\r\n")),
        expected_200(BODY)
    );
    m.stop();
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_deadline() {
    // The first scrape gets a body far larger than what the socket buffers
    // of both ends hold (autotuning may take the receiver's to 32 MiB).
    const BIG: usize = 48 << 20;
    const DEADLINE: Duration = Duration::from_secs(2);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let m = MetricsServer::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "metrics-test",
        move || match calls.fetch_add(1, Ordering::Relaxed) {
            0 => "x".repeat(BIG),
            _ => BODY.to_string(),
        },
        DEADLINE,
    )
    .unwrap();
    let t = Instant::now();
    let mut stuck = StdStream::connect(m.addr).unwrap();
    stuck.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    // Its response has started (so it got the big body); meanwhile (before
    // the deadline) the thread answers others.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(stuck.peek(&mut [0u8; 1]).unwrap(), 1);
    let r = text(&exchange(m.addr, b"GET /metrics HTTP/1.0\r\n\r\n"));
    assert_eq!(r, expected_200(BODY));
    assert!(t.elapsed() < DEADLINE, "{:?}", t.elapsed());
    // Past the deadline: what the buffers held, then the close.
    std::thread::sleep((DEADLINE + Duration::from_millis(500)).saturating_sub(t.elapsed()));
    let got = read_until_closed(&mut stuck);
    assert!(!got.is_empty() && got.len() < BIG, "{} bytes", got.len());
    m.stop();
}

#[test]
fn stop_returns_promptly_and_releases_the_port() {
    let m = server(CONN_DEADLINE);
    let addr = m.addr;
    let idle: Vec<_> = (0..10).map(|_| StdStream::connect(addr).unwrap()).collect();
    let mut partial = StdStream::connect(addr).unwrap();
    partial.write_all(b"GET /metr").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    m.stop();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(read_until_closed(&mut s), b"");
    }
    assert!(StdStream::connect(addr).is_err());
}

#[test]
fn drop_stops_the_thread_too() {
    let m = server(CONN_DEADLINE);
    let addr = m.addr;
    let t = Instant::now();
    drop(m);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(StdStream::connect(addr).is_err());
}

#[test]
fn head_end_finds_the_blank_line() {
    assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\n", 0), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.0\n\nbody", 0), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.0\r\nA: b\r\n", 0), None);
    assert_eq!(head_end(b"GET / HTTP/1.0\r\nA: b\r\n\r", 0), None);
    assert_eq!(head_end(b"", 0), None);
    assert_eq!(head_end(b"\n", 5), None);
}
