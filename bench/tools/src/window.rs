//! The timeline of one measurement: an unmeasured warm-up, then the measured window,
//! with a CPU snapshot at each edge of the window. Only requests completed inside the
//! window count and have their latency kept. The client loops ask `timeout` how long
//! they may sleep, so the window closes on time even if the server stops answering.
//! With a request limit (`--requests`) the window also closes once that many requests
//! have completed, and `may_send` lets no more than that many be sent.

use crate::procstat::{CpuSnapshot, CpuUsage};
use crate::stats::{Latencies, Summary};
use crate::sys::clock_ticks_per_sec;
use crate::Config;
use std::time::{Duration, Instant};

pub struct Window {
    server_pid: Option<u32>,
    warmup_end: Instant,
    duration: Duration,
    limit: Option<usize>,
    /// Requests sent so far, counted only under a limit.
    sent: usize,
    /// Set when the window opened: its start and the CPU counters then.
    opened: Option<(Instant, CpuSnapshot)>,
    /// Set when it closed.
    closed: Option<(Instant, CpuSnapshot)>,
    latencies: Latencies,
}

/// The result of a closed window.
pub struct Measurement {
    pub requests: usize,
    pub seconds: f64,
    pub latency: Summary,
    pub cpu: CpuUsage,
}

impl Window {
    pub fn new(cfg: &Config, now: Instant) -> Window {
        Window {
            server_pid: cfg.server_pid,
            warmup_end: now + cfg.warmup,
            duration: cfg.duration,
            limit: cfg.requests,
            sent: 0,
            opened: None,
            closed: None,
            // Sized for ~200k req/s (or the limit) so the vector is not regrown inside the window.
            latencies: Latencies::with_capacity(cfg.requests.unwrap_or((cfg.duration.as_secs_f64() * 200_000.0).min(5e7) as usize)),
        }
    }

    fn snapshot(&self) -> Result<CpuSnapshot, String> {
        CpuSnapshot::take(self.server_pid).map_err(|e| format!("reading CPU counters: {e}"))
    }

    /// Opens or closes the window when its time has come; true once it is closed.
    pub fn tick(&mut self, now: Instant) -> Result<bool, String> {
        match self.opened {
            None if now >= self.warmup_end => self.opened = Some((now, self.snapshot()?)),
            Some((start, _)) if self.closed.is_none() && (now >= start + self.duration || self.limit_reached()) => {
                self.closed = Some((now, self.snapshot()?))
            }
            _ => {}
        }
        Ok(self.closed.is_some())
    }

    fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|n| self.latencies.len() >= n)
    }

    /// Whether one more request may be sent (always, without a limit); counts it if so.
    pub fn may_send(&mut self) -> bool {
        match self.limit {
            Some(n) if self.sent >= n => false,
            Some(_) => {
                self.sent += 1;
                true
            }
            None => true,
        }
    }

    /// How long the caller may wait for events before the next edge of the window.
    pub fn timeout(&self, now: Instant) -> Duration {
        let next = match self.opened {
            None => self.warmup_end,
            Some((start, _)) => start + self.duration,
        };
        next.saturating_duration_since(now)
    }

    pub fn measuring(&self) -> bool {
        self.opened.is_some() && self.closed.is_none()
    }

    /// A request sent at `sent` got its whole reply at `now`.
    pub fn complete(&mut self, sent: Instant, now: Instant) {
        if self.measuring() {
            self.latencies.record(now.saturating_duration_since(sent).as_nanos() as u64);
        }
    }

    pub fn finish(self) -> Result<Measurement, String> {
        let (Some((t0, c0)), Some((t1, c1))) = (self.opened, self.closed) else {
            return Err("the measured window never closed".into());
        };
        let requests = self.latencies.len();
        if let Some(n) = self.limit.filter(|&n| requests < n) {
            return Err(format!("only {requests} of the {n} requests asked for completed within --duration"));
        }
        let latency = self.latencies.summary().ok_or("no request completed in the measured window: the server stopped answering")?;
        Ok(Measurement { requests, seconds: (t1 - t0).as_secs_f64(), latency, cpu: CpuUsage::between(&c0, &c1, clock_ticks_per_sec()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(requests: usize, duration: Duration) -> Config {
        Config {
            addr: "127.0.0.1:1".parse().unwrap(),
            conns: 3,
            size: 1,
            warmup: Duration::ZERO,
            duration,
            requests: Some(requests),
            server_pid: None,
        }
    }

    #[test]
    fn a_request_limit_bounds_sends_and_closes_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(&limited(2, Duration::from_secs(3600)), t0);
        assert_eq!((w.may_send(), w.may_send(), w.may_send()), (true, true, false));
        assert!(!w.tick(t0).unwrap());
        w.complete(t0, t0);
        assert!(!w.tick(t0).unwrap());
        w.complete(t0, t0);
        assert!(w.tick(t0).unwrap(), "closes at the limit, long before --duration");
        assert_eq!(w.finish().ok().unwrap().requests, 2);
    }

    #[test]
    fn a_limit_not_reached_in_time_is_an_error() {
        let t0 = Instant::now();
        let mut w = Window::new(&limited(2, Duration::from_millis(1)), t0);
        assert!(!w.tick(t0).unwrap());
        w.complete(t0, t0);
        assert!(w.tick(t0 + Duration::from_secs(1)).unwrap());
        assert!(w.finish().err().unwrap().contains("only 1 of the 2"));
    }
}
