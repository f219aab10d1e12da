//! Every metric name of control, the shared cells the threads publish into,
//! and the Prometheus text rendering (STYLE.md practice 10: counters, not
//! logs; every name defined here and nowhere else).
//!
//! Writers: the machine thread publishes its gauges and counters once per
//! burst ([`Metrics::publish_machine`]); the store worker records each
//! transaction's latency; the network thread counts connections. Readers:
//! the HTTP thread (`whelm_daemon::metrics_http`) renders a scrape, and the
//! machine thread's periodic summary line. All cells are relaxed atomics: a
//! scrape may see one thread's update before another's, never a torn value.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Sessions open (TCP and TLS connections), gauge.
pub const SESSIONS: &str = "whelm_control_sessions";
/// Users authenticated, gauge.
pub const USERS_AUTHENTICATED: &str = "whelm_control_users_authenticated";
/// Calls by `state` (`ringing`, `active`), gauge.
pub const CALLS: &str = "whelm_control_calls";
/// The call admission limit in force (max_calls or cores × per core), gauge.
pub const CALL_LIMIT: &str = "whelm_control_call_limit";
/// Calls offered (`OK CALLING` sent), counter.
pub const CALLS_OFFERED: &str = "whelm_control_calls_offered_total";
/// Calls refused for capacity or bandwidth, counter.
pub const CALLS_REFUSED: &str = "whelm_control_calls_refused_total";
/// Messages committed to the store, counter.
pub const MESSAGES_STORED: &str = "whelm_control_messages_stored_total";
/// `MSG <json>` lines delivered to recipients, counter.
pub const MESSAGES_DELIVERED: &str = "whelm_control_messages_delivered_total";
/// Store transactions that failed (rolled back), counter.
pub const STORE_ERRORS: &str = "whelm_control_store_errors_total";
/// Store transaction latency, histogram (seconds).
pub const STORE_SECONDS: &str = "whelm_control_store_transaction_seconds";
/// Relay command link state (1 connected, 0 not), gauge.
pub const RELAY_LINK_UP: &str = "whelm_control_relay_link_up";
/// Connections accepted by `transport` (`tcp`, `tls`), counter.
pub const CONNECTIONS_ACCEPTED: &str = "whelm_control_connections_accepted_total";
/// Connections refused at a connection limit, counter.
pub const CONNECTIONS_REFUSED: &str = "whelm_control_connections_refused_total";
/// TLS handshakes or records that failed, counter.
pub const TLS_ERRORS: &str = "whelm_control_tls_errors_total";
/// Failed accepts on a listener (EMFILE, ENOMEM, ...), counter.
pub const ACCEPT_ERRORS: &str = "whelm_control_accept_errors_total";
/// Configuration reloads by `result` (`ok`, `error`), counter.
pub const RELOADS: &str = "whelm_control_config_reloads_total";

/// Upper bounds of the store latency buckets, seconds.
pub const STORE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram of fixed buckets (one writer, any readers).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at most `STORE_BUCKETS[i]` (not cumulative).
    buckets: [AtomicU64; STORE_BUCKETS.len()],
    /// Observations above the last bound.
    over: AtomicU64,
    /// Sum of observations, microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match STORE_BUCKETS.iter().position(|&b| s <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.over.fetch_add(1, Relaxed),
        };
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0u64;
        for (b, c) in STORE_BUCKETS.iter().zip(&self.buckets) {
            cum += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.over.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// The machine's view, published once per burst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineStats {
    /// Sessions open.
    pub sessions: u64,
    /// Users authenticated.
    pub users: u64,
    /// Calls ringing.
    pub ringing: u64,
    /// Calls active.
    pub active: u64,
    /// The call limit in force.
    pub call_limit: u64,
    /// Calls offered since start.
    pub calls_offered: u64,
    /// Calls refused (capacity, bandwidth) since start.
    pub calls_refused: u64,
    /// Messages committed since start.
    pub messages_stored: u64,
    /// Messages delivered since start.
    pub messages_delivered: u64,
    /// Relay link up.
    pub relay_up: bool,
}

/// All of control's metrics. Shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions: AtomicU64,
    users: AtomicU64,
    ringing: AtomicU64,
    active: AtomicU64,
    call_limit: AtomicU64,
    calls_offered: AtomicU64,
    calls_refused: AtomicU64,
    messages_stored: AtomicU64,
    messages_delivered: AtomicU64,
    relay_up: AtomicU64,
    /// Written by the store worker.
    pub store_errors: AtomicU64,
    /// Written by the store worker.
    pub store_latency: Histogram,
    /// Written by the network thread.
    pub accepted_tcp: AtomicU64,
    /// Written by the network thread.
    pub accepted_tls: AtomicU64,
    /// Written by the network thread.
    pub refused: AtomicU64,
    /// Written by the network thread.
    pub tls_errors: AtomicU64,
    /// Written by the network thread.
    pub accept_errors: AtomicU64,
    /// Written by the reload (signal) thread.
    pub reloads_ok: AtomicU64,
    /// Written by the reload (signal) thread.
    pub reloads_failed: AtomicU64,
}

