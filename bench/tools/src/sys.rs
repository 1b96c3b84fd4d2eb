//! Process setup both tools need before they open a socket: pinning to one CPU (on
//! these VMs a wake-up across CPUs costs ~25 µs, so the driver puts server and client
//! on the same one), raising the open-file limit (10,000 idle connections), and
//! restoring default signal dispositions (a driver that ignores SIGINT would otherwise
//! pass that on through exec, and "die on SIGTERM/SIGINT" is the server's contract).

use std::io;

/// Restricts the calling process (both tools are single-threaded) to CPU `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cpu {cpu} out of range")));
    }
    // SAFETY: cpu_set_t is plain data for which all-zeroes is the empty set; CPU_SET is
    // given an index checked against CPU_SETSIZE above; sched_setaffinity only reads
    // `set` for the size we pass.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read or write exactly one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Puts SIGINT and SIGTERM back to "terminate the process".
pub fn default_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing SIG_DFL runs no handler code of ours; it cannot fail for
        // these two valid, catchable signals.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Clock ticks per second, the unit of /proc/stat.
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The shared start-up of both tools: default signals, the file limit raised, and the
/// optional pin. Errors are fatal: a measurement on the wrong CPU is worse than none.
pub fn setup(cpu: Option<usize>) -> Result<(), String> {
    default_signals();
    raise_nofile_limit().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu).map_err(|e| format!("pinning to cpu {cpu}: {e}"))?;
    }
    Ok(())
}
