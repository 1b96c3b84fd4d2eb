//! The `tcp` and `http` load: N connections on one mio thread, each with exactly one
//! request outstanding (send, wait for the whole reply, verify it, send the next).
//!
//! tcp sends `--size` bytes of the shared pattern and expects the same bytes back;
//! http sends a keep-alive GET and expects one complete 200 response. Any other reply,
//! a refused, reset or closed connection is an error that ends the run: a wrong server
//! must never produce a number. As in the server, a short read means the socket was
//! drained (epoll raises a new edge for every later arrival), so no read is wasted on
//! EAGAIN after each reply.

use crate::connect::connect_all;
use crate::http::{parse_response, Parsed, REQUEST};
use crate::report::Report;
use crate::window::Window;
use crate::{pattern, write_some, Config};
use mio::net::TcpStream;
use mio::{Events, Poll};
use std::io::{ErrorKind, Read};
use std::time::Instant;

const READ_BUF: usize = 256 * 1024;

struct Conn {
    sock: TcpStream,
    sent: usize,
    /// tcp: echoed bytes received and verified so far.
    received: usize,
    /// http: the response received so far.
    inbuf: Vec<u8>,
    started: Instant,
}

impl Conn {
    fn start(&mut self, request: &[u8], now: Instant) -> Result<(), String> {
        self.sent = 0;
        self.received = 0;
        self.started = now;
        self.send(request)
    }

    fn send(&mut self, request: &[u8]) -> Result<(), String> {
        self.sent += write_some(&mut self.sock, &request[self.sent..]).map_err(|e| format!("write: {e}"))?;
        Ok(())
    }

    /// Reads what has arrived; Some(send time) once the reply is whole and verified.
    fn receive(&mut self, request: &[u8], http: bool, buf: &mut [u8]) -> Result<Option<Instant>, String> {
        loop {
            let n = match self.sock.read(buf) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let complete = if http { self.take_http(&buf[..n])? } else { self.take_echo(&buf[..n], request)? };
            if complete {
                if self.sent < request.len() {
                    return Err("the server replied before the whole request was sent".into());
                }
                return Ok(Some(self.started));
            }
            if n < buf.len() {
                return Ok(None);
            }
        }
    }

    fn take_echo(&mut self, data: &[u8], request: &[u8]) -> Result<bool, String> {
        let expected = &request[self.received..];
        if data.len() > expected.len() || data != &expected[..data.len()] {
            return Err(format!("the echo differs from what was sent (at byte {} of {})", self.received, request.len()));
        }
        self.received += data.len();
        Ok(self.received == request.len())
    }

    fn take_http(&mut self, data: &[u8]) -> Result<bool, String> {
        self.inbuf.extend_from_slice(data);
        match parse_response(&self.inbuf)? {
            Parsed::Incomplete => Ok(false),
            Parsed::Complete { status, len } => {
                if status != 200 {
                    return Err(format!("HTTP status {status}"));
                }
                if len != self.inbuf.len() {
                    return Err(format!("{} bytes after the response, none were asked for", self.inbuf.len() - len));
                }
                self.inbuf.clear();
                Ok(true)
            }
        }
    }
}

/// Runs the tcp (`http` false) or http load and returns its report.
pub fn run(cfg: &Config, http: bool) -> Result<Report<'static>, String> {
    let t0 = Instant::now();
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let socks = connect_all(&mut poll, cfg.addr, cfg.conns, cfg.deadline(t0), false)?;
    let request = if http { REQUEST.to_vec() } else { pattern(cfg.size) };
    let now = Instant::now();
    // `sent` at the full length: nothing to send until `start` (which a request limit
    // may never allow on some connections).
    let idle = request.len();
    let mut conns: Vec<Conn> =
        socks.into_iter().map(|sock| Conn { sock, sent: idle, received: 0, inbuf: Vec::new(), started: now }).collect();
    let mut window = Window::new(cfg, now);
    for c in &mut conns {
        if window.may_send() {
            c.start(&request, now)?;
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let now = Instant::now();
        if window.tick(now)? {
            break;
        }
        match poll.poll(&mut events, Some(window.timeout(now))) {
            Err(e) if e.kind() != ErrorKind::Interrupted => return Err(format!("poll: {e}")),
            _ => {}
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            let result = (|| {
                if ev.is_writable() && c.sent < request.len() {
                    c.send(&request)?;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    if let Some(sent) = c.receive(&request, http, &mut buf)? {
                        let now = Instant::now();
                        window.complete(sent, now);
                        if window.may_send() {
                            c.start(&request, now)?;
                        }
                    }
                }
                Ok::<(), String>(())
            })();
            result.map_err(|e| format!("connection {i} to {}: {e}", cfg.addr))?;
        }
    }
    Ok(Report { mode: if http { "http" } else { "tcp" }, conns: cfg.conns, size: cfg.size, m: window.finish()?, errors: 0, lost: None })
}
