//! `whelm-bench station`: an interactive OVP text station.
//!
//! Lines typed on stdin become OVP text frames (COBS/IPv4/UDP 57374, split
//! across frames when long) sent to the server; frames received are
//! reassembled per callsign and shown as `[W1ABC]: hello everyone`.
//! `/ptt [N]` sends `PTT_START`, N synthetic 40 ms voice frames (paced at
//! 25/s) and `PTT_STOP`. At end of input the station lingers `--linger-ms`
//! for late frames and exits, so tests and scripts can pipe into it.
//!
//! Addressing: the reference station (interlocutor) sends from an ephemeral
//! port and receives on 57372, because the reference server replies to the
//! station's IP at the server's own port. With a relay in
//! `--reply-to listen-port` mode, bind this station to the relay's port
//! (e.g. `--bind 127.0.0.2:57372` for a local test); with
//! `--reply-to source`, any port works (the default `0.0.0.0:0`).
//!
//! [`Screen`] is the receive side without I/O: bytes in, lines out.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use whelm_shared::ovp::{self, FRAME_LEN, HEADER_LEN, StationId};
use whelm_shared::station::{Message, Reassembler};

use crate::station_tx::synthetic_opus;
use whelm_shared::station::{InnerAddressing, Outgoing};

/// One 40 ms voice frame interval (25 frames/s, PROTOCOLS.md section 3).
const VOICE_INTERVAL: Duration = Duration::from_millis(40);
/// Socket read timeout: how often the receive thread checks for shutdown.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Voice frames in a default `/ptt` burst (0.4 s).
const DEFAULT_PTT_FRAMES: u32 = 10;
/// Longest `/ptt` burst accepted (10 s): every loop is bounded.
const MAX_PTT_FRAMES: u32 = 250;

/// Options of the station tool.
#[derive(Debug, Clone)]
pub struct StationOptions {
    /// Our callsign.
    pub callsign: StationId,
    /// Where frames go.
    pub server: SocketAddr,
    /// Local address to bind.
    pub bind: SocketAddr,
    /// How long to keep receiving after stdin ends.
    pub linger: Duration,
    /// Inner addressing of the packets we send.
    pub inner: InnerAddressing,
    /// Print `(voice ...)` summaries and dropped-frame notes.
    pub verbose: bool,
}

/// Resolves `HOST[:PORT]`, the port defaulting to 57372.
pub fn resolve_server(s: &str) -> anyhow::Result<SocketAddr> {
    let with_port = if s.parse::<SocketAddr>().is_ok() || has_port(s) {
        s.to_string()
    } else if s.contains(':') {
        format!("[{s}]:{}", ovp::DEFAULT_PORT)
    } else {
        format!("{s}:{}", ovp::DEFAULT_PORT)
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving server {s:?}"))?
        .next()
        .with_context(|| format!("server {s:?} resolves to no address"))
}

fn has_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && (!host.contains(':') || host.ends_with(']'))
                && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// The receive side: per-callsign reassembly and the lines to print.
#[derive(Debug, Default)]
pub struct Screen {
    rx: HashMap<StationId, Reassembler>,
    voice: HashMap<StationId, u64>,
    /// Frames that failed header validation.
    pub invalid_frames: u64,
    /// Packets that failed to reassemble or parse.
    pub bad_packets: u64,
}

impl Screen {
    /// An empty screen.
    pub fn new() -> Screen {
        Screen::default()
    }

    /// Feeds one datagram; returns the lines it completes. Text becomes
    /// `[CALL]: text`, control `[CALL] * WORD`; voice frames are counted and
    /// summarised at `PTT_STOP` as `[CALL] * voice: N frames`.
    pub fn datagram(&mut self, bytes: &[u8]) -> Vec<String> {
        let Ok(header) = ovp::validate(bytes) else {
            self.invalid_frames += 1;
            return Vec::new();
        };
        let id = header.station();
        let call = id.callsign();
        let mut lines = Vec::new();
        let packets = self.rx.entry(id).or_default().push(&bytes[HEADER_LEN..]);
        for p in packets {
            match p {
                Ok(p) => match p.message {
                    Message::Text(t) => lines.push(format!("[{}]: {t}", call.as_str())),
                    Message::Control(word) => {
                        if let Some(n) = (word == "PTT_STOP")
                            .then(|| self.voice.remove(&id))
                            .flatten()
                        {
                            lines.push(format!("[{}] * voice: {n} frames", call.as_str()));
                        }
                        lines.push(format!("[{}] * {word}", call.as_str()));
                    }
                    Message::Voice { .. } => *self.voice.entry(id).or_default() += 1,
                    Message::Other { port, data } => lines.push(format!(
                        "[{}] * {} bytes to port {port}",
                        call.as_str(),
                        data.len()
                    )),
                },
                Err(_) => self.bad_packets += 1,
            }
        }
        lines
    }
}

/// Runs the station until stdin ends (plus the linger) or `/quit`.
pub fn run(opts: &StationOptions) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(opts.bind).with_context(|| format!("binding {}", opts.bind))?;
    sock.set_read_timeout(Some(READ_TIMEOUT))
        .context("setting the socket read timeout")?;
    let local = sock.local_addr().context("reading the bound address")?;
    eprintln!(
        "station {} on {local}, server {}; type text, /ptt [frames], /quit",
        opts.callsign, opts.server
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rx_sock = sock.try_clone().context("cloning the station socket")?;
    let rx_stop = Arc::clone(&stop);
    let verbose = opts.verbose;
    let receiver = std::thread::Builder::new()
        .name("station-rx".into())
        .spawn(move || receive_loop(&rx_sock, &rx_stop, verbose))
        .context("starting the receive thread")?;

    let result = input_loop(opts, &sock);
    if result.is_ok() {
        std::thread::sleep(opts.linger);
    }
    stop.store(true, Ordering::Relaxed);
    let rx_result = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receive thread panicked"))?;
    result.and(rx_result)
}

fn receive_loop(sock: &UdpSocket, stop: &AtomicBool, verbose: bool) -> anyhow::Result<()> {
    let mut screen = Screen::new();
    let mut buf = [0u8; 65536];
    let stdout = std::io::stdout();
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let before = screen.invalid_frames;
                let lines = screen.datagram(&buf[..n]);
                if verbose && screen.invalid_frames > before {
                    eprintln!("(dropped an invalid frame of {n} bytes from {from})");
                }
                let mut out = stdout.lock();
                for l in lines {
                    writeln!(out, "{l}").context("writing to stdout")?;
                }
                out.flush().context("flushing stdout")?;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            // ICMP port unreachable from a server not (yet) listening shows
            // up as ECONNREFUSED on the next read; keep listening.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e).context("receiving frames"),
        }
    }
    Ok(())
}

