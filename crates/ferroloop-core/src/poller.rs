//! Readiness polling (epoll through mio) with asyncio's level-triggered semantics,
//! and the waker other threads use to interrupt a sleeping loop.
//!
//! mio registers everything edge-triggered. asyncio's `add_reader` contract is
//! level-triggered: a callback that leaves data unread is called again on the next
//! iteration. `Registrar::rearm` re-registers an fd after it fired; the kernel then
//! reports it again only if it is still ready (epoll re-checks readiness before it
//! reports an item), which is exactly level-triggered behaviour. Rust-owned
//! transports read until `EAGAIN` and do not need it, and neither do the loop's own
//! `sock_*` operations, which retry their syscall until it completes or says
//! `EAGAIN` (`rearm_interest` with `level: false`).
//!
//! An fd whose callbacks all went stays registered ("lingering") instead of being
//! removed at once: `sock_recv`/`sock_sendall` on a connection remove and add their
//! callback once per wait, and a removal followed by an add cost two `epoll_ctl`
//! calls where one `EPOLL_CTL_MOD` does. A lingering fd is removed from epoll when
//! it fires a second time with nobody watching it (the first is usually the next
//! request arriving before the next `sock_recv`); if it was closed meanwhile the kernel dropped
//! it already, and an add for a new file under the same number falls back from
//! `MOD` (`ENOENT`) to `ADD`. A caller that knows the fd still refers to the file it
//! left lingering, and that just saw `EAGAIN` on it, takes it back with no syscall
//! at all (`reclaim`).
//!
//! The pieces are split by who touches them: `Poller` (the epoll wait) is used by the
//! loop thread with the GIL released; `Registrar` (interest changes) is used with the
//! GIL held; `Waker` may be used from any thread.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

/// A map keyed by fd, as the loop keeps several (interests, callbacks, owners) and
/// looks them up on every event. The default SipHash costs ~100 instructions per
/// lookup, a few per request; fds are small integers chosen by the kernel, not by
/// a peer, so a multiplicative hash spreads them well and cannot be attacked.
pub type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;
pub type FdSet = HashSet<RawFd, BuildHasherDefault<FdHasher>>;

#[derive(Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_i32(&mut self, n: i32) {
        // Fibonacci hashing: the high bits (which hashbrown uses for its control
        // bytes) depend on every bit of the fd.
        self.0 = (n as u32 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Token of the waker; fds use their own number as token.
const WAKER_TOKEN: Token = Token(usize::MAX);

/// One fd reported ready. Errors and hang-ups count as both readable and writable,
/// as in `selectors.EpollSelector`, so whichever callback is registered sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
    /// The peer closed its side (`EPOLLRDHUP`/`EPOLLHUP`) or an error is pending, as
    /// of this poll. When it is false, a stream socket whose read returns less than
    /// asked is drained: anything arriving later (data, end of file, a reset) raises
    /// a new edge, since epoll re-queues an item on every wake-up after it was
    /// reported. Stream transports use this to skip the read that would only say
    /// `EAGAIN`, as libuv does.
    pub hup: bool,
}

pub struct Poller {
    poll: Poll,
    events: Events,
}

/// Creates the three parts of one loop's polling machinery.
pub fn new() -> io::Result<(Poller, Registrar, Waker)> {
    let poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
    Ok((
        Poller { poll, events: Events::with_capacity(1024) },
        Registrar { registry, interests: FdMap::default(), lingering: FdMap::default(), owned: FdSet::default() },
        Waker { inner: waker, armed: AtomicBool::new(false) },
    ))
}

impl Poller {
    /// Waits up to `timeout` (`None`: forever) and appends what became ready to `out`.
    /// A signal interrupting the wait is returned as `ErrorKind::Interrupted`, so the
    /// caller can run Python's signal handlers before polling again.
    pub fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<Readiness>) -> io::Result<()> {
        self.poll.poll(&mut self.events, timeout)?;
        for event in self.events.iter() {
            if event.token() == WAKER_TOKEN {
                continue;
            }
            let error = event.is_error();
            out.push(Readiness {
                fd: event.token().0 as RawFd,
                readable: event.is_readable() || event.is_read_closed() || error,
                writable: event.is_writable() || event.is_write_closed() || error,
                hup: event.is_read_closed() || event.is_write_closed() || error,
            });
        }
        Ok(())
    }
}

