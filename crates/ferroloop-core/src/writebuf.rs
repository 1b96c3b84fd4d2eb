//! The write side of a stream transport, free of Python: a queue of pending bytes
//! flushed with one system call per attempt (a vectored `sendmsg(2)`, or `send(2)`
//! when the slices are one or small enough to join), plus `shutdown(SHUT_WR)`.
//!
//! A transport first tries to send what `write()` is given directly; only what the
//! kernel did not take lands here. Small writes are coalesced into the tail chunk
//! (so a stream of tiny writes does not become a long iovec list), large ones keep
//! their own chunk. Sends use `MSG_NOSIGNAL | MSG_DONTWAIT`: a vanished peer gives
//! `EPIPE` instead of killing the process, and a blocking socket never blocks.
//!
//! The data path allocates nothing in the steady state: the iovec array lives on
//! the stack, and the buffers of small chunks, once sent, go to a small per-thread
//! pool the next small write takes from (a request/response connection would
//! otherwise pay a malloc and a free per reply).
//!
//! A queue may also hold, by reference instead of by copy, immutable buffers their
//! owner keeps alive (`push_kept`): the Python layer's `bytes`, queued by a
//! transport that collects an iteration's writes, are then sent without ever being
//! copied. The keeper type is a parameter, so this module stays free of Python.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use crate::sockio;

/// Chunks smaller than this are appended to the tail chunk instead of queued alone.
const COALESCE_MAX: usize = 16 * 1024;
/// `push_kept` holds buffers by reference only while fewer chunks are queued.
const KEPT_MAX: usize = 8;
/// iovecs per `sendmsg` (Linux `IOV_MAX` is 1024; a few dozen is plenty).
const MAX_IOV: usize = 64;
/// Sent chunk buffers kept per thread for reuse (each at most `COALESCE_MAX`
/// bytes of capacity, so the pool stays under 256 KiB).
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer holding a copy of `data`, from the pool when it has one.
fn take_buffer(data: &[u8]) -> Vec<u8> {
    let mut buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    buf.extend_from_slice(data);
    buf
}

/// Gives a sent chunk's buffer back to the pool (small ones only).
fn recycle(mut buf: Vec<u8>) {
    if buf.capacity() <= COALESCE_MAX {
        buf.clear();
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        });
    }
}

/// A queued chunk: a copy the queue owns, or an immutable buffer held by reference.
#[derive(Debug)]
enum Chunk<K> {
    Copy(Vec<u8>),
    Kept(K),
}

impl<K: AsRef<[u8]>> Chunk<K> {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Copy(v) => v,
            Chunk::Kept(k) => k.as_ref(),
        }
    }

    fn recycle(self) {
        if let Chunk::Copy(v) = self {
            recycle(v);
        }
    }
}

/// Pending bytes in order. `K` holds a buffer queued by reference (`push_kept`);
/// `Vec<u8>` for a queue that only ever copies.
#[derive(Debug)]
pub struct WriteQueue<K = Vec<u8>> {
    chunks: VecDeque<Chunk<K>>,
    /// Bytes of the head chunk already sent.
    head_sent: usize,
    len: usize,
}

impl<K> Default for WriteQueue<K> {
    fn default() -> Self {
        WriteQueue { chunks: VecDeque::new(), head_sent: 0, len: 0 }
    }
}

/// The syscall that sends a batch of slices: `sendmsg` for sockets (no SIGPIPE),
/// `writev` for pipes and character devices, where `sendmsg` does not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vectored {
    Sendmsg,
    Writev,
}

