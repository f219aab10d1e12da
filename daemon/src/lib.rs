//! `whelm-daemon`: process plumbing shared by `whelm-relay` and
//! `whelm-control`. No protocol logic.
//!
//! - [`logging`]: tracing on stderr (the human format on a terminal, a
//!   compact one under journald), the reloadable filter, rate-limited error
//!   logging.
//! - [`notify`]: systemd notification (READY, STATUS, STOPPING, WATCHDOG
//!   over `NOTIFY_SOCKET`) and the watchdog schedule (`WATCHDOG_USEC`). What
//!   counts as progress, and so whether a due ping is sent, stays with each
//!   daemon.
//! - [`metrics_http`]: the Prometheus text endpoint (`GET /metrics`) on its
//!   own thread (one, however many clients connect; connections capped and
//!   timed out), serving what the daemon renders.
//! - [`config`]: settings layering (flags > environment > file > defaults),
//!   each value's [`config::Origin`], and the error that names source, key,
//!   value and reason. The keys and their validation stay with each daemon.

pub mod config;
pub mod logging;
pub mod metrics_http;
pub mod notify;
