//! The benchmark suite's native tools, shared by two binaries: `loadgen` (the client
//! every loop is measured with, so the client is identical and never Python) and
//! `echo-server` (a single-threaded mio server: the machine's ceiling for the same
//! workloads).
//!
//! Pure pieces (argument parsing, HTTP framing, percentiles, `/proc` parsing) live in
//! their own modules so that `cargo test -p ferroloop-bench` covers them without
//! sockets; the socket-driving modules are `server`, `connect`, `stream_client`,
//! `udp_client` and `window` (the warm-up / measured-window bookkeeping).

pub mod args;
pub mod connect;
pub mod http;
pub mod procstat;
pub mod report;
pub mod server;
pub mod stats;
pub mod stream_client;
pub mod sys;
pub mod udp_client;
pub mod window;

use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The deterministic payload both tools agree on: byte `i` of a message is a function
/// of `i`, so a shifted, truncated or reordered echo fails verification.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31).wrapping_add(i >> 8).wrapping_add(7)) as u8).collect()
}

/// Writes as much of `data` as the socket takes now; returns how much that was.
pub fn write_some<W: Write>(sock: &mut W, data: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < data.len() {
        match sock.write(&data[off..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}

/// What `loadgen` was asked to do, shared by the client modules.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub conns: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// `--requests N`: measure exactly N requests from the first one on (no warm-up);
    /// `duration` is then only the time allowed for them. Makes the server's work a
    /// fixed amount, which instruction counting (bench/callgrind.py) needs.
    pub requests: Option<usize>,
    pub server_pid: Option<u32>,
}

impl Config {
    /// Past this instant (measured from start) every mode gives up instead of hanging.
    pub fn deadline(&self, start: Instant) -> Instant {
        start + self.warmup + self.duration + Duration::from_secs(10)
    }
}