fn input_loop(opts: &StationOptions, sock: &UdpSocket) -> anyhow::Result<()> {
    let mut tx = Outgoing::with_addressing(opts.callsign, opts.inner);
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let mut words = cmd.split_whitespace();
            match words.next() {
                Some("quit") => return Ok(()),
                Some("ptt") => {
                    let n = match words.next() {
                        None => DEFAULT_PTT_FRAMES,
                        Some(w) => match w.parse::<u32>() {
                            Ok(n) if n <= MAX_PTT_FRAMES => n,
                            _ => {
                                eprintln!("usage: /ptt [frames 0..={MAX_PTT_FRAMES}]");
                                continue;
                            }
                        },
                    };
                    ptt_burst(&mut tx, sock, opts.server, n)?;
                }
                _ => eprintln!("commands: /ptt [frames], /quit; anything else is sent as text"),
            }
            continue;
        }
        let frames = tx.text(line);
        if frames.is_empty() {
            eprintln!("(message too long for one IPv4 packet; not sent)");
        }
        send_all(sock, opts.server, &frames)?;
    }
    Ok(())
}

/// `PTT_START`, `n` voice frames 40 ms apart, `PTT_STOP`.
fn ptt_burst(tx: &mut Outgoing, sock: &UdpSocket, to: SocketAddr, n: u32) -> anyhow::Result<()> {
    send_all(sock, to, &tx.control("PTT_START"))?;
    let start = Instant::now();
    for i in 0..n {
        let due = start + VOICE_INTERVAL * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        send_all(sock, to, &tx.voice(&synthetic_opus(i)))?;
    }
    send_all(sock, to, &tx.control("PTT_STOP"))?;
    eprintln!("(sent PTT_START, {n} voice frames, PTT_STOP)");
    Ok(())
}

fn send_all(sock: &UdpSocket, to: SocketAddr, frames: &[[u8; FRAME_LEN]]) -> anyhow::Result<()> {
    for f in frames {
        let n = sock
            .send_to(f, to)
            .with_context(|| format!("sending a frame to {to}"))?;
        if n != f.len() {
            bail!("short send to {to}: {n} of {} bytes", f.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_shows_text_control_and_counts_voice() {
        let id = StationId::encode("KB5MU-11").unwrap();
        let mut tx = Outgoing::with_addressing(id, InnerAddressing::from_seed(5));
        let mut s = Screen::new();
        let mut lines = Vec::new();
        for f in tx.text("hello everyone") {
            lines.extend(s.datagram(&f));
        }
        for f in tx.control("PTT_START") {
            lines.extend(s.datagram(&f));
        }
        for i in 0..3 {
            for f in tx.voice(&synthetic_opus(i)) {
                lines.extend(s.datagram(&f));
            }
        }
        for f in tx.control("PTT_STOP") {
            lines.extend(s.datagram(&f));
        }
        assert_eq!(
            lines,
            [
                "[KB5MU-11]: hello everyone",
                "[KB5MU-11] * PTT_START",
                "[KB5MU-11] * voice: 3 frames",
                "[KB5MU-11] * PTT_STOP",
            ]
        );
        assert!(s.datagram(b"GET / HTTP/1.1\r\n").is_empty());
        assert_eq!(s.invalid_frames, 1);
    }

    #[test]
    fn server_address_forms() {
        assert_eq!(
            resolve_server("127.0.0.1").unwrap(),
            "127.0.0.1:57372".parse().unwrap()
        );
        assert_eq!(
            resolve_server("127.0.0.1:4000").unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert_eq!(
            resolve_server("::1").unwrap(),
            "[::1]:57372".parse().unwrap()
        );
        assert_eq!(
            resolve_server("[::1]:9").unwrap(),
            "[::1]:9".parse().unwrap()
        );
    }
}
