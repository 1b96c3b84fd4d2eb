//! Non-blocking socket syscalls for the loop's `sock_*` operations, free of Python.
//!
//! Each call is one attempt: it either completes, or reports "would block"
//! (`EAGAIN`/`EWOULDBLOCK`, or `EINTR`), in which case the caller waits for readiness
//! and tries again, exactly as asyncio's selector loop does with `BlockingIOError` and
//! `InterruptedError`. `recv`/`send` pass `MSG_DONTWAIT`, so even a socket left in
//! blocking mode never blocks the loop thread (which holds the GIL while it calls
//! them); `send` also passes `MSG_NOSIGNAL`, so a peer that went away gives `EPIPE`
//! even in a process that did not ignore `SIGPIPE`. Errors are returned as the raw
//! `io::Error` so the Python layer can build asyncio's exceptions (same errno, same
//! `strerror` text) from them.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sends of every kind made through this crate (stream, datagram, pipe,
/// `sendfile`), by every thread. A loop compares it across a batch of callbacks to
/// learn whether the batch wrote anything another fd of the same loop may already
/// be able to read.
static SENDS: AtomicU64 = AtomicU64::new(0);

/// The count of sends so far (see `SENDS`).
#[inline]
pub fn sends() -> u64 {
    SENDS.load(Ordering::Relaxed)
}

/// Counts one send, made or attempted.
#[inline]
pub(crate) fn note_send() {
    SENDS.fetch_add(1, Ordering::Relaxed);
}

/// Lets glibc's malloc serve buffers of up to `size` bytes from the heap, and keep
/// up to twice that free at the heap's top.
///
/// Reads of up to 256 KiB go straight into a `bytes` of that size, shrunk to what
/// arrived. glibc serves an allocation that large with `mmap` until a chunk of that
/// size has been freed whole, which raises its (dynamic) mmap threshold past it, and
/// its trim threshold (free memory at the heap top it keeps instead of returning it
/// with `brk`) to twice that; shrunk buffers never are, so without this every large
/// read paid mmap + mremap + munmap and a page fault per 4 KiB (a 100 KiB Protocol
/// echo on one connection: 74 µs of server CPU per request instead of 18). Freeing
/// one such chunk does once what any program that frees a large buffer does; other
/// allocators ignore it. The caller picks `size` (see the loop's `READ_HEAP_BLOCK`).
pub fn prefer_heap_for_reads(size: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain malloc/free pair; black_box keeps the pair from being
        // optimised away.
        unsafe { libc::free(std::hint::black_box(libc::malloc(size))) }
    });
}

/// True for the errors after which asyncio waits for readiness and retries.
#[inline]
pub fn would_block(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) || err.raw_os_error() == Some(libc::EWOULDBLOCK)
}

#[inline]
fn cvt(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// One `recv(2)` into `buf`; `Ok(0)` is end of stream (or an empty `buf`).
#[inline]
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the call.
    cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// One `read(2)` into `buf` (pipes, FIFOs, ptys; sockets too): no `MSG_DONTWAIT`
/// here, so the fd must be non-blocking (asyncio's pipe transports make it so).
#[inline]
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the call.
    cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// One `send(2)` of `buf`; returns how much the kernel took (possibly less).
#[inline]
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    note_send();
    // SAFETY: `buf` is a valid readable region of `buf.len()` bytes for the call.
    cvt(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
}

/// The pending error of a socket (`SO_ERROR`), which also clears it: how a
/// non-blocking `connect` reports its outcome once the socket turns writable.
pub fn take_socket_error(fd: RawFd) -> io::Result<i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes and `len` holds the size of `err`.
    let ret = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(err)
}

/// One `sendfile(2)` of up to `count` bytes of `in_fd` starting at `offset` (the
/// file's own position is not used nor moved). `Ok(0)` means end of file.
pub fn sendfile(out_fd: RawFd, in_fd: RawFd, offset: u64, count: u64) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let count = usize::try_from(count).unwrap_or(usize::MAX).min(isize::MAX as usize);
    note_send();
    // SAFETY: `off` is a valid, writable off_t for the duration of the call.
    cvt(unsafe { libc::sendfile(out_fd, in_fd, &mut off, count) })
}

