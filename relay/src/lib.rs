//! `whelm-relay`: the data plane of Whelm Voice (ARCHITECTURE.md).
//!
//! Modules, in the order a datagram meets them:
//!
//! - [`config`]: flags over environment over TOML file over defaults
//!   (layered by `whelm_daemon::config`), validated whole (errors name
//!   source, key, value, reason); which keys a reload applies.
//! - [`relay`]: start-up (binds, workers, coordinator, ready line) and
//!   shutdown.
//! - [`net`]: `SO_REUSEPORT` sockets, sockaddr parsing, CPU pinning.
//! - [`engine`]: one pinned worker thread per core; its I/O engine is
//!   [`engine::uring`] (multishot recvmsg into the provided-buffer ring of
//!   [`engine::bufring`], `SendMsg` per destination, zero copy) or
//!   [`engine::mmsg`] (recvmmsg/sendmmsg) on the same tables.
//! - [`batch`]: the seam between I/O and logic: a received batch of
//!   (buffer id, offset, length, peer, port) goes through [`batch::process`],
//!   which returns sends (buffer id, destination) to the engine.
//! - [`core`]: the sans-IO decision (bytes, peer, port kind, now) -> drop
//!   reason or fan-out (one copy per distinct address), over the worker's
//!   replica of the tables (OVP stations, capped in total and per source IP;
//!   voice routes) and its per-source rate limiter.
//! - [`stations`]: a worker's OVP station table: slots, the distinct
//!   destination addresses a fan-out is a slice of, stations per source IP.
//! - [`update`]: coordinator -> worker table updates, worker -> coordinator
//!   events (a new station, an address change, stations seen).
//! - [`coordinator`] with [`registry`]: the one writer of the authoritative
//!   station registry (enforces the station caps); broadcasts updates;
//!   expires stations on its own timer; prints stats.
//! - [`hello`]: the sans-IO `HELLO <id> [<token>]` parser (voice port).
//! - [`voice`]: the authoritative voice state (allowed users, registered
//!   addresses, calls), owned by the coordinator; commands and HELLOs in,
//!   worker updates out.
//! - [`cmdsock`]: the command channel's Unix socket (mode 0660,
//!   `SO_PEERCRED` check, handshake, one reader and one bounded writer per
//!   connection); requests go to the coordinator.
//! - [`ctl`]: `whelm-relay ctl`, the operator's client of that socket.
//! - [`metrics`]: every counter name (stats lines and Prometheus); per-worker
//!   counters read without stopping the workers; the coordinator's gauges.
//! - [`observe`]: the systemd watchdog, fed while every worker loop moves.
//!   Notification (READY, STATUS, STOPPING), the metrics endpoint and
//!   logging (stderr, compact under journald, reloadable filter,
//!   rate-limited errors) are `whelm_daemon`'s, shared with control.
//!
//! Flow: socket -> engine receive batch -> `batch::process` -> `Core::decide`
//! -> engine send queue -> socket. Learned stations: `Core` -> worker ->
//! `Event` -> coordinator -> `Update` to every worker. Voice: control ->
//! `cmdsock` -> coordinator (`VoiceState`) -> `Update::Commit` to every
//! worker (eventfd wake) -> `Event::Applied` from each -> reply to control.
//! A HELLO: `Core` -> worker -> bounded `Hello` channel -> coordinator ->
//! routes to every worker + `voice_registered` event to control. A reload
//! (SIGHUP -> main -> `Event::Reload`, or `ctl reload` -> `cmdsock`) ->
//! coordinator re-reads the file -> `Update::Commit` of the changed limits
//! and lists to every worker.

pub mod batch;
pub mod cmdsock;
pub mod config;
pub mod coordinator;
pub mod core;
pub mod ctl;
pub mod engine;
pub mod hello;
pub mod metrics;
pub mod net;
pub mod observe;
pub mod registry;
pub mod relay;
pub mod stations;
pub mod update;
pub mod voice;
