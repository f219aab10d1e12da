//! Test support: a throwaway MariaDB database, the real binary on port 0,
//! and a line client. Every read has a timeout; children die in Drop.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use whelm_control::dsn::MysqlDsn;
use whelm_shared::line::Reply;

pub const MARIADB_ENV: &str = "WHELM_TEST_MARIADB";

/// A database of its own on the MariaDB server named by
/// `WHELM_TEST_MARIADB`, dropped at the end. `None` (with a notice) when the
/// variable is unset; a panic when it is set and MariaDB cannot be reached.
pub struct TempMariaDb {
    pub dsn: MysqlDsn,
    admin: MysqlDsn,
    name: String,
}

impl TempMariaDb {
    pub fn create(test: &str) -> Option<TempMariaDb> {
        let Ok(url) = std::env::var(MARIADB_ENV) else {
            eprintln!("{test}: {MARIADB_ENV} is not set; skipping the MariaDB variant");
            return None;
        };
        let admin = MysqlDsn::parse(&url)
            .unwrap_or_else(|e| panic!("{MARIADB_ENV}={url} does not parse: {e}"));
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let name = format!(
            "whelm_test_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        let mut conn = mysql::Conn::new(whelm_control::store::mysql::opts(&admin, 1))
            .unwrap_or_else(|e| {
                panic!("{MARIADB_ENV} is set but MariaDB at {admin} is unreachable: {e}")
            });
        conn.query_drop(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .unwrap();
        Some(TempMariaDb {
            dsn: admin.with_database(&name),
            admin,
            name,
        })
    }

    /// A URL for `--db` (no password in the test DSN).
    pub fn url(&self) -> String {
        let d = &self.dsn;
        let cred = match &d.password {
            Some(p) => format!("{}:{}@", d.user, p),
            None if d.user.is_empty() => String::new(),
            None => format!("{}@", d.user),
        };
        format!(
            "mysql://{cred}{}:{}/{}",
            d.host.as_deref().unwrap_or("127.0.0.1"),
            d.port,
            d.database
        )
    }
}

impl Drop for TempMariaDb {
    fn drop(&mut self) {
        if let Ok(mut c) = mysql::Conn::new(whelm_control::store::mysql::opts(&self.admin, 1)) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

/// Raw SQL against the database under test, values as text.
pub trait Probe {
    fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>>;
    fn exec(&mut self, sql: &str);
    fn one(&mut self, sql: &str) -> Option<String> {
        self.rows(sql)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten()
    }
}

pub struct SqliteProbe(pub rusqlite::Connection);

impl SqliteProbe {
    pub fn open(path: &Path) -> SqliteProbe {
        let c = rusqlite::Connection::open(path).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        SqliteProbe(c)
    }
}

impl Probe for SqliteProbe {
    fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        use rusqlite::types::ValueRef;
        let mut st = self.0.prepare(sql).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        let mut out = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            out.push(
                (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        ValueRef::Null => None,
                        ValueRef::Integer(v) => Some(v.to_string()),
                        ValueRef::Real(v) => Some(v.to_string()),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            Some(String::from_utf8(t.to_vec()).unwrap())
                        }
                    })
                    .collect(),
            );
        }
        out
    }
    fn exec(&mut self, sql: &str) {
        self.0.execute_batch(sql).unwrap();
    }
}

pub struct MysqlProbe(pub mysql::Conn);

impl MysqlProbe {
    pub fn open(dsn: &MysqlDsn) -> MysqlProbe {
        MysqlProbe(mysql::Conn::new(whelm_control::store::mysql::opts(dsn, 1)).unwrap())
    }
}

