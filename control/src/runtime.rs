//! Wiring: the threads and the channels between them.
//!
//! ```text
//!  network thread ──Input──▶ machine thread ──StoreJob──▶ store worker
//!   (mio, net.rs)  ◀─NetCmd── (machine/)     ◀──Input─────  (store/worker.rs)
//!        ▲  Waker                 │ (id, Command) ▲ Input::Relay
//!        └────────────────────────┘──────────▶ relay link (relay_link.rs)
//!  signal thread ──Input::Shutdown──▶ machine thread
//! ```
//!
//! The machine thread drains its inputs in bursts, applies each, sends the
//! effects on, and wakes the network thread once per burst. It ticks on its
//! own clock, so timers run on an idle server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::Waker;

use crate::config::Config;
use crate::jobs::{Effect, Input, StoreJob};
use crate::machine::Machine;
use crate::net::{Net, NetCmd};
use crate::relay_link::RelayLink;
use crate::store::{self, Store};

/// Inputs handled per burst before effects go out.
const BURST: usize = 4096;

/// Binds the listener (with a large accept backlog).
pub fn bind(addr: SocketAddr) -> anyhow::Result<mio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .with_context(|| format!("creating a socket for {addr}"))?;
    sock.set_reuse_address(true)
        .with_context(|| format!("SO_REUSEADDR on {addr}"))?;
    sock.bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    sock.listen(4096)
        .with_context(|| format!("cannot listen on {addr}"))?;
    sock.set_nonblocking(true)
        .with_context(|| format!("non-blocking {addr}"))?;
    let std_listener: std::net::TcpListener = sock.into();
    Ok(mio::net::TcpListener::from_std(std_listener))
}

/// Raises the open-file limit to its hard limit (10,000 sessions need it).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            tracing::debug!(soft, hard, "could not raise RLIMIT_NOFILE");
        }
    }
}

/// Runs the server until SIGTERM/SIGINT. `ready` gets the bound address and
/// the store description once everything is up.
pub fn serve(
    cfg: &Config,
    mut store: Box<dyn Store>,
    ready: impl FnOnce(SocketAddr, &str, &str),
) -> anyhow::Result<()> {
    raise_nofile();
    store
        .migrate()
        .with_context(|| format!("creating tables in {}", store.describe()))?;
    let listener = bind(cfg.listen)?;
    let local = listener
        .local_addr()
        .with_context(|| format!("local address of {}", cfg.listen))?;

    let (in_tx, in_rx) = crossbeam_channel::unbounded::<Input>();
    let (net_tx, net_rx) = crossbeam_channel::unbounded::<NetCmd>();
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<StoreJob>();

    let (net, waker) = Net::new(listener, net_rx, in_tx.clone(), cfg.net.clone())
        .context("setting up the network poll")?;
    let describe = store.describe();
    let net_thread = thread::Builder::new()
        .name("net".into())
        .spawn(move || net.run())
        .context("spawning the network thread")?;
    let answers = in_tx.clone();
    let batch_max = cfg.batch_max;
    let store_thread = thread::Builder::new()
        .name("store".into())
        .spawn(move || store::worker::run(store, job_rx, answers, batch_max))
        .context("spawning the store worker")?;

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    let sig_tx = in_tx.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "shutting down");
                let _ = sig_tx.send(Input::Shutdown);
            }
        })
        .context("spawning the signal thread")?;
    let relay = RelayLink::start(cfg.relay_socket.clone(), in_tx.clone())?;
    drop(in_tx);
    ready(local, &describe, &relay.describe());

    let machine = Machine::new(cfg.machine.clone());
    machine_loop(machine, cfg, &in_rx, &net_tx, &waker, job_tx, relay);

    // The store worker has the final Offline job; it exits when its queue
    // is drained and the channel closed.
    if store_thread.join().is_err() {
        tracing::error!("store worker panicked");
    }
    let _ = net_tx.send(NetCmd::Shutdown);
    let _ = waker.wake();
    if net_thread.join().is_err() {
        tracing::error!("network thread panicked");
    }
    tracing::info!("stopped");
    Ok(())
}

fn tick_interval(cfg: &Config) -> Duration {
    let m = &cfg.machine;
    let shortest = m
        .heartbeat_check
        .min(m.ring_timeout)
        .min(m.auth_timeout)
        .min(m.heartbeat_timeout);
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

fn machine_loop(
    mut machine: Machine,
    cfg: &Config,
    inputs: &Receiver<Input>,
    net: &Sender<NetCmd>,
    waker: &Arc<Waker>,
    jobs: Sender<StoreJob>,
    mut relay: RelayLink,
) {
    let tick = tick_interval(cfg);
    let mut next_tick = Instant::now();
    let mut effects = Vec::with_capacity(1024);
    let mut stop = false;
    while !stop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let first = match inputs.recv_timeout(wait) {
            Ok(i) => Some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut now = Instant::now();
        if let Some(first) = first {
            stop |= matches!(first, Input::Shutdown);
            machine.handle(now, first, &mut effects);
            for _ in 0..BURST {
                let Ok(i) = inputs.try_recv() else { break };
                stop |= matches!(i, Input::Shutdown);
                machine.handle(now, i, &mut effects);
                if stop {
                    break;
                }
            }
            now = Instant::now();
        }
        if now >= next_tick && !stop {
            machine.handle(now, Input::Tick, &mut effects);
            next_tick = now + tick;
        }
        let mut wake = false;
        for e in effects.drain(..) {
            match e {
                Effect::Send { session, reply } => {
                    wake = true;
                    let _ = net.send(NetCmd::Send(session, reply.to_wire()));
                }
                Effect::Close { session } => {
                    wake = true;
                    let _ = net.send(NetCmd::Close(session));
                }
                Effect::Store(job) => {
                    let _ = jobs.send(job);
                }
                Effect::Relay { id, cmd } => relay.send(id, cmd),
            }
        }
        if wake {
            let _ = waker.wake();
        }
    }
    tracing::info!(sessions = machine.session_count(), "machine stopped");
    // The relay keeps its state: a control restart or upgrade drops no
    // call; the next start adopts the relay's snapshot.
    relay.stop();
    drop(jobs);
}
