//! The HTTP listener of `balans serve`: `/metrics` (the Prometheus text
//! of [`Telemetry::render`]), `/healthz` (liveness) and `/readyz`
//! (readiness: state restored, consuming, broker reachable).
//!
//! # Why it looks like this
//!
//! A liveness probe that goes unanswered gets a healthy daemon killed, so
//! no client may be able to stop `/healthz` from answering others. The
//! listener is hyper's HTTP/1 server on a small tokio runtime of its own
//! (one thread, `balans-http`), beside the daemon's synchronous loop:
//!
//! - **each connection is its own task**: a client that pipelines
//!   requests and never reads the replies stalls only its own connection;
//! - **bounded memory per connection**: request headers over
//!   [`HttpLimits::max_header_bytes`] get `431 Request Header Fields Too
//!   Large` and the connection is closed (the read buffer never grows
//!   past the limit);
//! - **timeouts**: the whole request head must arrive within
//!   [`HttpLimits::header_timeout`] (slowloris), which also closes a
//!   keep-alive connection idle that long between requests; a connection
//!   that moves no byte either way for [`HttpLimits::stall_timeout`] (a
//!   client that stopped reading its replies) is closed;
//! - **a connection cap**: at most [`HttpLimits::max_connections`]
//!   connections (tasks) at once. A new connection beyond it closes the
//!   least recently active one to make room, so a probe still gets in
//!   when the cap is full of idle clients. Memory and tasks stay bounded
//!   whatever the clients do; no thread is created per connection.
//!
//! Dropping the [`HttpServer`] stops accepting, lets the requests in
//! flight finish for up to [`HttpLimits::shutdown_grace`], closes the rest
//! and joins the thread. The limits and their reasons are in
//! `docs/operations.md` ("HTTP listener").

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::Telemetry;

/// Request headers (request line included) larger than this get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Request header fields beyond this many get 431.
pub const MAX_HEADERS: usize = 64;
/// The whole request head must arrive within this (slowloris); also the
/// longest a keep-alive connection may wait idle for its next request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that moves no byte either way for this long is closed
/// (a client that stopped reading its replies).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; a new one beyond it closes the least
/// recently active.
pub const MAX_CONNECTIONS: usize = 256;
/// At shutdown, how long requests in flight may take to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The listener's limits. The daemon uses [`HttpLimits::default`] (the
/// constants above); tests shorten the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request head (request line + headers) larger than this: 431 and
    /// the connection closed. Default 16 KiB.
    pub max_header_bytes: usize,
    /// More header fields than this: 431. Default 64.
    pub max_headers: usize,
    /// The whole request head must arrive within this (slowloris); also
    /// the longest a connection waits idle for its next request.
    /// Default 10 s.
    pub header_timeout: Duration,
    /// A connection that moves no byte either way for this long is
    /// closed (a client not reading its replies). Default 10 s.
    pub stall_timeout: Duration,
    /// Connections open at once (at least 1); a new one beyond it closes
    /// the least recently active. Default 256.
    pub max_connections: usize,
    /// At shutdown, how long requests in flight may take to finish.
    /// Default 1 s.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: MAX_HEADERS,
            header_timeout: HEADER_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// hyper refuses a read buffer smaller than this (its HTTP/1 minimum).
const MIN_BUF: usize = 8192;

impl Telemetry {
    /// Start the HTTP listener with the default [`HttpLimits`] on a thread
    /// of its own. Stops when the returned handle is dropped.
    pub fn serve_http(&self, addr: SocketAddr) -> Result<HttpServer> {
        self.serve_http_with(addr, HttpLimits::default())
    }

    /// [`Telemetry::serve_http`] with explicit limits.
    pub fn serve_http_with(&self, addr: SocketAddr, limits: HttpLimits) -> Result<HttpServer> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("cannot start the HTTP runtime")?;
        let listener = {
            let _in_runtime = rt.enter();
            bind(addr).with_context(|| format!("cannot listen on {addr} for /metrics"))?
        };
        let local = listener
            .local_addr()
            .context("the metrics listener has no address")?;
        let (stop, stopped) = watch::channel(false);
        let t = self.clone();
        let thread = std::thread::Builder::new()
            .name("balans-http".into())
            .spawn(move || {
                rt.block_on(accept_loop(listener, t, limits, stopped));
                // Dropping the runtime closes what the grace left open.
            })
            .context("cannot start the HTTP thread")?;
        tracing::info!(address = %local, "metrics listener: /metrics /healthz /readyz");
        Ok(HttpServer {
            stop,
            thread: Some(thread),
            addr: local,
        })
    }

    /// The answer to one request (the routes).
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        const TEXT: &str = "text/plain; charset=utf-8";
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let (code, ctype, body) = match (get, req.uri().path()) {
            (false, _) => (
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "method not allowed\n".to_string(),
            ),
            (true, "/metrics") => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.render(),
            ),
            (true, "/healthz") => (StatusCode::OK, TEXT, "ok\n".into()),
            (true, "/readyz") => {
                let code = if self.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, TEXT, self.readiness_text())
            }
            _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = code;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        if code == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
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
    stop: watch::Sender<bool>,
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
        // The receivers live as long as the runtime's tasks; an error only
        // means the thread has already ended.
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the metrics listener's thread panicked");
            }
        }
    }
}

