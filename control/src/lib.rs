//! `whelm-control`: the control plane of Whelm Voice (ARCHITECTURE.md).
//!
//! Modules and the flow through them:
//!
//! - [`net`]: one mio thread. Accepts TCP connections, splits lines
//!   ([`framing`]), parses each once into a `whelm_shared::line::Command`
//!   and sends it to the machine as an [`jobs::Input`]; writes the replies
//!   the machine queues, dropping clients that do not read.
//! - [`machine`]: the sans-IO call and presence state machine. One thread
//!   owns all session, user and call state; `handle(now, input)` pushes
//!   [`jobs::Effect`]s: replies, closes, store jobs, relay commands.
//! - [`store`]: the `Store` trait with SQLite ([`store::sqlite`]) and
//!   MariaDB ([`store::mysql`]) backends, and the [`store::worker`] thread
//!   that group-commits queued jobs and answers the machine with inputs.
//! - [`relay_link`]: the thread that owns the relay's command socket:
//!   sends the machine's requests, feeds replies and events back as
//!   [`jobs::Input::Relay`]; reconnects with backoff.
//! - [`runtime`]: starts the threads and runs the machine loop and its tick.
//! - [`config`], [`cli`], [`dsn`]: settings (flags > environment > file >
//!   defaults, layered by `whelm_daemon::config`; strict validation), the
//!   command line, DSN parsing.
//! - [`observe`]: operations: the systemd watchdog fed from the machine
//!   loop, and SIGHUP reload. [`metrics`] names every metric; [`tls`] loads
//!   the TLS certificate. Logging, systemd notification (READY, WATCHDOG,
//!   STOPPING, STATUS) and the Prometheus endpoint are `whelm_daemon`'s,
//!   shared with the relay.
//! - [`jobs`]: the plain data passed between all of the above.

pub mod cli;
pub mod config;
pub mod dsn;
pub mod framing;
pub mod jobs;
pub mod machine;
pub mod metrics;
pub mod net;
pub mod observe;
pub mod relay_link;
pub mod runtime;
pub mod store;
pub mod tls;