impl Vectored {
    /// One syscall of up to `MAX_IOV` non-empty slices, in order, with the iovec
    /// array on the stack. Returns how much the kernel took.
    fn send<'a>(self, fd: RawFd, bufs: impl Iterator<Item = &'a [u8]>) -> io::Result<usize> {
        let mut iov = [MaybeUninit::<libc::iovec>::uninit(); MAX_IOV];
        let mut count = 0;
        for b in bufs.filter(|b| !b.is_empty()).take(MAX_IOV) {
            iov[count].write(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() });
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let iov = iov.as_ptr().cast::<libc::iovec>();
        sockio::note_send();
        // SAFETY: the first `count` (>= 1) entries of `iov` are initialised,
        // outlive the call, and each points to a live readable slice of the given
        // length; a zeroed msghdr is valid (no name, no control data); slices are
        // gathered into `joined` only when they total at most its size.
        let ret = unsafe {
            match self {
                Vectored::Writev => libc::writev(fd, iov, count as libc::c_int),
                // One slice (a reply written in one call): `send` hands the kernel
                // a plain buffer, sparing `sendmsg`'s copy-in of the header and
                // the iovec array.
                Vectored::Sendmsg if count == 1 => {
                    let one = *iov;
                    libc::send(fd, one.iov_base, one.iov_len, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                }
                // A few small slices (a header and a body): copied into one stack
                // buffer, they go out by `send` too, which costs the kernel less
                // than taking an iovec array apart.
                Vectored::Sendmsg if small_total(iov, count) => {
                    let mut joined = [MaybeUninit::<u8>::uninit(); GATHER_MAX];
                    let mut len = 0;
                    for i in 0..count {
                        let part = *iov.add(i);
                        std::ptr::copy_nonoverlapping(part.iov_base as *const u8, joined.as_mut_ptr().add(len).cast::<u8>(), part.iov_len);
                        len += part.iov_len;
                    }
                    libc::send(fd, joined.as_ptr().cast(), len, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                }
                Vectored::Sendmsg => {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = iov.cast_mut();
                    msg.msg_iovlen = count as _;
                    libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                }
            }
        };
        usize::try_from(ret).map_err(|_| io::Error::last_os_error())
    }
}

/// Slices totalling at most this many bytes are sent by copying them together
/// (`Vectored::send`).
const GATHER_MAX: usize = 1024;

/// Whether the `count` iovecs at `iov` total at most `GATHER_MAX` bytes.
///
/// SAFETY: `iov` must point to `count` initialised iovecs.
#[inline]
unsafe fn small_total(iov: *const libc::iovec, count: usize) -> bool {
    let mut total = 0;
    for i in 0..count {
        total += (*iov.add(i)).iov_len;
        if total > GATHER_MAX {
            return false;
        }
    }
    true
}

/// One `sendmsg(2)` of the given slices, in order. Returns how much the kernel took.
pub fn send_vectored(fd: RawFd, bufs: &[&[u8]]) -> io::Result<usize> {
    match bufs {
        [one] if !one.is_empty() => sockio::send(fd, one), // a reply written in one call
        _ => Vectored::Sendmsg.send(fd, bufs.iter().copied()),
    }
}

/// One `writev(2)` of the given slices, in order (pipes and character devices).
/// Returns how much the kernel took.
pub fn write_vectored(fd: RawFd, bufs: &[&[u8]]) -> io::Result<usize> {
    Vectored::Writev.send(fd, bufs.iter().copied())
}

/// `shutdown(fd, SHUT_WR)`: send end of file to the peer.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: a plain syscall on an integer fd.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl<K: AsRef<[u8]>> WriteQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pending bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `data`.
    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if data.len() < COALESCE_MAX {
            // Never grow the head chunk while part of it is sent: only the tail,
            // and only while it stays small.
            let tail_ok = self.chunks.len() > 1 || self.head_sent == 0;
            if let Some(Chunk::Copy(tail)) = self.chunks.back_mut() {
                if tail.len() < COALESCE_MAX && tail_ok {
                    tail.extend_from_slice(data);
                    return;
                }
            }
        }
        self.chunks.push_back(Chunk::Copy(if data.len() < COALESCE_MAX { take_buffer(data) } else { data.to_vec() }));
    }

    /// Queues `kept`'s bytes without copying them (a reply, or a header and a body
    /// written apart), unless the tail chunk is a copy that can take them or the
    /// queue already holds `KEPT_MAX` chunks: then they are copied like `push`, so
    /// many small writes still coalesce into few iovecs.
    pub fn push_kept(&mut self, kept: K) {
        let data = kept.as_ref();
        let tail_takes_it = matches!(self.chunks.back(), Some(Chunk::Copy(_))) && data.len() < COALESCE_MAX;
        if data.is_empty() || tail_takes_it || self.chunks.len() >= KEPT_MAX {
            self.push(data);
            return;
        }
        self.len += data.len();
        self.chunks.push_back(Chunk::Kept(kept));
    }

    pub fn clear(&mut self) {
        self.chunks.drain(..).for_each(Chunk::recycle);
        self.head_sent = 0;
        self.len = 0;
    }

    /// Marks `n` bytes from the front as sent.
    pub fn consume(&mut self, mut n: usize) {
        debug_assert!(n <= self.len);
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let head = self.chunks.front().expect("length accounted");
            let left = head.bytes().len() - self.head_sent;
            if n >= left {
                n -= left;
                if let Some(sent) = self.chunks.pop_front() {
                    sent.recycle();
                }
                self.head_sent = 0;
            } else {
                self.head_sent += n;
                n = 0;
            }
        }
    }

    /// The pending bytes as slices, in order (the first possibly partly sent).
    fn iter_slices(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().enumerate().map(|(i, c)| if i == 0 { &c.bytes()[self.head_sent..] } else { c.bytes() })
    }

    /// The first `MAX_IOV` pending slices (what one flush attempt sends).
    #[cfg(test)]
    fn slices(&self) -> Vec<&[u8]> {
        self.iter_slices().take(MAX_IOV).collect()
    }

    /// Sends as much as the socket takes, until it would block or the queue is empty.
    /// Returns the bytes sent; "would block" is not an error (the caller waits for
    /// writability); any other error is returned with the queue left as it was after
    /// the last successful send.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<usize> {
        self.flush_with(fd, Vectored::Sendmsg)
    }

    /// `flush` through another vectored write (`Vectored::Writev` for pipes).
    pub fn flush_with(&mut self, fd: RawFd, how: Vectored) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            let attempt = match (how, self.chunks.front()) {
                // One chunk (a reply written in one call): `send` it, with no
                // iovec array to fill from the queue.
                (Vectored::Sendmsg, Some(head)) if self.chunks.len() == 1 => sockio::send(fd, &head.bytes()[self.head_sent..]),
                _ => how.send(fd, self.iter_slices()),
            };
            let n = match attempt {
                Ok(n) => n,
                // Edge-triggered callers must stop only on a real "would block".
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if sockio::would_block(&e) => break,
                Err(e) => return Err(e),
            };
            self.consume(n);
            total += n;
            if n == 0 {
                break;
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn push_consume_keeps_order_and_length() {
        let mut q: WriteQueue = WriteQueue::new();
        q.push(b"hello ");
        q.push(b"world");
        q.push(&vec![b'x'; 40_000]);
        q.push(b"!");
        assert_eq!(q.len(), 6 + 5 + 40_000 + 1);
        q.consume(3);
        let joined: Vec<u8> = q.slices().concat();
        assert_eq!(&joined[..8], b"lo world");
        assert_eq!(joined.len(), q.len());
        q.consume(8 + 40_000);
        assert_eq!(q.slices().concat(), b"!");
        q.consume(1);
        assert!(q.is_empty());
        assert!(q.slices().is_empty());
    }

    #[test]
    fn kept_buffers_are_held_by_reference_until_a_copy_can_take_them() {
        use std::rc::Rc;
        let header: Rc<[u8]> = Rc::from(&b"header "[..]);
        let body: Rc<[u8]> = Rc::from(&b"body"[..]);
        let mut q: WriteQueue<Rc<[u8]>> = WriteQueue::new();
        q.push_kept(header.clone());
        q.push_kept(body.clone());
        assert_eq!((Rc::strong_count(&header), Rc::strong_count(&body)), (2, 2), "held, uncopied");
        q.push(b"!");
        q.push_kept(Rc::from(&b"?"[..])); // the tail is a copy: coalesced into it
        assert_eq!(q.len(), 13);
        assert_eq!(q.slices(), vec![&b"header "[..], &b"body"[..], &b"!?"[..]]);
        q.consume(3);
        assert_eq!(q.slices().concat(), b"der body!?");
        q.consume(4);
        assert_eq!(Rc::strong_count(&header), 1, "released once sent");
        assert_eq!(q.slices().concat(), b"body!?");
        q.push_kept(Rc::from(&b""[..]));
        assert_eq!(q.len(), 6);
        q.clear();
        assert!(q.is_empty());
        assert_eq!(Rc::strong_count(&body), 1, "released when cleared");
    }

    #[test]
    fn a_long_run_of_kept_writes_coalesces_past_kept_max() {
        use std::rc::Rc;
        let mut q: WriteQueue<Rc<[u8]>> = WriteQueue::new();
        for i in 0..100u8 {
            q.push_kept(Rc::from(&[i][..]));
        }
        assert_eq!(q.slices().len(), KEPT_MAX + 1);
        assert_eq!(q.slices().concat(), (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn the_partly_sent_head_is_not_extended() {
        let mut q: WriteQueue = WriteQueue::new();
        q.push(b"abc");
        q.consume(1);
        q.push(b"def");
        assert_eq!(q.slices().concat(), b"bcdef");
    }

    #[test]
    fn flush_sends_until_full_and_loses_nothing() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q: WriteQueue = WriteQueue::new();
        let mut expected = Vec::new();
        for i in 0..400u32 {
            let chunk: Vec<u8> = (0..(i * 97 % 30_000 + 1)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            q.push(&chunk);
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut rounds = 0;
        while !q.is_empty() {
            q.flush(a.as_raw_fd()).unwrap();
            b.set_nonblocking(true).unwrap();
            loop {
                match b.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
            rounds += 1;
            assert!(rounds < 10_000);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn one_large_chunk_goes_out_in_order_over_partial_sends() {
        // A single queued chunk is sent by `send` from its unsent part: many
        // partial sends (the socket buffer is far smaller) must resume where the
        // last one stopped.
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let mut q: WriteQueue = WriteQueue::new();
        q.push(&data);
        let (mut got, mut buf, mut partial) = (Vec::new(), vec![0u8; 65536], 0);
        while !q.is_empty() {
            q.flush(a.as_raw_fd()).unwrap();
            partial += usize::from(!q.is_empty());
            while let Ok(n) = b.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            assert!(partial < 10_000);
        }
        while let Ok(n) = b.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        assert!(partial > 1, "the test needs partial sends");
        assert_eq!(got, data);
    }

    #[test]
    fn flush_to_a_closed_peer_is_epipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut q: WriteQueue = WriteQueue::new();
        q.push(b"data");
        assert_eq!(q.flush(a.as_raw_fd()).unwrap_err().raw_os_error(), Some(libc::EPIPE));
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn flush_with_writev_fills_a_pipe_then_reports_epipe() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
        let mut q: WriteQueue = WriteQueue::new();
        q.push(&vec![7u8; 1 << 20]);
        let sent = q.flush_with(fds[1], Vectored::Writev).unwrap();
        assert!(sent > 0 && !q.is_empty(), "a pipe holds less than 1 MiB");
        assert_eq!(sent + q.len(), 1 << 20);
        // SAFETY: our own read end, closed once; SIGPIPE is ignored in test binaries
        // (Rust's runtime sets it), so the write below fails with EPIPE.
        unsafe { libc::close(fds[0]) };
        assert_eq!(q.flush_with(fds[1], Vectored::Writev).unwrap_err().raw_os_error(), Some(libc::EPIPE));
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(fds[1]) };
    }

    #[test]
    fn small_slices_gathered_or_not_arrive_in_order() {
        // Up to GATHER_MAX bytes in all are copied together and sent by `send`;
        // one byte more goes by `sendmsg`. Both must deliver the same stream.
        for total in [GATHER_MAX - 1, GATHER_MAX, GATHER_MAX + 1] {
            let (a, mut b) = UnixStream::pair().unwrap();
            let data: Vec<u8> = (0..total).map(|i| (i * 7) as u8).collect();
            let parts: Vec<&[u8]> = data.chunks(100).collect();
            assert_eq!(send_vectored(a.as_raw_fd(), &parts).unwrap(), total);
            drop(a);
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            assert_eq!(got, data, "{total} bytes");
        }
    }

    #[test]
    fn vectored_send_and_shutdown() {
        let (a, mut b) = UnixStream::pair().unwrap();
        assert_eq!(send_vectored(a.as_raw_fd(), &[b"ab", b"", b"cd"]).unwrap(), 4);
        shutdown_write(a.as_raw_fd()).unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abcd");
    }
}