// ---------------------------------------------------------------- accept

/// Pending connections the kernel queues before `accept` (a burst of
/// clients waits there instead of retrying its SYN a second later).
const BACKLOG: u32 = 1024;

/// Listen on `addr` (inside the runtime).
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accept connections until told to stop, one task each, at most
/// `limits.max_connections` at once; then give the open ones the grace.
async fn accept_loop(
    listener: TcpListener,
    t: Telemetry,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let cap = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(cap));
    let open = Arc::new(Open::new());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors, mostly: wait rather than spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                open.evict_oldest();
                match Arc::clone(&permits).acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break, // never closed; nothing left to serve with
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = open.add();
        tokio::spawn(serve_conn(
            stream,
            t.clone(),
            limits,
            conn,
            Arc::clone(&open),
            stop.clone(),
            permit,
        ));
    }
    drop(listener);
    // Every permit back = every connection closed; or the grace is over.
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.shutdown_grace, permits.acquire_many(all)).await;
}

/// Serve one connection until it ends, stalls, is evicted or the
/// listener stops (then gracefully: the request in flight completes).
async fn serve_conn(
    stream: TcpStream,
    t: Telemetry,
    limits: HttpLimits,
    conn: Arc<Conn>,
    open: Arc<Open>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: Arc::clone(&conn),
        open: Arc::clone(&open),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF));
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let resp = t.respond(&req);
        async move { Ok::<_, Infallible>(resp) }
    });
    let serving = http.serve_connection(io, service);
    tokio::pin!(serving);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = serving.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
                break;
            }
            _ = conn.evict.notified() => {
                tracing::debug!("metrics connection closed to make room (connection cap)");
                break;
            }
            _ = stalled(&conn, &open, limits.stall_timeout) => {
                tracing::debug!("metrics connection closed: no progress");
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                serving.as_mut().graceful_shutdown();
            }
        }
    }
    open.remove(conn.id);
}

/// Resolves once `conn` has moved no byte for `timeout`.
async fn stalled(conn: &Conn, open: &Open, timeout: Duration) {
    let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        let idle = open
            .now_ms()
            .saturating_sub(conn.last.load(Ordering::Relaxed));
        if idle >= limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(limit - idle)).await;
    }
}

// ---------------------------------------------------------------- open connections

/// One open connection: when it last moved a byte, and the signal that
/// closes it to make room.
struct Conn {
    id: u64,
    /// Milliseconds since [`Open::start`].
    last: AtomicU64,
    evict: Notify,
}

/// The open connections, for the cap's eviction.
struct Open {
    start: Instant,
    next: AtomicU64,
    conns: Mutex<std::collections::HashMap<u64, Arc<Conn>>>,
}

impl Open {
    fn new() -> Self {
        Open {
            start: Instant::now(),
            next: AtomicU64::new(0),
            conns: Mutex::new(Default::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn add(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            last: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        self.lock().insert(conn.id, Arc::clone(&conn));
        conn
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Close the least recently active connection (its permit comes back
    /// when its task ends, at once).
    fn evict_oldest(&self) {
        let mut conns = self.lock();
        let oldest = conns
            .values()
            .min_by_key(|c| (c.last.load(Ordering::Relaxed), c.id))
            .map(|c| c.id);
        if let Some(c) = oldest.and_then(|id| conns.remove(&id)) {
            c.evict.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<Conn>>> {
        // A panic elsewhere cannot leave the map inconsistent (single
        // inserts and removes): keep serving.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A TCP stream that records when it last moved a byte.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    open: Arc<Open>,
}

impl Tracked {
    fn touch(&self) {
        self.conn.last.store(self.open.now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
        assert_eq!(get(a, "/healthz?x=1").0, 200);
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
        // The whole text arrives, whatever its size against the buffers.
        assert_eq!(m, t.render());
        drop(srv);
        assert!(std::net::TcpStream::connect(a).is_err(), "still listening");
    }

    #[test]
    fn methods_head_and_content_types() {
        let t = Telemetry::new().unwrap();
        let srv = t.serve_http("127.0.0.1:0".parse().unwrap()).unwrap();
        let raw = |req: &str| {
            let mut s = std::net::TcpStream::connect(srv.addr()).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out); // EOF, or a timeout failing below
            String::from_utf8_lossy(&out).into_owned()
        };
        let post = raw(
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head"),
            "{post}"
        );
        // A body announced but never sent is not waited for.
        let big = raw(
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n0123456789",
        );
        assert!(big.starts_with("HTTP/1.1 405"), "{big}");
        let head = raw("HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        // Keep-alive: two requests on one connection.
        let two = raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(two.matches("HTTP/1.1 ").count(), 2, "{two}");
        assert!(two.contains("HTTP/1.1 503"), "{two}");
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