/// Interest bookkeeping: which fds the loop watches, for reading and/or writing.
pub struct Registrar {
    registry: Registry,
    interests: FdMap<Interest>,
    /// Registered in epoll with this interest, no longer watched (see the module
    /// doc); the flag: it fired once since.
    lingering: FdMap<(Interest, bool)>,
    /// Fds owned by Rust I/O objects (stream transports, listening sockets):
    /// edge-triggered, never re-armed, counted as watched; their directions may
    /// change (`set_owned_interest`).
    owned: FdSet,
}

fn interest_of(readable: bool, writable: bool) -> Option<Interest> {
    match (readable, writable) {
        (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Some(Interest::READABLE),
        (false, true) => Some(Interest::WRITABLE),
        (false, false) => None,
    }
}

impl Registrar {
    /// Sets the interest for `fd`; `(false, false)` stops watching it. Errors from the
    /// kernel (a closed fd: `EBADF`; a regular file: `EPERM`) are returned unchanged.
    pub fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> io::Result<()> {
        let token = Token(fd as usize);
        let old = self.interests.get(&fd).copied();
        match (old, interest_of(readable, writable)) {
            (None, None) => {
                // A lingering fd fired with nobody watching: the second time, stop
                // polling it. It may be closed already, which removed it from epoll.
                if let Some((_, fired)) = self.lingering.get_mut(&fd) {
                    if !std::mem::replace(fired, true) {
                        return Ok(());
                    }
                    self.lingering.remove(&fd);
                    let _ = self.registry.deregister(&mut SourceFd(&fd));
                }
                Ok(())
            }
            (None, Some(new)) => {
                if self.lingering.remove(&fd).is_some() {
                    match self.modify(fd, new) {
                        // Closed since (and perhaps reused): the kernel dropped it.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.registry.register(&mut SourceFd(&fd), token, new)?,
                        other => other?,
                    }
                } else {
                    self.registry.register(&mut SourceFd(&fd), token, new)?;
                }
                self.interests.insert(fd, new);
                Ok(())
            }
            (Some(_), Some(new)) => {
                self.modify(fd, new)?;
                self.interests.insert(fd, new);
                Ok(())
            }
            (Some(old), None) => {
                self.interests.remove(&fd);
                self.lingering.insert(fd, (old, false));
                Ok(())
            }
        }
    }

    /// Watches a lingering fd again with the interest it was left with, without a
    /// syscall. Only for a caller that knows the fd still refers to the same file
    /// and that just got `EAGAIN` from it in every direction asked for: the
    /// registration is edge-triggered, and the next arrival raises a new edge.
    /// False: not lingering with that interest; use `set_interest`.
    pub fn reclaim(&mut self, fd: RawFd, readable: bool, writable: bool) -> bool {
        let Some(wanted) = interest_of(readable, writable) else { return false };
        if self.interests.contains_key(&fd) || self.lingering.get(&fd).map(|l| l.0) != Some(wanted) {
            return false;
        }
        self.lingering.remove(&fd);
        self.interests.insert(fd, wanted);
        true
    }

    /// After `fd` fired: re-registers it with the interest its callbacks still want.
    /// `level`: one of them needs level-triggered behaviour (it may leave data
    /// unread), so an unchanged interest is re-armed all the same; callbacks that
    /// read or write until `EAGAIN` need no re-arming.
    pub fn rearm_interest(&mut self, fd: RawFd, readable: bool, writable: bool, level: bool) -> io::Result<()> {
        if !level && self.interests.get(&fd).copied() == interest_of(readable, writable) && interest_of(readable, writable).is_some() {
            return Ok(());
        }
        self.set_interest(fd, readable, writable)
    }

    /// `EPOLL_CTL_MOD`. An fd closed behind the loop's back (epoll dropped it) gives
    /// `ENOENT` even if its number was reused since: like the stdlib's selector, the
    /// stale registration is kept and the error returned, so a callback meant for
    /// the old file never fires for the new one.
    fn modify(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest)
    }

    /// Re-arms a watched fd after it fired (level-triggered emulation, see module doc).
    pub fn rearm(&mut self, fd: RawFd) {
        if let Some(&interest) = self.interests.get(&fd) {
            let _ = self.modify(fd, interest);
        }
    }

    /// Watches an fd the loop itself drains until `EAGAIN` (the signal wakeup
    /// socket): edge-triggered, never re-armed, and not counted by `watched_count`,
    /// so a loop with only such fds may skip the poll syscall when it has work queued.
    pub fn watch_internal(&mut self, fd: RawFd) -> io::Result<()> {
        self.register_anew(fd, Interest::READABLE)
    }

    /// Registers `fd`, replacing a registration left by a lingering fd or by an fd
    /// number that was closed (while a duplicate kept its file open) and reused.
    fn register_anew(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.lingering.remove(&fd);
        let token = Token(fd as usize);
        match self.registry.register(&mut SourceFd(&fd), token, interest) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.registry.reregister(&mut SourceFd(&fd), token, interest),
            other => other,
        }
    }

    pub fn unwatch_internal(&mut self, fd: RawFd) {
        let _ = self.registry.deregister(&mut SourceFd(&fd));
    }

    /// Watches an fd a Rust I/O object drains until `EAGAIN` on every event
    /// (transports: reading, and writing while they hold refused data; listeners
    /// and read pipes: reading only; write pipes to character devices: writing
    /// only).
    /// Edge-triggered: an event is reported when the fd *becomes* ready, so the
    /// owner must read (write) until the kernel says "would block", or queue
    /// itself to try again, as it would otherwise never hear of that fd again.
    pub fn watch_owned(&mut self, fd: RawFd, readable: bool, writable: bool) -> io::Result<()> {
        let Some(interest) = interest_of(readable, writable) else { return Err(io::Error::from_raw_os_error(libc::EINVAL)) };
        self.register_anew(fd, interest)?;
        self.owned.insert(fd);
        Ok(())
    }

    /// Changes the directions an owned fd is watched in (`EPOLL_CTL_MOD`, still
    /// edge-triggered). The kernel checks the fd's readiness as it changes, so a
    /// direction that is ready already is reported by the next poll: nothing that
    /// happened before the change is missed. For owners that watch writability only
    /// while they have something queued: a datagram socket watched for it is
    /// reported after every send (each freed send buffer wakes its watchers).
    pub fn set_owned_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> io::Result<()> {
        let Some(interest) = interest_of(readable, writable) else { return Err(io::Error::from_raw_os_error(libc::EINVAL)) };
        if !self.owned.contains(&fd) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.modify(fd, interest)
    }

    pub fn unwatch_owned(&mut self, fd: RawFd) {
        if self.owned.remove(&fd) {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }

    pub fn is_watched(&self, fd: RawFd) -> bool {
        self.interests.contains_key(&fd) || self.owned.contains(&fd)
    }

    pub fn watched_count(&self) -> usize {
        self.interests.len() + self.owned.len()
    }
}

