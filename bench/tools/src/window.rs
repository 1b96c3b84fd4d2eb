//! The timeline of one measurement: an unmeasured warm-up, then the measured window,
//! with a CPU snapshot at each edge of the window. Only requests completed inside the
//! window count and have their latency kept. The client loops ask `timeout` how long
//! they may sleep, so the window closes on time even if the server stops answering.

use crate::procstat::{CpuSnapshot, CpuUsage};
use crate::stats::{Latencies, Summary};
use crate::sys::clock_ticks_per_sec;
use crate::Config;
use std::time::{Duration, Instant};

pub struct Window {
    server_pid: Option<u32>,
    warmup_end: Instant,
    duration: Duration,
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
            opened: None,
            closed: None,
            // Sized for ~200k req/s so the vector is not regrown inside the window.
            latencies: Latencies::with_capacity((cfg.duration.as_secs_f64() * 200_000.0).min(5e7) as usize),
        }
    }

    fn snapshot(&self) -> Result<CpuSnapshot, String> {
        CpuSnapshot::take(self.server_pid).map_err(|e| format!("reading CPU counters: {e}"))
    }

    /// Opens or closes the window when its time has come; true once it is closed.
    pub fn tick(&mut self, now: Instant) -> Result<bool, String> {
        match self.opened {
            None if now >= self.warmup_end => self.opened = Some((now, self.snapshot()?)),
            Some((start, _)) if self.closed.is_none() && now >= start + self.duration => self.closed = Some((now, self.snapshot()?)),
            _ => {}
        }
        Ok(self.closed.is_some())
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
        let latency = self.latencies.summary().ok_or("no request completed in the measured window: the server stopped answering")?;
        Ok(Measurement { requests, seconds: (t1 - t0).as_secs_f64(), latency, cpu: CpuUsage::between(&c0, &c1, clock_ticks_per_sec()) })
    }
}
