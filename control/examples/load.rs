//! Load program for `whelm-control` (a later issue builds whelm-bench).
//! Starts the server binary itself on 127.0.0.1:0 against `--db`, creates
//! the users it needs through the store, and runs one scenario:
//!
//! - `throughput`: P sender/recipient pairs, each sender pipelining MSGs in
//!   windows; counts messages acknowledged (`OK MSG`) and delivered.
//! - `latency`: the same pairs at a fixed total rate; MSG -> `OK MSG`
//!   latency percentiles.
//! - `calls`: P caller/callee pairs doing CALL, ACCEPT, HANGUP in a loop.
//! - `idle`: N authenticated idle sessions; the server's RSS.
//!
//! Example: `cargo run --release -p whelm-control --example load -- \
//!   --bin target/release/whelm-control --db mysql://root@127.0.0.1:3306/whelm_bench throughput`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use whelm_control::dsn::DbTarget;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    Throughput,
    Latency,
    Calls,
    Idle,
}

#[derive(Parser, Debug)]
struct Args {
    /// The server binary.
    #[arg(long, default_value = "target/release/whelm-control")]
    bin: String,
    /// Store for the server (a fresh one is best).
    #[arg(long)]
    db: String,
    /// Pairs (throughput, latency, calls).
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Sessions (idle).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Total messages per second (latency).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Messages in flight per sender (throughput).
    #[arg(long, default_value_t = 32)]
    window: usize,
    scenario: Scenario,
}

struct Server(Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &str, db: &str) -> Server {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--db", db])
        .args([
            "--rate-limit",
            "0",
            "--max-conns-per-ip",
            "0",
            "--max-calls",
            "1000000",
        ])
        .args(["--max-connections", "30000", "--metrics-listen", "off"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    eprintln!("{}", line.trim());
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .parse()
        .unwrap();
    Server(child, addr)
}

fn users(db: &str, prefix: &str, n: usize) -> Vec<(u64, String)> {
    let target = DbTarget::from_db_arg(db).unwrap();
    let mut store = whelm_control::store::open(&target).unwrap();
    store.migrate().unwrap();
    let run = format!("{prefix}{:x}", std::process::id());
    (0..n)
        .map(|i| {
            let token = whelm_control::store::new_token().unwrap();
            let id = store.add_user(&format!("{run}_{i}"), &token).unwrap();
            (id.get(), token)
        })
        .collect()
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    fn open(addr: SocketAddr, token: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            line: String::new(),
        };
        c.send(&format!("AUTH {token}\n"));
        let l = c.read();
        assert!(l.starts_with("OK AUTH"), "{l}");
        c
    }
    fn send(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).unwrap();
    }
    fn read(&mut self) -> String {
        self.line.clear();
        let n = self.r.read_line(&mut self.line).unwrap();
        assert!(n > 0, "closed");
        self.line.trim_end().to_owned()
    }
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a = Args::parse();
    let dur = Duration::from_secs_f64(a.secs);
    match a.scenario {
        Scenario::Throughput | Scenario::Latency => {
            let u = users(&a.db, "m", a.pairs * 2);
            let srv = start(&a.bin, &a.db);
            messages(&a, &srv, &u, dur);
        }
        Scenario::Calls => {
            let u = users(&a.db, "c", a.pairs * 2);
            let srv = start(&a.bin, &a.db);
            calls(&srv, &u, a.pairs, dur);
        }
        Scenario::Idle => {
            let u = users(&a.db, "i", a.sessions);
            let srv = start(&a.bin, &a.db);
            let base = rss_kb(srv.0.id());
            let t0 = Instant::now();
            let mut conns = Vec::with_capacity(u.len());
            for chunk in u.chunks(500) {
                let mut batch: Vec<TcpStream> = chunk
                    .iter()
                    .map(|(_, t)| {
                        let mut s = TcpStream::connect(srv.1).unwrap();
                        s.write_all(format!("AUTH {t}\n").as_bytes()).unwrap();
                        s
                    })
                    .collect();
                for s in &mut batch {
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut r = BufReader::new(&*s);
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    assert!(l.starts_with("OK AUTH"), "{l}");
                }
                conns.extend(batch);
            }
            let auth_time = t0.elapsed();
            std::thread::sleep(Duration::from_secs(2));
            let rss = rss_kb(srv.0.id());
            println!(
                "idle: sessions={} authenticated in {:.2}s; server RSS before={} MB after={} MB ({:.1} KB/session)",
                conns.len(),
                auth_time.as_secs_f64(),
                base / 1024,
                rss / 1024,
                (rss.saturating_sub(base)) as f64 / conns.len() as f64
            );
        }
    }
}