/// Size of the file behind `fd` (`st_size` of `fstat`).
pub fn file_size(fd: RawFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`; it is read only on success.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let size = unsafe { st.assume_init() }.st_size;
    Ok(size.max(0) as u64)
}

/// Moves the file position of `fd` to `offset` (`lseek(SEEK_SET)`).
pub fn seek_to(fd: RawFd, offset: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a plain syscall on an integer fd; no memory is passed.
    if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The C library's message for `errno`, as Python puts in `OSError.strerror`.
pub fn strerror(errno: i32) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length; the libc crate binds the
    // XSI-compliant `strerror_r`, which writes a NUL-terminated string into it.
    let ret = unsafe { libc::strerror_r(errno, buf.as_mut_ptr().cast(), buf.len()) };
    if ret != 0 {
        return format!("Unknown error {errno}");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn every_kind_of_send_is_counted() {
        // Other tests send concurrently: the count only ever grows by at least ours.
        let (a, b) = UnixStream::pair().unwrap();
        let before = sends();
        send(a.as_raw_fd(), b"x").unwrap();
        assert!(sends() >= before + 1);
        let before = sends();
        crate::writebuf::send_vectored(a.as_raw_fd(), &[b"y", b"z"]).unwrap();
        assert!(sends() >= before + 1);
        let before = sends();
        crate::dgram::sendto(b.as_raw_fd(), b"w", None).unwrap();
        assert!(sends() >= before + 1);
    }

    #[test]
    fn recv_reports_would_block_then_data_then_eof() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 16];
        let err = recv(a.as_raw_fd(), &mut buf).unwrap_err();
        assert!(would_block(&err), "{err:?}");
        b.write_all(b"hello").unwrap();
        assert_eq!(recv(a.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        drop(b);
        assert_eq!(recv(a.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn recv_on_a_blocking_socket_does_not_block() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 4];
        assert!(would_block(&recv(a.as_raw_fd(), &mut buf).unwrap_err()));
    }

    #[test]
    fn send_fills_the_buffer_then_would_block() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut total = 0usize;
        let err = loop {
            match send(a.as_raw_fd(), &chunk) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
            assert!(total < 64 * 1024 * 1024, "socket buffer never filled");
        };
        assert!(would_block(&err));
        let mut got = vec![0u8; 4096];
        let n = b.read(&mut got).unwrap();
        assert!(n > 0 && got[..n].iter().all(|&x| x == 7));
    }

    #[test]
    fn send_to_a_closed_peer_is_epipe_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send(a.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn closed_fd_is_ebadf() {
        let mut buf = [0u8; 1];
        assert_eq!(recv(-1, &mut buf).unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(send(-1, b"x").unwrap_err().raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn socket_error_reports_a_refused_connect() {
        // A port nothing listens on: bind, read the port, close.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = socket2_like_nonblocking_connect(port);
        // Wait for the connect to finish (bounded).
        let mut pfd = libc::pollfd { fd: s, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
        assert_eq!(take_socket_error(s).unwrap(), libc::ECONNREFUSED);
        assert_eq!(take_socket_error(s).unwrap(), 0, "SO_ERROR is cleared by reading it");
        // SAFETY: `s` is ours and closed once.
        unsafe { libc::close(s) };
    }

    fn socket2_like_nonblocking_connect(port: u16) -> RawFd {
        // SAFETY: plain socket syscalls on a fresh fd and a local sockaddr_in.
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(s >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_port = port.to_be();
            addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            let r = libc::connect(s, (&addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32);
            assert!(r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS));
            s
        }
    }

    #[test]
    fn sendfile_honours_offset_and_count_and_leaves_the_position() {
        let mut path = std::env::temp_dir();
        path.push(format!("ferroloop-sockio-{}", std::process::id()));
        let mut f = std::fs::File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        f.write_all(b"0123456789").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file_size(f.as_raw_fd()).unwrap(), 10);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let sent = sendfile(client.as_raw_fd(), f.as_raw_fd(), 3, 4).unwrap();
        assert_eq!(sent, 4);
        assert_eq!(sendfile(client.as_raw_fd(), f.as_raw_fd(), 10, 4).unwrap(), 0, "EOF");
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"3456");
        assert_eq!(f.stream_position().unwrap(), 0, "sendfile with an offset keeps the position");
        seek_to(f.as_raw_fd(), 7).unwrap();
        assert_eq!(f.stream_position().unwrap(), 7);
    }

    #[test]
    fn sendfile_from_a_non_file_fails() {
        let (a, b) = UnixStream::pair().unwrap();
        let err = sendfile(a.as_raw_fd(), b.as_raw_fd(), 0, 10).unwrap_err();
        assert!(!would_block(&err), "{err:?}");
    }

    #[test]
    fn read_works_on_a_pipe() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
        let mut buf = [0u8; 8];
        assert!(would_block(&read(fds[0], &mut buf).unwrap_err()));
        // SAFETY: writes 3 bytes from a live buffer to our own pipe, then closes it.
        unsafe {
            libc::write(fds[1], b"abc".as_ptr().cast(), 3);
            libc::close(fds[1]);
        }
        assert_eq!(read(fds[0], &mut buf).unwrap(), 3);
        assert_eq!(read(fds[0], &mut buf).unwrap(), 0);
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(fds[0]) };
    }

    #[test]
    fn strerror_matches_the_c_library() {
        assert_eq!(strerror(libc::ECONNREFUSED), "Connection refused");
        assert_eq!(strerror(libc::EBADF), "Bad file descriptor");
    }
}