/// Reads everything a non-blocking fd holds (the signal wakeup socket: one byte per
/// signal number), stopping at `EAGAIN` or end of file.
pub fn drain_nonblocking(fd: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: `buf` is a valid writable buffer of the length passed.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            return out;
        }
    }
}

/// Wakes the loop from another thread. Writes to the eventfd only when the loop is
/// (about to be) asleep, so a busy loop pays no syscall per cross-thread call.
pub struct Waker {
    inner: mio::Waker,
    armed: AtomicBool,
}

impl Waker {
    /// The loop calls this before it computes its poll timeout and sleeps.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The loop calls this when the poll returns.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Called after queueing work from another thread.
    pub fn wake(&self) -> io::Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.inner.wake()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn waker_interrupts_an_infinite_poll() {
        let (mut poller, _reg, waker) = new().unwrap();
        let waker = Arc::new(waker);
        waker.arm();
        let w = waker.clone();
        let t = std::thread::spawn(move || w.wake().unwrap());
        let mut out = Vec::new();
        let start = Instant::now();
        poller.poll(None, &mut out).unwrap();
        t.join().unwrap();
        assert!(out.is_empty());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_unarmed_waker_does_not_write() {
        let (mut poller, _reg, waker) = new().unwrap();
        waker.wake().unwrap();
        let mut out = Vec::new();
        poller.poll(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn rearm_gives_level_triggered_readiness() {
        let (mut poller, mut reg, _waker) = new().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        reg.set_interest(a.as_raw_fd(), true, false).unwrap();
        b.write_all(b"xy").unwrap();
        let mut out = Vec::new();
        poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out, vec![Readiness { fd: a.as_raw_fd(), readable: true, writable: false, hup: false }]);
        // Data left unread: after re-arming, it is reported again.
        reg.rearm(a.as_raw_fd());
        out.clear();
        poller.poll(Some(Duration::ZERO), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        // Drained: re-arming reports nothing.
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).unwrap(), 2);
        reg.rearm(a.as_raw_fd());
        out.clear();
        poller.poll(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn removed_fds_linger_until_they_fire_and_readding_survives_reuse() {
        let (mut poller, mut reg, _waker) = new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let fd = a.as_raw_fd();
        reg.set_interest(fd, true, false).unwrap();
        reg.set_interest(fd, false, false).unwrap();
        assert!(!reg.is_watched(fd) && reg.watched_count() == 0);
        // Still in epoll: arrivals are reported, and after the second the loop drops it.
        let mut out = Vec::new();
        for byte in [b"x", b"y"] {
            b.write_all(byte).unwrap();
            out.clear();
            poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
            assert_eq!(out.len(), 1);
            reg.set_interest(fd, false, false).unwrap();
        }
        b.write_all(b"z").unwrap();
        out.clear();
        poller.poll(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty());
        // Lingering, then closed: a new file under the same number is added anew.
        reg.set_interest(fd, true, false).unwrap();
        reg.set_interest(fd, false, false).unwrap();
        // dup2 closes `a`'s file and puts another under its number, atomically (waiting
        // for the kernel to hand the lowest free number out again would race with tests
        // running in parallel).
        let (c, mut writer) = UnixStream::pair().unwrap();
        // SAFETY: both fds are open and ours; `fd` is `a`'s, which is forgotten below
        // so that it is not closed twice (the number now holds `c`'s file).
        assert_eq!(unsafe { libc::dup2(c.as_raw_fd(), fd) }, fd);
        std::mem::forget(a);
        // SAFETY: an fd we own, now a second name for `c`'s file.
        let _reused = unsafe { UnixStream::from_raw_fd(fd) };
        drop(c);
        reg.set_interest(fd, true, false).unwrap();
        writer.write_all(b"z").unwrap();
        out.clear();
        poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].fd, fd);
    }

    #[test]
    fn internal_fds_are_not_counted_and_drain_fully() {
        let (mut poller, mut reg, _waker) = new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        reg.watch_internal(a.as_raw_fd()).unwrap();
        assert_eq!(reg.watched_count(), 0);
        b.write_all(&[2, 10, 15]).unwrap();
        let mut out = Vec::new();
        poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(drain_nonblocking(a.as_raw_fd()), vec![2, 10, 15]);
        assert!(drain_nonblocking(a.as_raw_fd()).is_empty());
        reg.unwatch_internal(a.as_raw_fd());
    }

    #[test]
    fn owned_fds_are_edge_triggered_and_counted() {
        let (mut poller, mut reg, _waker) = new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        reg.watch_owned(a.as_raw_fd(), true, true).unwrap();
        assert_eq!(reg.watched_count(), 1);
        let mut out = Vec::new();
        poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out, vec![Readiness { fd: a.as_raw_fd(), readable: false, writable: true, hup: false }]);
        out.clear();
        poller.poll(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty(), "edge-triggered: reported once");
        b.write_all(b"x").unwrap();
        poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert!(out.len() == 1 && out[0].readable);
        out.clear();
        poller.poll(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty(), "unread data is not reported again");
        reg.unwatch_owned(a.as_raw_fd());
        assert_eq!(reg.watched_count(), 0);
    }