fn messages(a: &Args, srv: &Server, u: &[(u64, String)], dur: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    let mut lat_threads = Vec::new();
    let per_sender_interval = Duration::from_secs_f64(a.pairs as f64 / a.rate);
    let go = Arc::new(std::sync::OnceLock::<Instant>::new());
    for p in 0..a.pairs {
        let (rid, rtok) = u[2 * p + 1].clone();
        let (_, stok) = u[2 * p].clone();
        let rc = Conn::open(srv.1, &rtok);
        let mut sc = Conn::open(srv.1, &stok);
        let (stop2, del) = (stop.clone(), delivered.clone());
        // Recipient: count deliveries until told to stop.
        rc.w.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        threads.push(std::thread::spawn(move || {
            let mut r = BufReader::new(rc.w.try_clone().unwrap());
            let mut l = String::new();
            while !stop2.load(Ordering::Relaxed) {
                l.clear();
                match r.read_line(&mut l) {
                    Ok(0) => break,
                    Ok(_) if l.starts_with("MSG ") => {
                        del.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {}
                }
            }
        }));
        let (stop3, ack) = (stop.clone(), acked.clone());
        let window = a.window;
        match a.scenario {
            Scenario::Throughput => threads.push(std::thread::spawn({
                let go = go.clone();
                move || {
                    let t0 = wait_go(&go);
                    let msg = format!("MSG {rid} load test message with some text in it\n");
                    let batch: String = msg.repeat(window);
                    while !stop3.load(Ordering::Relaxed) && t0.elapsed() < dur {
                        sc.send(&batch);
                        for _ in 0..window {
                            let l = sc.read();
                            assert_eq!(l, "OK MSG");
                        }
                        ack.fetch_add(window as u64, Ordering::Relaxed);
                    }
                }
            })),
            _ => {
                let (tx, rx) = crossbeam_channel::unbounded::<Instant>();
                let mut w = sc.w.try_clone().unwrap();
                let stop4 = stop.clone();
                let go = go.clone();
                threads.push(std::thread::spawn(move || {
                    let t0 = wait_go(&go);
                    let msg = format!("MSG {rid} latency probe\n");
                    let mut next =
                        Instant::now() + per_sender_interval.mul_f64(p as f64 / 100.0 % 1.0);
                    while !stop4.load(Ordering::Relaxed) && t0.elapsed() < dur {
                        let now = Instant::now();
                        if now < next {
                            std::thread::sleep(next - now);
                        }
                        next += per_sender_interval;
                        tx.send(Instant::now()).unwrap();
                        w.write_all(msg.as_bytes()).unwrap();
                    }
                }));
                lat_threads.push(std::thread::spawn(move || {
                    let mut lats = Vec::new();
                    while let Ok(sent) = rx.recv() {
                        let l = sc.read();
                        assert_eq!(l, "OK MSG");
                        lats.push(sent.elapsed().as_micros() as u64);
                        ack.fetch_add(1, Ordering::Relaxed);
                    }
                    lats
                }));
            }
        }
    }
    let start = Instant::now();
    let _ = go.set(start);
    std::thread::sleep(dur);
    let el = start.elapsed().as_secs_f64();
    let got_acked = acked.load(Ordering::Relaxed);
    // Let the last windows and deliveries catch up (bounded), then stop.
    let catch_up = Instant::now();
    while catch_up.elapsed() < Duration::from_secs(10)
        && delivered.load(Ordering::Relaxed) < acked.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got_del = delivered.load(Ordering::Relaxed);
    let final_acked = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let mut lats: Vec<u64> = lat_threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    println!(
        "{:?}: pairs={} {:.1}s acked={} ({:.0} msg/s persisted+acked); after drain: acked={} delivered={}",
        a.scenario,
        a.pairs,
        el,
        got_acked,
        got_acked as f64 / el,
        final_acked,
        got_del
    );
    if !lats.is_empty() {
        lats.sort_unstable();
        let pct =
            |p: f64| lats[((lats.len() as f64 * p) as usize).min(lats.len() - 1)] as f64 / 1000.0;
        println!(
            "latency MSG->OK MSG: n={} rate={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
            lats.len(),
            lats.len() as f64 / el,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            *lats.last().unwrap() as f64 / 1000.0
        );
    }
}

fn wait_go(go: &std::sync::OnceLock<Instant>) -> Instant {
    loop {
        if let Some(t) = go.get() {
            return *t;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn calls(srv: &Server, u: &[(u64, String)], pairs: usize, dur: Duration) {
    let count = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for p in 0..pairs {
        let (aid, atok) = u[2 * p].clone();
        let (bid, btok) = u[2 * p + 1].clone();
        let mut a = Conn::open(srv.1, &atok);
        let mut b = Conn::open(srv.1, &btok);
        let count = count.clone();
        threads.push(std::thread::spawn(move || {
            let (call, accept) = (format!("CALL {bid}\n"), format!("ACCEPT {aid}\n"));
            while t0.elapsed() < dur {
                a.send(&call);
                assert!(a.read().starts_with("OK CALLING"));
                assert!(b.read().starts_with("INCOMING"));
                b.send(&accept);
                assert!(b.read().starts_with("START_CALL"));
                assert!(a.read().starts_with("START_CALL"));
                a.send("HANGUP\n");
                assert_eq!(a.read(), "OK HANGUP");
                assert!(b.read().starts_with("HANGUP"));
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let el = t0.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    println!(
        "calls: pairs={pairs} {el:.1}s setups={n} ({:.0} call setups/s)",
        n as f64 / el
    );
}
