//! The synthetic voice stream of `whelm-bench client` (PROTOCOLS.md
//! section 2): once in a call, a UDP socket bound to the local IP of the
//! control connection (the relay allows a user's HELLO only from that IP)
//! sends `HELLO <user_id>` to the relay's voice port, then `size`-byte
//! datagrams at `pps` carrying a [`Probe`] (sequence number and
//! CLOCK_REALTIME send time: the partner is another process, possibly on
//! another host with a synchronised clock), and finally a trailer
//! `WBEND <sent>` (three times) so the partner knows how many were sent.
//!
//! What the partner sends is accounted like the load scenarios: received,
//! lost (from the partner's trailer, else its highest sequence number),
//! reordered, duplicated, one-way latency from kernel receive timestamps.
//! Datagrams sent before both HELLOs were through are not counted: the
//! accounting starts at the first sequence number received (`skipped`).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::clock;
use crate::flows::Flow;
use crate::latency::{Latency, Percentiles};
use crate::probe::{PROBE_LEN, Probe};
use crate::udp::{self, RecvBatch};

/// HELLO repeats before the stream starts (the partner's HELLO may come a
/// little later; routes exist only once both registered).
const HELLO_LEAD: Duration = Duration::from_millis(300);
/// Receive after our last datagram for the partner's last ones.
const DRAIN: Duration = Duration::from_millis(1000);
/// Trailer prefix.
const TRAILER: &str = "WBEND ";

/// What to stream.
#[derive(Debug, Clone)]
pub struct VoiceOptions {
    /// The relay's voice address.
    pub relay: SocketAddr,
    /// Local IP of the control connection.
    pub local_ip: IpAddr,
    /// Our user id (for HELLO).
    pub user: u64,
    /// How long to stream.
    pub seconds: f64,
    /// Datagrams/s.
    pub pps: f64,
    /// Datagram length.
    pub size: usize,
}

/// What the stream measured.
#[derive(Debug, Clone, Default)]
pub struct VoiceReport {
    /// Datagrams we sent.
    pub sent: u64,
    /// Distinct datagrams received from the partner (counted ones).
    pub received: u64,
    /// What the partner's trailer said it sent, if it arrived.
    pub partner_sent: Option<u64>,
    /// Datagrams of the partner before its first received one.
    pub skipped: u64,
    /// Expected but not received.
    pub lost: u64,
    /// Out of order.
    pub reordered: u64,
    /// Received twice.
    pub duplicated: u64,
    /// One-way latency.
    pub latency: Percentiles,
    /// Receive timestamps from the kernel for every datagram.
    pub kernel_timestamps: bool,
}

impl VoiceReport {
    /// The one line the client prints.
    pub fn line(&self) -> String {
        let expected = self.received + self.lost;
        // Nothing from the partner, not even its trailer: how much it sent,
        // and so what was lost, is not known (not 0%).
        let (lost, loss) = if self.received == 0 && self.partner_sent.is_none() {
            ("unknown".to_string(), "unknown".to_string())
        } else if expected == 0 {
            (self.lost.to_string(), "0.000%".to_string())
        } else {
            (
                self.lost.to_string(),
                format!("{:.3}%", self.lost as f64 * 100.0 / expected as f64),
            )
        };
        format!(
            "VOICE sent={} received={} partner_sent={} skipped={} lost={lost} loss={loss} \
             reordered={} duplicated={} p50_us={:.1} p99_us={:.1} max_us={:.1} timestamps={}",
            self.sent,
            self.received,
            self.partner_sent
                .map_or("unknown".to_string(), |n| n.to_string()),
            self.skipped,
            self.reordered,
            self.duplicated,
            self.latency.p50 as f64 / 1000.0,
            self.latency.p99 as f64 / 1000.0,
            self.latency.max as f64 / 1000.0,
            if self.kernel_timestamps {
                "kernel"
            } else {
                "userspace"
            }
        )
    }
}

/// Receiver-side state of the stream.
#[derive(Debug, Default)]
struct Rx {
    flow: Flow,
    first_seq: Option<u64>,
    max_seq: u64,
    partner_sent: Option<u64>,
    latency: Latency,
    user_stamped: u64,
}

impl Rx {
    fn arrive(&mut self, bytes: &[u8], kernel_real_ns: Option<u64>) {
        if let Some(rest) = bytes.strip_prefix(TRAILER.as_bytes()) {
            if let Some(n) = std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                self.partner_sent = Some(n);
            }
            return;
        }
        let Some(p) = Probe::read(bytes) else {
            return;
        };
        let first = *self.first_seq.get_or_insert(p.seq);
        if p.seq < first {
            // Earlier than the first one seen: still counted from there on.
            self.first_seq = Some(p.seq);
        }
        self.max_seq = self.max_seq.max(p.seq);
        self.flow.arrive(p.seq);
        let recv = match kernel_real_ns {
            Some(k) => k,
            None => {
                self.user_stamped += 1;
                clock::real_ns()
            }
        };
        self.latency.record(p.sent_ns, recv);
    }
}

