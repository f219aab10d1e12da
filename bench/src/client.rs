//! `whelm-bench client`: an interactive Whelm client for the control line
//! protocol (PROTOCOLS.md section 1).
//!
//! It connects, sends `AUTH <token>`, sends `HEARTBEAT` every
//! `--heartbeat-secs`, prints every server line unchanged on stdout (hints
//! go to stderr), and turns typed commands into protocol lines:
//!
//! | typed | sent |
//! |---|---|
//! | `/call ID` | `CALL ID` |
//! | `/accept [ID]` | `ACCEPT ID` (default: the last caller) |
//! | `/reject [ID]` | `REJECT ID` (default: the last caller) |
//! | `/hangup` | `HANGUP` |
//! | `/msg ID text` | `MSG ID text` |
//! | `/status online\|away\|busy` | `HEARTBEAT status` |
//! | `/raw LINE` | LINE as typed |
//! | `/voice [SECONDS]` | (starts the synthetic voice stream, in a call) |
//! | `/quit` | (disconnects) |
//! | other text | `MSG <partner> text` while in a call |
//!
//! At end of input it lingers `--linger-ms` for replies and exits, so tests
//! and scripts can pipe into it, after any voice stream has finished.
//!
//! Voice: `/voice [SECONDS]`, or `--voice SECONDS` to start on every
//! START_CALL, streams [`crate::client_voice`] to the relay at
//! `--voice-server` (default: the control server's host, port 5001) from
//! the local IP of the control connection, and prints one `VOICE sent=...
//! received=... lost=... p99_us=...` line on stdout when done.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use whelm_shared::line::{self, Command, Reply, Status, UserId};

use crate::client_voice::{self, VoiceOptions};

/// How often the reader checks for shutdown.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of the client tool.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Control server.
    pub server: SocketAddr,
    /// Session token (`whelm-control user add NAME` prints one).
    pub token: String,
    /// Seconds between heartbeats (the server closes silent sessions
    /// after 30 s).
    pub heartbeat: Duration,
    /// How long to keep reading after stdin ends.
    pub linger: Duration,
    /// The relay's voice address (None: the server's host, port 5001).
    pub voice_server: Option<SocketAddr>,
    /// Start a voice stream of this many seconds on every START_CALL.
    pub voice_auto: Option<f64>,
    /// Voice datagrams/s.
    pub voice_pps: f64,
    /// Voice datagram length.
    pub voice_size: usize,
}

/// The default Whelm voice port (PROTOCOLS.md section 2).
pub const VOICE_PORT: u16 = 5001;

/// What a voice stream needs besides the session; stream threads kept to
/// be joined before exit.
struct Voice {
    relay: SocketAddr,
    local_ip: std::net::IpAddr,
    auto: Option<f64>,
    pps: f64,
    size: usize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Voice {
    /// Starts a stream of `seconds` as `user` (prints its line when done).
    fn start(&self, user: Option<UserId>, seconds: f64) {
        let Some(user) = user else {
            eprintln!("(voice: not authenticated yet)");
            return;
        };
        let o = VoiceOptions {
            relay: self.relay,
            local_ip: self.local_ip,
            user: user.get(),
            seconds,
            pps: self.pps,
            size: self.size,
        };
        let h = std::thread::Builder::new()
            .name("client-voice".into())
            .spawn(move || match client_voice::stream(&o) {
                Ok(r) => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", r.line());
                    let _ = out.flush();
                }
                Err(e) => eprintln!("(voice: {e:#})"),
            });
        match (h, self.threads.lock()) {
            (Ok(h), Ok(mut t)) => t.push(h),
            (Err(e), _) => eprintln!("(voice: cannot start a thread: {e})"),
            (Ok(_), Err(_)) => {}
        }
    }

    fn join_all(&self) {
        let hs: Vec<_> = match self.threads.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => return,
        };
        for h in hs {
            let _ = h.join();
        }
    }
}