impl Probe for MysqlProbe {
    fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        use mysql::Value;
        let rows: Vec<mysql::Row> = self.0.query(sql).unwrap();
        rows.into_iter()
            .map(|r| {
                r.unwrap()
                    .into_iter()
                    .map(|v| match v {
                        Value::NULL => None,
                        Value::Bytes(b) => Some(String::from_utf8(b).unwrap()),
                        Value::Int(i) => Some(i.to_string()),
                        Value::UInt(i) => Some(i.to_string()),
                        Value::Float(f) => Some(f.to_string()),
                        Value::Double(f) => Some(f.to_string()),
                        Value::Date(y, mo, d, h, mi, s, _) => {
                            Some(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
                        }
                        Value::Time(..) => Some(format!("{v:?}")),
                    })
                    .collect()
            })
            .collect()
    }
    fn exec(&mut self, sql: &str) {
        self.0.query_drop(sql).unwrap();
    }
}

// ---------------------------------------------------------------- binary

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_whelm-control")
}

/// Runs `whelm-control --db DB user add NAME`, returning the token.
pub fn add_user(db: &str, name: &str) -> String {
    let out = Command::new(bin())
        .args(["--db", db, "user", "add", name])
        .env_remove("WHELM_DB_DSN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "user add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 32, "token {token:?}");
    token
}

/// The server binary, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub ready_line: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Starts `whelm-control --listen 127.0.0.1:0 --db DB ARGS...` and waits
    /// for its ready line.
    pub fn start(db: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args(["--listen", "127.0.0.1:0", "--db", db]).args(args);
        Server::start_command(cmd)
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line client with a read timeout on every read.
pub struct Client {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
}

pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// The next line, without its `\n`; panics on timeout or EOF.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read timed out");
        assert!(n > 0, "connection closed");
        l.trim_end_matches('\n').to_owned()
    }

    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want);
    }

    pub fn reply(&mut self) -> Reply {
        let l = self.line();
        Reply::parse(&l).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Authenticates and checks `OK AUTH <id> <name>`; returns the id.
    pub fn auth(&mut self, token: &str, name: &str) -> u64 {
        self.send(&format!("AUTH {token}"));
        match self.reply() {
            Reply::OkAuth { user, username } => {
                assert_eq!(username, name);
                user.get()
            }
            other => panic!("AUTH answered {other:?}"),
        }
    }

    /// Waits (bounded) for EOF, returning the lines read before it.
    pub fn until_closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            match self.r.read_line(&mut l) {
                Ok(0) => return lines,
                Ok(_) => lines.push(l.trim_end().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return lines,
                Err(e) => panic!("waiting for close: {e}; read {lines:?}"),
            }
        }
    }
}

/// A fresh SQLite path in a tempdir.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("whelm.db");
    (dir, p)
}

impl Client {
    /// Reads lines until EOF or until `stop` is read (bounded by the read
    /// timeout), returning them (without `stop`).
    pub fn until_closed_or(&mut self, stop: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            match self.r.read_line(&mut l) {
                Ok(0) => return lines,
                Ok(_) if l.trim_end() == stop => return lines,
                Ok(_) => lines.push(l.trim_end().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return lines,
                Err(e) => panic!("reading: {e}; read {lines:?}"),
            }
        }
    }
}

impl Server {
    /// Starts a command the caller built (`start`'s, or the binary behind
    /// a prefix such as `nsenter -t PID -m --`, with its own `--db` and
    /// flags), sets the test environment and stdio, and waits for its
    /// ready line.
    pub fn start_command(mut cmd: Command) -> Server {
        cmd.env_remove("WHELM_DB_DSN")
            .env("RUST_LOG", "warn")
            // Never the default port 9501: tests run in parallel. A test's
            // own --metrics-listen wins (flags over environment).
            .env("WHELM_METRICS_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let errs = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the child never blocks on stdout.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if !l.is_empty() => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not become ready ({other:?}); stderr: {}",
                    errs.join().unwrap_or_default()
                );
            }
        };
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .unwrap_or_else(|| panic!("no listen= in ready line {line:?}"))
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            ready_line: line.trim().to_owned(),
            stderr: Some(errs),
        }
    }
}