/// Streams and receives; returns the report.
pub fn stream(o: &VoiceOptions) -> anyhow::Result<VoiceReport> {
    let (IpAddr::V4(ip), SocketAddr::V4(relay)) = (o.local_ip, o.relay) else {
        bail!("the voice stream speaks IPv4 only");
    };
    if o.size < PROBE_LEN || o.size > 1400 || !(o.pps > 0.0 && o.pps <= 10_000.0) {
        bail!("voice: size {PROBE_LEN}..=1400 and 0 < pps <= 10000");
    }
    let seconds = o.seconds.clamp(0.1, 3600.0);
    let sock = udp::load_socket(SocketAddrV4::new(ip, 0))
        .with_context(|| format!("binding a voice socket on {ip}"))?;
    let hello = format!("HELLO {}", o.user);
    let mut rb = RecvBatch::new(64, 2048);
    let mut rx = Rx::default();
    let mut pump = |rx: &mut Rx| -> anyhow::Result<()> {
        loop {
            let n = rb.recv(udp::fd(&sock.sock)).context("receiving voice")?;
            for i in 0..n {
                if let Some((bytes, meta)) = rb.get(i) {
                    rx.arrive(bytes, meta.kernel_real_ns);
                }
            }
            if n < 64 {
                return Ok(());
            }
        }
    };
    let send = |bytes: &[u8]| -> anyhow::Result<()> {
        match sock.sock.send_to(bytes, relay) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e).with_context(|| format!("sending to the relay at {relay}")),
        }
    };
    eprintln!(
        "(voice: HELLO {} from {} to {relay}, then {} pps x {} B for {seconds} s)",
        o.user, sock.addr, o.pps, o.size
    );
    let lead_end = clock::mono_ns() + HELLO_LEAD.as_nanos() as u64;
    while clock::mono_ns() < lead_end {
        send(hello.as_bytes())?;
        std::thread::sleep(Duration::from_millis(50));
        pump(&mut rx)?;
    }
    let mut buf = vec![0u8; o.size];
    let start = clock::mono_ns();
    let end = start + (seconds * 1e9) as u64;
    let mut sent = 0u64;
    loop {
        let now = clock::mono_ns();
        if now >= end {
            break;
        }
        let due = ((now - start) as f64 / 1e9 * o.pps).floor() as u64 + 1;
        while sent < due {
            Probe {
                sender: 0,
                seq: sent,
                sent_ns: clock::real_ns(),
                measured: true,
            }
            .write(&mut buf);
            send(&buf)?;
            sent += 1;
        }
        pump(&mut rx)?;
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..3 {
        send(format!("{TRAILER}{sent}").as_bytes())?;
        pump(&mut rx)?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let drain_end = clock::mono_ns() + DRAIN.as_nanos() as u64;
    while clock::mono_ns() < drain_end {
        pump(&mut rx)?;
        if rx.partner_sent.is_some_and(|n| {
            rx.first_seq.is_some() && rx.flow.received + rx.first_seq.unwrap_or(0) >= n
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let first = rx.first_seq.unwrap_or(0);
    let total = match (rx.partner_sent, rx.first_seq) {
        (Some(n), _) => n,
        (None, Some(_)) => rx.max_seq + 1,
        (None, None) => 0,
    };
    let expected = total.saturating_sub(first);
    Ok(VoiceReport {
        sent,
        received: rx.flow.received,
        partner_sent: rx.partner_sent,
        skipped: first.min(total),
        lost: expected.saturating_sub(rx.flow.received),
        reordered: rx.flow.reordered,
        duplicated: rx.flow.duplicated,
        latency: rx.latency.percentiles(),
        kernel_timestamps: rx.user_stamped == 0 && rx.flow.received > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_nothing_from_the_partner_says_the_loss_is_unknown() {
        let silent = VoiceReport {
            sent: 100,
            ..VoiceReport::default()
        };
        let l = silent.line();
        assert!(l.starts_with("VOICE sent=100 received=0 partner_sent=unknown skipped=0 lost=unknown loss=unknown "), "{l}");
        let half = VoiceReport {
            sent: 100,
            received: 50,
            partner_sent: Some(100),
            lost: 50,
            ..VoiceReport::default()
        };
        assert!(
            half.line().contains(" lost=50 loss=50.000% "),
            "{}",
            half.line()
        );
    }

    #[test]
    fn receiver_counts_from_the_first_and_reads_the_trailer() {
        let mut rx = Rx::default();
        let mut b = [0u8; 160];
        for seq in [3u64, 4, 6, 5, 6] {
            Probe {
                sender: 0,
                seq,
                sent_ns: 1_000,
                measured: true,
            }
            .write(&mut b);
            rx.arrive(&b, Some(2_000));
        }
        rx.arrive(b"WBEND 9", None);
        rx.arrive(b"junk", None);
        assert_eq!(rx.first_seq, Some(3));
        assert_eq!(rx.partner_sent, Some(9));
        assert_eq!(rx.flow.received, 4);
        assert_eq!(rx.flow.duplicated, 1);
        assert_eq!(rx.latency.percentiles().count, 5);
    }
}