/// Resolves `HOST[:PORT]`, the port defaulting to 5000.
pub fn resolve_server(s: &str) -> anyhow::Result<SocketAddr> {
    let with_port = if s.parse::<SocketAddr>().is_ok()
        || s.rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else {
        format!("{s}:{}", line::DEFAULT_PORT)
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving server {s:?}"))?
        .next()
        .with_context(|| format!("server {s:?} resolves to no address"))
}

/// What the reader learned that typed commands need.
#[derive(Debug, Default)]
struct Session {
    me: Option<UserId>,
    last_caller: Option<UserId>,
    partner: Option<UserId>,
}

impl Session {
    /// Updates the state from one server line.
    fn observe(&mut self, reply: &Reply) {
        match reply {
            Reply::OkAuth { user, .. } => self.me = Some(*user),
            Reply::Incoming { caller, .. } => self.last_caller = Some(*caller),
            Reply::StartCall { partner, .. } => self.partner = Some(*partner),
            Reply::Hangup { .. } | Reply::OkHangup | Reply::Rejected { .. } => self.partner = None,
            _ => {}
        }
    }
}

/// Turns one typed line into the protocol line to send, or a message for
/// the user. `Ok(None)`: nothing to send.
fn translate(typed: &str, s: &Session) -> Result<Option<String>, String> {
    let typed = typed.trim_end_matches('\r');
    if typed.trim().is_empty() {
        return Ok(None);
    }
    let Some(cmd) = typed.strip_prefix('/') else {
        return match s.partner {
            Some(p) => Ok(Some(
                Command::Msg {
                    recipient: p,
                    content: typed.to_string(),
                }
                .to_line(),
            )),
            None => Err("not in a call: use /msg ID text".into()),
        };
    };
    let (word, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
    let id = |arg: &str, default: Option<UserId>| -> Result<UserId, String> {
        match arg.trim() {
            "" => default.ok_or_else(|| "which user id?".to_string()),
            a => UserId::parse(a).ok_or_else(|| format!("{a:?} is not a user id")),
        }
    };
    let c = match word {
        "call" => Command::Call {
            callee: id(rest, None)?,
        },
        "accept" => Command::Accept {
            caller: id(rest, s.last_caller)?,
        },
        "reject" => Command::Reject {
            caller: id(rest, s.last_caller)?,
        },
        "hangup" => Command::Hangup,
        "msg" => {
            let (to, text) = rest.split_once(' ').ok_or("usage: /msg ID text")?;
            Command::Msg {
                recipient: id(to, None)?,
                content: text.to_string(),
            }
        }
        "voice" => {
            return match rest.trim() {
                "" => Err("voice:10".into()),
                v => match v.parse::<f64>() {
                    Ok(x) if x.is_finite() && x > 0.0 => Err(format!("voice:{x}")),
                    _ => Err("usage: /voice [SECONDS]".into()),
                },
            };
        }
        "status" => Command::Heartbeat {
            status: Some(Status::parse_client(rest.trim()).ok_or("status: online, away or busy")?),
        },
        "raw" => return Ok(Some(rest.to_string())),
        _ => {
            return Err(
                "commands: /call ID, /accept [ID], /reject [ID], /hangup, /msg ID text, \
                 /status S, /raw LINE, /quit"
                    .into(),
            );
        }
    };
    Ok(Some(c.to_line()))
}

fn send(w: &Mutex<TcpStream>, line: &str) -> anyhow::Result<()> {
    let mut s = w
        .lock()
        .map_err(|_| anyhow::anyhow!("writer lock poisoned"))?;
    s.write_all(line.as_bytes())
        .and_then(|()| s.write_all(b"\n"))
        .context("sending to the control server")
}

/// Runs the client until stdin ends (plus the linger), `/quit`, or the
/// server closes the connection.
pub fn run(opts: &ClientOptions) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&opts.server, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {}", opts.server))?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .context("setting the read timeout")?;
    let local_ip = stream
        .local_addr()
        .context("reading the connection's local address")?
        .ip();
    let voice = Arc::new(Voice {
        relay: opts
            .voice_server
            .unwrap_or_else(|| SocketAddr::new(opts.server.ip(), VOICE_PORT)),
        local_ip,
        auto: opts.voice_auto,
        pps: opts.voice_pps,
        size: opts.voice_size,
        threads: Mutex::new(Vec::new()),
    });
    let reader = stream.try_clone().context("cloning the connection")?;
    let writer = Arc::new(Mutex::new(stream));
    let session = Arc::new(Mutex::new(Session::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));
    eprintln!(
        "client connected to {}; /call ID, /accept, /hangup, /msg ID text, /quit",
        opts.server
    );
    send(
        &writer,
        &Command::Auth {
            token: opts.token.clone(),
        }
        .to_line(),
    )?;

    let rx = {
        let (session, stop, closed, voice) = (
            Arc::clone(&session),
            Arc::clone(&stop),
            Arc::clone(&closed),
            Arc::clone(&voice),
        );
        std::thread::Builder::new()
            .name("client-rx".into())
            .spawn(move || read_loop(reader, &session, &stop, &closed, &voice))
            .context("starting the reader")?
    };
    let hb = {
        let (writer, stop) = (Arc::clone(&writer), Arc::clone(&stop));
        let every = opts.heartbeat;
        std::thread::Builder::new()
            .name("client-heartbeat".into())
            .spawn(move || {
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        if send(&writer, &Command::Heartbeat { status: None }.to_line()).is_err() {
                            return;
                        }
                        next += every;
                    }
                    std::thread::sleep(READ_TIMEOUT);
                }
            })
            .context("starting the heartbeat")?
    };

    let result = (|| -> anyhow::Result<()> {
        for typed in std::io::stdin().lock().lines() {
            let typed = typed.context("reading stdin")?;
            if closed.load(Ordering::Relaxed) {
                bail!("the server closed the connection");
            }
            if typed.trim() == "/quit" {
                return Ok(());
            }
            let out = {
                let s = session
                    .lock()
                    .map_err(|_| anyhow::anyhow!("session lock poisoned"))?;
                translate(&typed, &s)
            };
            match out {
                Ok(Some(line)) => send(&writer, &line)?,
                Ok(None) => {}
                Err(hint) => match hint.strip_prefix("voice:").map(str::parse::<f64>) {
                    Some(Ok(secs)) => {
                        let (me, partner) = match session.lock() {
                            Ok(s) => (s.me, s.partner),
                            Err(_) => (None, None),
                        };
                        if partner.is_some() {
                            voice.start(me, secs);
                        } else {
                            eprintln!("(voice: not in a call)");
                        }
                    }
                    _ => eprintln!("({hint})"),
                },
            }
        }
        // Voice streams end on their own (bounded by their seconds).
        voice.join_all();
        let until = Instant::now() + opts.linger;
        while Instant::now() < until && !closed.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = hb.join();
    let rx_result = rx
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    result.and(rx_result)
}

fn read_loop(
    stream: TcpStream,
    session: &Mutex<Session>,
    stop: &AtomicBool,
    closed: &AtomicBool,
    voice: &Voice,
) -> anyhow::Result<()> {
    let mut r = BufReader::new(stream);
    let mut buf = String::new();
    let stdout = std::io::stdout();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut buf) {
            Ok(0) => {
                eprintln!("(connection closed by the server)");
                closed.store(true, Ordering::Relaxed);
                return Ok(());
            }
            Ok(_) if buf.ends_with('\n') => {
                let text = buf.trim_end_matches(['\n', '\r']).to_string();
                buf.clear();
                if let Ok(reply) = Reply::parse(&text) {
                    if let Ok(mut s) = session.lock() {
                        s.observe(&reply);
                    }
                    if let Reply::Incoming { caller, username } = &reply {
                        eprintln!("(call from {username}: /accept {caller} or /reject {caller})");
                    }
                    if let (Reply::StartCall { .. }, Some(secs)) = (&reply, voice.auto) {
                        let me = session.lock().ok().and_then(|s| s.me);
                        voice.start(me, secs);
                    }
                }
                let mut out = stdout.lock();
                writeln!(out, "{text}").context("writing to stdout")?;
                out.flush().context("flushing stdout")?;
            }
            // A partial line (timeout mid-line): keep it and read on.
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                closed.store(true, Ordering::Relaxed);
                return Err(e).context("reading from the control server");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_commands_become_protocol_lines() {
        let mut s = Session::default();
        let t = |typed: &str, s: &Session| translate(typed, s);
        assert_eq!(t("/call 7", &s), Ok(Some("CALL 7".into())));
        assert!(t("/call x", &s).is_err());
        assert!(t("/accept", &s).is_err(), "no caller yet");
        s.observe(&Reply::parse("INCOMING 3 alice").unwrap());
        assert_eq!(t("/accept", &s), Ok(Some("ACCEPT 3".into())));
        assert_eq!(t("/reject 4", &s), Ok(Some("REJECT 4".into())));
        assert!(t("hello", &s).is_err(), "not in a call");
        s.observe(&Reply::parse("START_CALL 3 alice").unwrap());
        assert_eq!(t("hello there", &s), Ok(Some("MSG 3 hello there".into())));
        assert_eq!(t("/msg 9 hi  you", &s), Ok(Some("MSG 9 hi  you".into())));
        assert_eq!(t("/hangup", &s), Ok(Some("HANGUP".into())));
        assert_eq!(t("/status away", &s), Ok(Some("HEARTBEAT away".into())));
        assert_eq!(t("/raw FOO bar", &s), Ok(Some("FOO bar".into())));
        assert_eq!(t("/voice", &s), Err("voice:10".into()));
        assert_eq!(t("/voice 2.5", &s), Err("voice:2.5".into()));
        assert!(t("/voice x", &s).unwrap_err().starts_with("usage"));
        assert_eq!(t("", &s), Ok(None));
        s.observe(&Reply::parse("HANGUP 3").unwrap());
        assert!(t("hello", &s).is_err());
    }
}
