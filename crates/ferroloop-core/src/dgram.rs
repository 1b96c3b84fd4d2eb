//! Datagram socket syscalls for the loop's UDP transports, free of Python:
//! `recvfrom`/`sendto` with socket addresses for IPv4 and IPv6, and the numeric
//! host text of an address as CPython's socket module gives it.
//!
//! Like `sockio`, each call is one attempt with `MSG_DONTWAIT` (a socket left in
//! blocking mode never blocks the loop thread), errors are the raw `io::Error`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// A socket address as the kernel gives and takes it.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawAddr(family={}, {:?})", self.family(), self.to_std())
    }
}

/// Same family, host, port (and IPv6 flow and scope): the same bytes.
impl PartialEq for RawAddr {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for RawAddr {}

impl RawAddr {
    fn empty() -> Self {
        // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
        RawAddr { storage: unsafe { std::mem::zeroed() }, len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t }
    }

    /// The bytes the kernel wrote (or would be given).
    fn bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is plain data of at least `len` bytes, all initialised
        // (zeroed at creation, then written by the kernel or `from_std`).
        unsafe { std::slice::from_raw_parts((&self.storage as *const libc::sockaddr_storage).cast::<u8>(), len) }
    }

    /// The address family (`AF_UNSPEC` when the sender has no address).
    pub fn family(&self) -> i32 {
        if (self.len as usize) < std::mem::size_of::<libc::sa_family_t>() {
            return libc::AF_UNSPEC;
        }
        self.storage.ss_family as i32
    }

    pub fn from_std(addr: &SocketAddr) -> Self {
        let mut raw = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(&mut raw.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                raw.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut raw.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
                raw.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }

    /// The address as an IPv4/IPv6 socket address, if it is one.
    pub fn to_std(&self) -> Option<SocketAddr> {
        match self.family() {
            libc::AF_INET if self.len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel filled a sockaddr_in (family and length checked).
                let sin = unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if self.len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the kernel filled a sockaddr_in6 (family and length checked).
                let sin6 = unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// The host as CPython's socket module writes it: `getnameinfo(NI_NUMERICHOST)`
    /// (for IPv6 this is where a scoped address gets its `%interface`).
    pub fn numeric_host(&self) -> io::Result<String> {
        let mut host = [0 as libc::c_char; 1025];
        // SAFETY: `storage`/`len` describe a valid address, `host` is writable for its
        // length, no service buffer is asked for.
        let ret = unsafe {
            libc::getnameinfo(
                (&self.storage as *const libc::sockaddr_storage).cast(),
                self.len,
                host.as_mut_ptr(),
                host.len() as libc::socklen_t,
                std::ptr::null_mut(),
                0,
                libc::NI_NUMERICHOST,
            )
        };
        if ret != 0 {
            return Err(io::Error::other(format!("getnameinfo failed ({ret})")));
        }
        // SAFETY: getnameinfo succeeded and wrote a NUL-terminated string.
        let text = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
        Ok(text.to_string_lossy().into_owned())
    }
}

/// One `recvfrom(2)` into `buf`: the datagram's length (0 is a valid, empty
/// datagram) and its sender.
pub fn recvfrom(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, RawAddr)> {
    let mut addr = RawAddr::empty();
    // SAFETY: `buf` is writable for its length; `addr.storage`/`addr.len` are valid
    // for the kernel to write the sender's address.
    let ret = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
            &mut addr.len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((ret as usize, addr))
}

/// One `sendto(2)` of `buf` to `addr`, or `send(2)` on a connected socket (`None`).
pub fn sendto(fd: RawFd, buf: &[u8], addr: Option<&RawAddr>) -> io::Result<usize> {
    crate::sockio::note_send();
    let (ptr, len) = match addr {
        Some(a) => ((&a.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>(), a.len),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `buf` is readable for its length; `ptr`/`len` are a valid address or null/0.
    let ret = unsafe { libc::sendto(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL, ptr, len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockio::would_block;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn v4_round_trip_with_sender_address() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = RawAddr::from_std(&a.local_addr().unwrap());
        assert_eq!(sendto(b.as_raw_fd(), b"hello", Some(&to)).unwrap(), 5);
        assert_eq!(sendto(b.as_raw_fd(), b"", Some(&to)).unwrap(), 0);
        let mut buf = [0u8; 64];
        let (n, from) = recvfrom(a.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from.to_std().unwrap(), b.local_addr().unwrap());
        assert_eq!(from.numeric_host().unwrap(), "127.0.0.1");
        assert_eq!(from, RawAddr::from_std(&b.local_addr().unwrap()), "what the kernel wrote equals what Rust builds");
        assert_ne!(from, to);
        let (n, _) = recvfrom(a.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, 0, "an empty datagram");
        assert!(would_block(&recvfrom(a.as_raw_fd(), &mut buf).unwrap_err()));
    }

    #[test]
    fn v6_round_trip() {
        let Ok(a) = UdpSocket::bind("[::1]:0") else { return };
        let b = UdpSocket::bind("[::1]:0").unwrap();
        let to = RawAddr::from_std(&a.local_addr().unwrap());
        sendto(b.as_raw_fd(), b"x", Some(&to)).unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = recvfrom(a.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, 1);
        assert_eq!(from.family(), libc::AF_INET6);
        assert_eq!(from.to_std().unwrap().port(), b.local_addr().unwrap().port());
        assert_eq!(from.numeric_host().unwrap(), "::1");
    }

    #[test]
    fn connected_send_and_refused() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        a.connect(("127.0.0.1", port)).unwrap();
        sendto(a.as_raw_fd(), b"x", None).unwrap();
        // The ICMP port unreachable comes back as ECONNREFUSED on a later call.
        a.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        let err = a.recv(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}
