//! The Prometheus endpoint: `GET /metrics` (or `/`) in the Prometheus text
//! format on its own thread (tiny_http), with whatever the daemon's render
//! function returns at scrape time; any other path is a 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

/// The Prometheus endpoint's thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    /// The bound address (port resolved).
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` with what `render` returns,
    /// from a thread named `thread_name`.
    pub fn start(
        addr: SocketAddr,
        thread_name: &str,
        render: impl Fn() -> String + Send + 'static,
    ) -> anyhow::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("cannot bind the metrics endpoint {addr}: {e}"))?;
        let local = server
            .server_addr()
            .to_ip()
            .with_context(|| format!("local address of the metrics endpoint {addr}"))?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    let path = req.url().split('?').next().unwrap_or("");
                    let resp = if path == "/metrics" || path == "/" {
                        let mut r = tiny_http::Response::from_string(render());
                        if let Ok(h) = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "text/plain; version=0.0.4; charset=utf-8",
                        ) {
                            r = r.with_header(h);
                        }
                        r
                    } else {
                        tiny_http::Response::from_string("not found\n").with_status_code(404)
                    };
                    let _ = req.respond(resp);
                }
            })
            .context("spawning the metrics thread")?;
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr: local,
        })
    }

    /// Stops the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
