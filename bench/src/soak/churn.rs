//! Call churn of the soak: one thread per concurrent call ("slot"), two
//! users each, authenticated once. A slot repeats until the deadline:
//! `CALL` / `INCOMING` / `ACCEPT` / `START_CALL` on both sessions, then
//! [`voice_load::run_live`] on two new UDP sockets (`HELLO` of both users,
//! ready check, sequence-numbered probes both ways for the hold time, drain
//! until everything sent arrived or the drain time is over), then `HANGUP`
//! and its two replies. Caller and hanger alternate between the users.
//!
//! Loss accounting: the voice run stops sending, drains, and only then is
//! HANGUP sent, so no packet is in flight when a call ends: a measured
//! packet not received by the end of the drain counts as lost. The ready
//! check's probes (sent until each direction forwards, before the measured
//! window) are not counted. A slot's error (a missing reply, a call that
//! does not forward within the ready timeout) is recorded, its sessions are
//! reconnected, and the soak's verdict fails.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use whelm_shared::line::{Command as Line, Reply, UserId};

use crate::calls::{Session, bind_parties};
use crate::clock;
use crate::flows::{LossyFlow, Totals};
use crate::latency::Latency;
use crate::live::Live;
use crate::voice_load::{self, CallSpec};

/// HEARTBEAT period of the slot sessions (control drops them after 30 s).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A slot starts no call with less than this left before the deadline.
const MIN_CALL: Duration = Duration::from_secs(2);
/// Consecutive errors after which a slot gives up.
const MAX_CONSECUTIVE_ERRORS: u32 = 5;
/// Pause after an error before reconnecting.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Error messages kept per slot.
const KEEP_ERRORS: usize = 5;
/// Lossy calls kept per slot.
const KEEP_LOSSY: usize = 5;
/// Upper bound of calls per slot (every loop has a count bound too).
const MAX_CALLS_PER_SLOT: u64 = 10_000_000;

/// What every slot does.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// whelm-control's line protocol address.
    pub control: SocketAddrV4,
    /// The relay's voice address.
    pub voice: SocketAddrV4,
    /// Datagrams/s per direction.
    pub pps: f64,
    /// Voice time per call.
    pub hold: Duration,
    /// Pause between a slot's calls.
    pub gap: Duration,
    /// Longest wait for a call's stragglers before HANGUP.
    pub drain: Duration,
    /// Datagram length.
    pub frame_len: usize,
    /// Slots in all (for the start stagger).
    pub slots: usize,
    /// No call starts after this.
    pub deadline: Instant,
    /// The start of the soak (times in the report count from it).
    pub start: Instant,
}

/// A call that lost voice packets, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LossyCall {
    /// The slot.
    pub slot: usize,
    /// The slot's call number.
    pub call: u64,
    /// Seconds into the soak when its voice ended.
    pub at_s: f64,
    /// User ids of party 0 and party 1.
    pub users: [u64; 2],
    /// Measured datagrams expected and lost.
    pub expected: u64,
    /// Lost of them.
    pub lost: u64,
    /// Per direction (`sender` = party index; its measured sequence
    /// numbers run 1..=sent): where the loss was.
    pub flows: Vec<LossyFlow>,
}

/// What one slot did.
#[derive(Debug, Clone, Default)]
pub struct SlotResult {
    /// Calls completed (set up, voice measured, hung up).
    pub calls: u64,
    /// Voice accounting over its completed calls.
    pub totals: Totals,
    /// Measured datagrams sent.
    pub sent: u64,
    /// Datagrams its own sockets dropped (SO_RXQ_OVFL; counted as lost).
    pub bench_drops: u64,
    /// Datagrams that were not its probes.
    pub stray: u64,
    /// CALL sent -> both START_CALL received.
    pub setup: Latency,
    /// Errors (each ended a call attempt or a connection attempt).
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// The slot stopped early after consecutive errors.
    pub gave_up: bool,
    /// The first calls that lost packets.
    pub lossy_calls: Vec<LossyCall>,
}

