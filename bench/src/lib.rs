//! `whelm-bench`: the load harness of Whelm Voice and its station/client
//! tools for people.
//!
//! [`cli`] parses the command line and hands each subcommand to its module.
//!
//! Tools (interactive, also scriptable through pipes):
//! - [`station`]: an OVP text station (`whelm-bench station`); its frames
//!   are built by `whelm_shared::station::Outgoing`, its voice by
//!   [`station_tx::synthetic_opus`].
//! - [`client`]: a Whelm control-protocol client (`whelm-bench client`);
//!   [`client_voice`]: its synthetic voice stream (HELLO, paced probes,
//!   loss and latency of what the partner sends).
//!
//! Measurement core (no scenario knowledge):
//! - [`probe`]: the sequence number and send timestamp every load packet
//!   carries; [`clock`]: CLOCK_MONOTONIC and the realtime offset that turns
//!   kernel receive timestamps into monotonic time.
//! - [`flows`]: receiver accounting per (sender, receiver) flow: received,
//!   lost, reordered, duplicated. [`latency`]: hdrhistogram percentiles.
//! - [`udp`]: sockets for load (large buffers, `SO_TIMESTAMPNS`,
//!   `SO_RXQ_OVFL`) and batched `sendmmsg`/`recvmmsg` through nix.
//! - [`procstat`]: from /proc, a process's CPU time (utime+stime), RSS,
//!   run-queue wait (schedstat: neighbours on its core) and its UDP
//!   socket's drops; [`pin`]: CPU affinity of the generator thread.
//! - [`stats`]: medians and spread over repeats; [`machine`]: git commit,
//!   nproc, kernel, CPU model.
//! - [`report`]: the stdout table and JSON lines; [`svg`]: the latency CDF
//!   and throughput-vs-offered-load figure; [`progress`]: stderr progress.
//!
//! Scenarios:
//! - [`children`]: starts the process under test (the real `whelm-relay`,
//!   or the bench's own baseline forwarder) and waits for its ready line;
//!   kills it on drop.
//! - [`forwarder`]: the baseline, a one-thread `recvmmsg`/`sendmmsg`
//!   forwarder with a static table (`whelm-bench forwarder`, hidden).
//! - [`ovp_load`]: one measured run of an OVP conference: stations join,
//!   warm up, send paced probe frames; the receiver accounts every copy.
//! - [`scenario`]: `baseline` and `ovp`: load points x targets x repeats,
//!   summaries and ratios to the baseline of the same invocation.
//! - [`voice_load`]: one measured run of Whelm 1:1 calls (HELLO, ready
//!   check, paced probe datagrams both ways, per-direction accounting).
//! - [`calls`]: `calls`: users, whelm-relay + whelm-control started per
//!   run, calls set up over the line protocol (AUTH, CALL, ACCEPT), HELLO,
//!   then [`voice_load`]; the baseline forwarder with the same pairs.
//! - [`capacity`]: the highest calls and stations per core within the loss
//!   and p99 bounds (doubling, then bisection, within a time budget).
//! - [`im`]: instant messages through the real whelm-control and its
//!   store: delivery and ack latency, loss, control CPU per message.
//! - [`soak`]: relay + control for a long time under call churn
//!   ([`calls`] sessions, [`voice_load`]), messages ([`im`] connections)
//!   and an OVP conference ([`ovp_load`]); RSS from [`procstat`] against a
//!   baseline, loss, acknowledged messages read back from the store; a
//!   verdict. [`live`]: the running totals and stop request that long runs
//!   share with the generators.
//!
//! Flow of a run: `cli` -> `scenario` -> (`children` starts the target) ->
//! `ovp_load` (pinned generator/receiver thread using `udp`, `probe`,
//! `flows`, `latency`; `procstat` samples the target) -> `report`/`svg`.

pub mod calls;
pub mod capacity;
pub mod children;
pub mod cli;
pub mod client;
pub mod client_voice;
pub mod clock;
pub mod flows;
pub mod forwarder;
pub mod im;
pub mod latency;
pub mod live;
pub mod machine;
pub mod ovp_load;
pub mod pin;
pub mod probe;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod soak;
pub mod station;
pub mod station_tx;
pub mod stats;
pub mod svg;
pub mod udp;
pub mod voice_load;
