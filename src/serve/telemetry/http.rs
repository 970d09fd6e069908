//! The HTTP listener of `balans serve`: `/metrics` (the Prometheus text
//! of [`Telemetry::render`]), `/healthz` (liveness) and `/readyz`
//! (readiness: state restored, consuming, broker reachable).
//!
//! It is `tiny_http` on its own thread: synchronous, no async runtime, a
//! handful of small dependencies. The daemon's loop is synchronous and the
//! endpoint sees one scrape every few seconds, so nothing more is needed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::Telemetry;

impl Telemetry {
    /// Start the HTTP listener on its own thread. Stops when the returned
    /// handle is dropped.
    pub fn serve_http(&self, addr: SocketAddr) -> Result<HttpServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics: {e}"))?;
        let server = Arc::new(server);
        let local = server
            .server_addr()
            .to_ip()
            .context("the metrics listener has no IP address")?;
        let t = self.clone();
        let s = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("balans-http".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    t.respond(req);
                }
            })
            .context("cannot start the HTTP thread")?;
        tracing::info!(address = %local, "metrics listener: /metrics /healthz /readyz");
        Ok(HttpServer {
            server,
            thread: Some(thread),
            addr: local,
        })
    }

    fn respond(&self, req: tiny_http::Request) {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let get = matches!(
            req.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let (code, ctype, body) = match (get, path.as_str()) {
            (false, _) => (
                405,
                "text/plain; charset=utf-8",
                "method not allowed\n".into(),
            ),
            (true, "/metrics") => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.render(),
            ),
            (true, "/healthz") => (200, "text/plain; charset=utf-8", "ok\n".into()),
            (true, "/readyz") => {
                let code = if self.is_ready() { 200 } else { 503 };
                (code, "text/plain; charset=utf-8", self.readiness_text())
            }
            _ => (404, "text/plain; charset=utf-8", "not found\n".into()),
        };
        let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()) {
            resp = resp.with_header(h);
        }
        if let Err(e) = req.respond(resp) {
            tracing::debug!(error = %e, "metrics client went away");
        }
    }

    /// Why not ready (for the `/readyz` body).
    fn readiness_text(&self) -> String {
        let r = &self.inner.ready;
        let broker = match r.broker.load(Ordering::SeqCst) {
            0 => "none",
            1 => "reachable",
            _ => "unreachable",
        };
        format!(
            "state_restored {}\nconsuming {}\nbroker {}\n",
            r.state_restored.load(Ordering::SeqCst),
            r.consuming.load(Ordering::SeqCst),
            broker
        )
    }
}

/// The running HTTP listener; dropping it stops it.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl HttpServer {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::outcome::RejectReason;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }

    #[test]
    fn endpoints_and_readiness() {
        let t = Telemetry::new().unwrap();
        let srv = t.serve_http("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = srv.addr();
        assert_eq!(get(a, "/healthz").0, 200);
        let (code, body) = get(a, "/readyz");
        assert_eq!(code, 503);
        assert!(body.contains("state_restored false"), "{body}");
        t.set_state_restored(true);
        assert_eq!(get(a, "/readyz").0, 503);
        t.set_consuming(true);
        assert_eq!(get(a, "/readyz").0, 200);
        t.set_broker_reachable(false);
        assert_eq!(get(a, "/readyz").0, 503);
        t.set_broker_reachable(true);
        assert_eq!(get(a, "/readyz").0, 200);
        assert_eq!(get(a, "/nope").0, 404);
        t.plate_dead_lettered(RejectReason::NonFinite, 7);
        let (code, m) = get(a, "/metrics");
        assert_eq!(code, 200);
        assert!(
            m.contains("balans_plates_dead_lettered_total{reason=\"non_finite\"} 1"),
            "{m}"
        );
        assert!(m.contains("balans_rows_dead_lettered_total{reason=\"non_finite\"} 7"));
        assert!(m.contains("balans_plates_dead_lettered_total{reason=\"empty\"} 0"));
        assert!(m.contains("balans_ready 1"));
        assert!(m.contains(&format!(
            "balans_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        drop(srv);
    }

    #[test]
    fn listen_parsing() {
        let c = |s: &str| crate::config::MetricsConfig { listen: s.into() }.address();
        assert_eq!(c("").unwrap(), None);
        assert_eq!(c("off").unwrap(), None);
        assert_eq!(
            c("127.0.0.1:9464").unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert!(c("localhost").is_err());
    }
}