impl SlotResult {
    fn error(&mut self, slot: usize, e: &anyhow::Error) {
        self.errors += 1;
        if self.error_samples.len() < KEEP_ERRORS {
            self.error_samples.push(format!("slot {slot}: {e:#}"));
        }
    }
}

/// Runs slot `slot` with users `tokens` until the deadline or `live.stop`;
/// counts its completed calls into `calls_done` as they complete.
pub fn run_slot(
    slot: usize,
    cfg: &ChurnConfig,
    tokens: [&str; 2],
    live: &Live,
    calls_done: &AtomicU64,
) -> SlotResult {
    let mut r = SlotResult::default();
    // Stagger the slots over one call cycle so set-ups spread out.
    let cycle = cfg.hold + cfg.gap;
    let stagger = cycle.mul_f64(slot as f64 / cfg.slots.max(1) as f64);
    sleep_until(Instant::now() + stagger, cfg.deadline, live);
    let mut sessions: Option<[Session; 2]> = None;
    let mut consecutive = 0u32;
    let mut last_heartbeat = Instant::now();
    for n in 0..MAX_CALLS_PER_SLOT {
        let left = cfg.deadline.saturating_duration_since(Instant::now());
        if live.stopping() || left < MIN_CALL {
            break;
        }
        let s = match sessions.as_mut() {
            Some(s) => s,
            None => match connect(cfg.control, tokens) {
                Ok(s) => {
                    last_heartbeat = Instant::now();
                    sessions.insert(s)
                }
                Err(e) => {
                    r.error(slot, &e.context("connecting the slot's sessions"));
                    consecutive += 1;
                    if consecutive >= MAX_CONSECUTIVE_ERRORS {
                        r.gave_up = true;
                        break;
                    }
                    sleep_until(Instant::now() + ERROR_PAUSE, cfg.deadline, live);
                    continue;
                }
            },
        };
        let hold = cfg.hold.min(left.saturating_sub(MIN_CALL / 2));
        match one_call(s, n, hold, cfg, live, &mut last_heartbeat) {
            Ok(c) => {
                consecutive = 0;
                r.calls += 1;
                calls_done.fetch_add(1, Ordering::Relaxed);
                r.sent += c.sent_measured.iter().sum::<u64>();
                r.totals.expected += c.totals.expected;
                r.totals.received += c.totals.received;
                r.totals.lost += c.totals.lost;
                r.totals.reordered += c.totals.reordered;
                r.totals.duplicated += c.totals.duplicated;
                r.bench_drops += c.bench_drops;
                r.stray += c.stray;
                r.setup.record(c.setup_start, c.setup_end);
                if c.totals.lost > 0 && r.lossy_calls.len() < KEEP_LOSSY {
                    r.lossy_calls.push(LossyCall {
                        slot,
                        call: n,
                        at_s: c.voice_end.duration_since(cfg.start).as_secs_f64(),
                        users: c.users,
                        expected: c.totals.expected,
                        lost: c.totals.lost,
                        flows: c.lossy_flows,
                    });
                }
            }
            Err(e) => {
                r.error(slot, &e.context(format!("call {n}")));
                // Closing both sessions ends whatever call control holds.
                sessions = None;
                consecutive += 1;
                if consecutive >= MAX_CONSECUTIVE_ERRORS {
                    r.gave_up = true;
                    break;
                }
                sleep_until(Instant::now() + ERROR_PAUSE, cfg.deadline, live);
                continue;
            }
        }
        sleep_until(Instant::now() + cfg.gap, cfg.deadline, live);
    }
    r
}

