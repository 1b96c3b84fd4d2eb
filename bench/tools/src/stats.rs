//! Latency percentiles over the measured window. Every request's latency is kept (a
//! 5 s run at 100k req/s is 4 MB), sorted once at the end, and read with the
//! nearest-rank definition, so p99 is a latency some request really had.

/// Latencies in nanoseconds, one per completed request.
#[derive(Default)]
pub struct Latencies {
    ns: Vec<u64>,
}

/// p50, p99 and the maximum, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Latencies {
        Latencies { ns: Vec::with_capacity(n) }
    }

    pub fn record(&mut self, ns: u64) {
        self.ns.push(ns);
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// None when nothing was recorded.
    pub fn summary(mut self) -> Option<Summary> {
        self.ns.sort_unstable();
        let us = |p| percentile(&self.ns, p).map(|ns| ns as f64 / 1e3);
        Some(Summary { p50_us: us(50.0)?, p99_us: us(99.0)?, max_us: us(100.0)? })
    }
}

/// Nearest-rank percentile of an ascending slice: the smallest value with at least
/// `p`% of the values at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_converts_to_microseconds() {
        let mut l = Latencies::default();
        for ns in [9000, 1000, 5000, 3000] {
            l.record(ns);
        }
        assert_eq!(l.summary(), Some(Summary { p50_us: 3.0, p99_us: 9.0, max_us: 9.0 }));
        assert_eq!(Latencies::default().summary(), None);
    }
}
