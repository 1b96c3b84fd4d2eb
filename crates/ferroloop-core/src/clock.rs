//! The loop's clock: `CLOCK_MONOTONIC` in seconds, exactly what `time.monotonic()`
//! reads on Linux, so deadlines that libraries compute with `time.monotonic()` agree
//! with `loop.time()`. (A private clock drifts from it; see shared pitfalls.)

/// Seconds since an arbitrary fixed point, as `time.monotonic()` returns them.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on
    // the platforms we support, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The clock's resolution in seconds; asyncio treats timers due within one tick of
/// "now" as due. Read once: it is asked for on every loop iteration.
pub fn resolution() -> f64 {
    static RESOLUTION: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RESOLUTION.get_or_init(|| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: as above.
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(resolution() > 0.0 && resolution() < 0.01);
    }
}
