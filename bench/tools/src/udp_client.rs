//! The `udp` load: one connected UDP socket per `--conns`, each with one datagram
//! outstanding. A datagram not answered within `RESEND_AFTER` counts as lost and is
//! sent again; its latency still runs from the first send, as a user would see it.
//!
//! The first (up to) 8 bytes of each datagram carry a sequence number so that a late
//! echo of an earlier datagram is recognised (counted in `errors`) instead of being
//! taken for the current reply; everything else must come back unchanged.

use crate::report::Report;
use crate::window::Window;
use crate::{pattern, Config};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const RESEND_AFTER: Duration = Duration::from_millis(200);
const SEQ_BYTES: usize = 8;

struct Slot {
    sock: UdpSocket,
    msg: Vec<u8>,
    seq: u64,
    first_sent: Instant,
    last_sent: Instant,
}

/// What a received datagram was.
enum Reply {
    Current,
    Stale,
}

impl Slot {
    fn send_next(&mut self, now: Instant) -> Result<(), String> {
        self.seq += 1;
        let k = SEQ_BYTES.min(self.msg.len());
        self.msg[..k].copy_from_slice(&self.seq.to_le_bytes()[..k]);
        self.first_sent = now;
        self.send(now)
    }

    fn send(&mut self, now: Instant) -> Result<(), String> {
        self.last_sent = now;
        match self.sock.send(&self.msg) {
            Ok(n) if n == self.msg.len() => Ok(()),
            Ok(n) => Err(format!("sent only {n} of {} bytes", self.msg.len())),
            // A full send buffer is a loss like any other: the resend timer covers it.
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(format!("send: {e}")),
        }
    }

    fn classify(&self, data: &[u8]) -> Result<Reply, String> {
        let k = SEQ_BYTES.min(self.msg.len());
        if data.len() != self.msg.len() || data[k..] != self.msg[k..] {
            return Err(format!("the echo differs from what was sent ({} bytes for {})", data.len(), self.msg.len()));
        }
        Ok(if data[..k] == self.msg[..k] { Reply::Current } else { Reply::Stale })
    }

    /// Reads until the current reply or EAGAIN; Some(first send time) on the reply.
    fn receive(&mut self, buf: &mut [u8], stale: &mut u64) -> Result<Option<Instant>, String> {
        loop {
            match self.sock.recv(buf) {
                Ok(n) => match self.classify(&buf[..n])? {
                    Reply::Current => return Ok(Some(self.first_sent)),
                    Reply::Stale => *stale += 1,
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
    }
}

pub fn run(cfg: &Config) -> Result<Report<'static>, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let local: IpAddr = if cfg.addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let now = Instant::now();
    let mut slots = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let mut sock = UdpSocket::bind(SocketAddr::new(local, 0)).map_err(|e| format!("udp bind: {e}"))?;
        sock.connect(cfg.addr).map_err(|e| format!("udp connect to {}: {e}", cfg.addr))?;
        poll.registry().register(&mut sock, Token(i), Interest::READABLE).map_err(|e| e.to_string())?;
        slots.push(Slot { sock, msg: pattern(cfg.size), seq: 0, first_sent: now, last_sent: now });
    }
    let mut window = Window::new(cfg, now);
    for s in &mut slots {
        s.send_next(now)?;
    }
    let (mut lost, mut stale) = (0u64, 0u64);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let fail = |i: usize, e: String| format!("udp socket {i} to {}: {e}", cfg.addr);
    loop {
        let now = Instant::now();
        if window.tick(now)? {
            break;
        }
        let resend_at = slots.iter().map(|s| s.last_sent + RESEND_AFTER).min().unwrap_or(now);
        let timeout = window.timeout(now).min(resend_at.saturating_duration_since(now));
        match poll.poll(&mut events, Some(timeout)) {
            Err(e) if e.kind() != ErrorKind::Interrupted => return Err(format!("poll: {e}")),
            _ => {}
        }
        let measuring = window.measuring();
        let mut stale_now = 0;
        for ev in events.iter() {
            let i = ev.token().0;
            let slot = &mut slots[i];
            if let Some(sent) = slot.receive(&mut buf, &mut stale_now).map_err(|e| fail(i, e))? {
                let now = Instant::now();
                window.complete(sent, now);
                slot.send_next(now).map_err(|e| fail(i, e))?;
            }
        }
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if now >= slot.last_sent + RESEND_AFTER {
                lost += measuring as u64;
                slot.send(now).map_err(|e| fail(i, e))?;
            }
        }
        stale += if measuring { stale_now } else { 0 };
    }
    Ok(Report { mode: "udp", conns: cfg.conns, size: cfg.size, m: window.finish()?, errors: stale, lost: Some(lost) })
}