impl Metrics {
    /// Stores the machine's numbers (machine thread only).
    pub fn publish_machine(&self, s: &MachineStats) {
        self.sessions.store(s.sessions, Relaxed);
        self.users.store(s.users, Relaxed);
        self.ringing.store(s.ringing, Relaxed);
        self.active.store(s.active, Relaxed);
        self.call_limit.store(s.call_limit, Relaxed);
        self.calls_offered.store(s.calls_offered, Relaxed);
        self.calls_refused.store(s.calls_refused, Relaxed);
        self.messages_stored.store(s.messages_stored, Relaxed);
        self.messages_delivered.store(s.messages_delivered, Relaxed);
        self.relay_up.store(u64::from(s.relay_up), Relaxed);
    }

    /// The one-line summary (logged every `summary_interval` and at exit).
    pub fn summary(&self) -> String {
        format!(
            "sessions={} users={} calls_ringing={} calls_active={} messages_stored={} \
             messages_delivered={} store_errors={} relay={}",
            self.sessions.load(Relaxed),
            self.users.load(Relaxed),
            self.ringing.load(Relaxed),
            self.active.load(Relaxed),
            self.messages_stored.load(Relaxed),
            self.messages_delivered.load(Relaxed),
            self.store_errors.load(Relaxed),
            if self.relay_up.load(Relaxed) == 1 {
                "up"
            } else {
                "down"
            },
        )
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let g = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        g(
            &mut o,
            SESSIONS,
            "Open sessions.",
            self.sessions.load(Relaxed),
        );
        g(
            &mut o,
            USERS_AUTHENTICATED,
            "Authenticated users.",
            self.users.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP {CALLS} Calls by state.\n# TYPE {CALLS} gauge\n\
             {CALLS}{{state=\"ringing\"}} {}\n{CALLS}{{state=\"active\"}} {}",
            self.ringing.load(Relaxed),
            self.active.load(Relaxed)
        );
        g(
            &mut o,
            CALL_LIMIT,
            "Call admission limit in force.",
            self.call_limit.load(Relaxed),
        );
        c(
            &mut o,
            CALLS_OFFERED,
            "Calls offered to a callee.",
            self.calls_offered.load(Relaxed),
        );
        c(
            &mut o,
            CALLS_REFUSED,
            "Calls refused for capacity or bandwidth.",
            self.calls_refused.load(Relaxed),
        );
        c(
            &mut o,
            MESSAGES_STORED,
            "Messages committed to the store.",
            self.messages_stored.load(Relaxed),
        );
        c(
            &mut o,
            MESSAGES_DELIVERED,
            "Messages delivered to recipients.",
            self.messages_delivered.load(Relaxed),
        );
        c(
            &mut o,
            STORE_ERRORS,
            "Store transactions rolled back.",
            self.store_errors.load(Relaxed),
        );
        self.store_latency
            .render(&mut o, STORE_SECONDS, "Store transaction latency.");
        g(
            &mut o,
            RELAY_LINK_UP,
            "Relay command link connected.",
            self.relay_up.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP {CONNECTIONS_ACCEPTED} Connections accepted.\n\
             # TYPE {CONNECTIONS_ACCEPTED} counter\n\
             {CONNECTIONS_ACCEPTED}{{transport=\"tcp\"}} {}\n\
             {CONNECTIONS_ACCEPTED}{{transport=\"tls\"}} {}",
            self.accepted_tcp.load(Relaxed),
            self.accepted_tls.load(Relaxed)
        );
        c(
            &mut o,
            CONNECTIONS_REFUSED,
            "Connections refused at a limit.",
            self.refused.load(Relaxed),
        );
        c(
            &mut o,
            TLS_ERRORS,
            "TLS connections that failed.",
            self.tls_errors.load(Relaxed),
        );
        c(
            &mut o,
            ACCEPT_ERRORS,
            "Failed accepts (out of descriptors or memory); the listener retries.",
            self.accept_errors.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP {RELOADS} Configuration reloads.\n# TYPE {RELOADS} counter\n\
             {RELOADS}{{result=\"ok\"}} {}\n{RELOADS}{{result=\"error\"}} {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_name_labels_value_or_comment() {
        let m = Metrics::default();
        m.store_latency.observe(Duration::from_millis(3));
        m.store_latency.observe(Duration::from_secs(9));
        let text = m.render();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("whelm_control_"), "{line}");
        }
        assert!(text.contains("whelm_control_store_transaction_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("whelm_control_store_transaction_seconds_count 2"));
    }
}
