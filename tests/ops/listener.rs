//! Issue 15, case 15: the metrics listener under hostile clients, in
//! process and over loopback. Each test failed with the old listener
//! (tiny_http: one responder thread, a thread per connection, no limits).
//!
//! - a client that pipelines requests without reading the replies does
//!   not delay another client's `/healthz`;
//! - oversized request headers get 431, memory does not grow by their
//!   size, and the listener keeps serving;
//! - 300 idle connections (over the cap of 256) neither block a new
//!   `/healthz` nor create a thread each;
//! - a slowloris client, and a client that never sends, are disconnected
//!   after the header timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use balans::serve::telemetry::{HttpLimits, HttpServer, Telemetry};

use super::common::http_get;

fn start(limits: HttpLimits) -> (Telemetry, HttpServer) {
    let t = Telemetry::new().unwrap();
    let srv = t
        .serve_http_with("127.0.0.1:0".parse().unwrap(), limits)
        .unwrap();
    (t, srv)
}

/// `/healthz` answers 200 within `bound`.
fn healthz_within(addr: SocketAddr, bound: Duration) {
    let t0 = Instant::now();
    let r = http_get(&addr.to_string(), "/healthz");
    let took = t0.elapsed();
    assert_eq!(r.map(|x| x.0), Some(200), "/healthz after {took:?}");
    assert!(took < bound, "/healthz took {took:?}");
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the peer has closed `s` (EOF or reset), waiting up to `wait`.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < wait {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // a reply (e.g. 408/431): read on to the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Whether the peer has already closed `s` (no waiting).
fn is_closed_now(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let closed = match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn listener_client_not_reading_replies_does_not_block_healthz() {
    let (_t, srv) = start(HttpLimits::default());
    let a = srv.addr();
    let hog = TcpStream::connect(a).unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = hog.try_clone().unwrap();
    // 20,000 pipelined scrapes (hundreds of MB of replies), never read.
    let writer = std::thread::spawn(move || {
        let reqs = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
        for _ in 0..200 {
            if w.write_all(&reqs).is_err() {
                break;
            }
        }
    });
    // Long enough for the replies to fill every socket buffer.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        healthz_within(a, Duration::from_secs(1));
    }
    let _ = hog.shutdown(Shutdown::Both);
    writer.join().unwrap();
    // Dropping the listener does not wait on the stuck client.
    let t0 = Instant::now();
    drop(srv);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn listener_refuses_oversized_headers_without_growing() {
    let (_t, srv) = start(HttpLimits::default());
    let a = srv.addr();
    let limit = HttpLimits::default().max_header_bytes;

    // Just over the limit: 431, then the connection is closed.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(limit + 1024)
    );
    s.write_all(big.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply); // a reset after the reply is fine
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    // 64 MiB of one header: refused early, not buffered.
    let before = rss_kib();
    let mut s = TcpStream::connect(a).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    let mut sent = 0usize;
    for _ in 0..64 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    drop(s);
    healthz_within(a, Duration::from_secs(1));
    let grew = rss_kib().saturating_sub(before);
    assert!(
        grew < 16 * 1024,
        "RSS grew by {grew} KiB after {sent} bytes of headers"
    );
    healthz_within(a, Duration::from_secs(1));
}

#[test]
fn listener_idle_connections_over_the_cap_neither_block_nor_take_threads() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(30),
        ..HttpLimits::default()
    };
    let cap = limits.max_connections;
    let (_t, srv) = start(limits);
    let a = srv.addr();
    let before = threads();
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(a).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let during = threads();
    healthz_within(a, Duration::from_secs(1));
    assert!(
        during <= before + 16,
        "{} threads for {} idle connections",
        during.saturating_sub(before),
        idle.len()
    );
    // The cap holds: the least recently active made room (300 + the
    // probe - 256), long before their header timeout.
    std::thread::sleep(Duration::from_millis(100));
    let evicted = idle.iter().filter(|s| is_closed_now(s)).count();
    assert!(evicted > idle.len() - cap, "{evicted} closed");
    assert!(evicted <= idle.len() + 1 - cap + 8, "{evicted} closed");
}

#[test]
fn listener_disconnects_slowloris_and_silent_clients() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(500),
        ..HttpLimits::default()
    };
    let (_t, srv) = start(limits);
    let a = srv.addr();
    let mut silent = TcpStream::connect(a).unwrap();
    let mut slow = TcpStream::connect(a).unwrap();
    let t0 = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // One header line every 100 ms: the head never completes.
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut closed = None;
    while t0.elapsed() < Duration::from_secs(3) {
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            closed = Some(t0.elapsed());
            break;
        }
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = Some(t0.elapsed());
                break;
            }
            Ok(_) => {} // a 408: the close follows
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = Some(t0.elapsed());
                break;
            }
        }
    }
    let closed = closed.expect("the slowloris client was never disconnected");
    assert!(closed >= Duration::from_millis(400), "{closed:?}");
    assert!(closed < Duration::from_secs(2), "{closed:?}");
    // The client that never sent a byte is gone too.
    assert!(closed_by_server(&mut silent, Duration::from_secs(1)));
    healthz_within(a, Duration::from_secs(1));
}