/// Sleeps until `t` (at most until `deadline`), waking for `live.stop`.
fn sleep_until(t: Instant, deadline: Instant, live: &Live) {
    let t = t.min(deadline);
    while !live.stopping() {
        let left = t.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

fn connect(control: SocketAddrV4, tokens: [&str; 2]) -> anyhow::Result<[Session; 2]> {
    let mut a = Session::connect(control, tokens[0])?;
    let mut b = Session::connect(control, tokens[1])?;
    a.auth()?;
    b.auth()?;
    Ok([a, b])
}

fn heartbeat(s: &mut [Session; 2], last: &mut Instant) -> anyhow::Result<()> {
    if last.elapsed() >= HEARTBEAT {
        for x in s.iter_mut() {
            x.send(&Line::Heartbeat { status: None }.to_line())?;
        }
        *last = Instant::now();
    }
    Ok(())
}

/// One call's voice outcome and set-up times.
struct CallOutcome {
    sent_measured: Vec<u64>,
    totals: Totals,
    bench_drops: u64,
    stray: u64,
    setup_start: u64,
    setup_end: u64,
    voice_end: Instant,
    users: [u64; 2],
    lossy_flows: Vec<LossyFlow>,
}

fn uid(v: u64) -> anyhow::Result<UserId> {
    UserId::new(v).with_context(|| format!("user id {v}"))
}

/// Call `n` of a slot: user `n % 2` calls the other; the hanger alternates
/// every second call, so both users take both roles.
fn one_call(
    s: &mut [Session; 2],
    n: u64,
    hold: Duration,
    cfg: &ChurnConfig,
    live: &Live,
    last_heartbeat: &mut Instant,
) -> anyhow::Result<CallOutcome> {
    heartbeat(s, last_heartbeat)?;
    let ids = [s[0].user, s[1].user];
    let (a, b) = if n.is_multiple_of(2) { (0, 1) } else { (1, 0) };
    let setup_start = clock::mono_ns();
    s[a].send(
        &Line::Call {
            callee: uid(ids[b])?,
        }
        .to_line(),
    )?;
    s[a].expect("OK CALLING", |r| match r {
        Reply::OkCalling { callee } if callee.get() == ids[b] => Some(()),
        _ => None,
    })?;
    s[b].expect("INCOMING", |r| match r {
        Reply::Incoming { caller, .. } if caller.get() == ids[a] => Some(()),
        _ => None,
    })?;
    s[b].send(
        &Line::Accept {
            caller: uid(ids[a])?,
        }
        .to_line(),
    )?;
    for (me, other) in [(b, a), (a, b)] {
        s[me].expect("START_CALL", |r| match r {
            Reply::StartCall { partner, .. } if partner.get() == ids[other] => Some(()),
            _ => None,
        })?;
    }
    let setup_end = clock::mono_ns();

    let parties = bind_parties(2)?;
    let spec = CallSpec {
        calls: 1,
        rate: 2.0 * cfg.pps,
        warmup: Duration::ZERO,
        duration: hold,
        drain: cfg.drain,
        batch: 16,
        gen_core: None,
        frame_len: cfg.frame_len,
    };
    // The voice run in its own thread; this one keeps the sessions alive.
    // The run is bounded (ready timeout + hold + drain); so is the wait.
    let bound = voice_load::READY_TIMEOUT + hold + cfg.drain + Duration::from_secs(10);
    let outcome = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            voice_load::run_live(
                &spec,
                &parties,
                Some(&ids),
                cfg.voice,
                None,
                &|_| {},
                Some(live),
            )
        });
        let waited = Instant::now();
        let mut hb = Ok(());
        while !h.is_finished() && waited.elapsed() < bound {
            if hb.is_ok() {
                hb = heartbeat(s, last_heartbeat);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = h
            .join()
            .map_err(|_| anyhow::anyhow!("the voice thread panicked"))?;
        hb.map(|()| o)
    })?
    .context("voice")?;
    let voice_end = Instant::now();

    let hanger = if n % 4 < 2 { b } else { a };
    let other = 1 - hanger;
    s[hanger].send(&Line::Hangup.to_line())?;
    s[hanger].expect("OK HANGUP", |r| matches!(r, Reply::OkHangup).then_some(()))?;
    s[other].expect("HANGUP", |r| match r {
        Reply::Hangup { user } if user.get() == ids[hanger] => Some(()),
        _ => None,
    })?;
    Ok(CallOutcome {
        sent_measured: outcome.sent_measured,
        totals: outcome.totals,
        bench_drops: outcome.bench_drops,
        stray: outcome.stray,
        setup_start,
        setup_end,
        voice_end,
        users: ids,
        lossy_flows: outcome.lossy_flows,
    })
}