    #[test]
    fn adding_a_direction_to_an_owned_fd_reports_it_if_ready_already() {
        let (mut poller, mut reg, _waker) = new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        reg.watch_owned(a.as_raw_fd(), true, false).unwrap();
        let mut out = Vec::new();
        poller.poll(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty(), "writable, but not watched for it");
        // No new edge happens after this: the change itself must report it.
        reg.set_owned_interest(a.as_raw_fd(), true, true).unwrap();
        poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out, vec![Readiness { fd: a.as_raw_fd(), readable: false, writable: true, hup: false }]);
        out.clear();
        reg.set_owned_interest(a.as_raw_fd(), true, false).unwrap();
        b.write_all(b"x").unwrap();
        poller.poll(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out, vec![Readiness { fd: a.as_raw_fd(), readable: true, writable: false, hup: false }]);
        assert!(reg.set_owned_interest(a.as_raw_fd(), false, false).is_err());
        assert!(reg.set_owned_interest(b.as_raw_fd(), true, true).is_err(), "not an owned fd");
    }

    #[test]
    fn closed_fd_errors_and_removal_is_quiet() {
        let (_poller, mut reg, _waker) = new().unwrap();
        // Far above any fd this process opens (a dropped fd's number could be
        // reused at once by a test running in parallel).
        let fd = 1 << 20;
        assert!(reg.set_interest(fd, true, false).is_err());
        assert!(!reg.is_watched(fd));
        let (c, _d) = UnixStream::pair().unwrap();
        reg.set_interest(c.as_raw_fd(), true, true).unwrap();
        let fd = c.as_raw_fd();
        drop(c);
        reg.set_interest(fd, false, false).unwrap();
        assert_eq!(reg.watched_count(), 0);
    }
}
