//! The ceiling: a single-threaded mio server doing the least work each workload allows,
//! so a Python loop's result can be read as a fraction of what the machine can do.
//!
//! tcp echoes every byte, http answers each bodiless keep-alive request with a fixed
//! "Hello, World!" response (all replies produced by one read go out in one write), udp
//! echoes each datagram to its sender. Syscalls are kept to the minimum epoll allows:
//! a read that returns less than the buffer means the receive queue was empty, and
//! since epoll raises a new edge-triggered event for every later arrival there is no
//! need to read again until EAGAIN. A write the socket does not fully take is kept and
//! reading stops until the writable event drained it (backpressure).

use crate::http::{split_requests, RESPONSE};
use crate::write_some;
use mio::event::Event;
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Mode {
    Tcp,
    Http,
    Udp,
}

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;
/// An http client that sends this much without a blank line is not sending requests.
const MAX_PARTIAL_REQUEST: usize = 1 << 20;

/// Binds `addr`, calls `listening` with the bound address, then serves until killed.
pub fn run(mode: Mode, addr: SocketAddr, listening: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let mut poll = Poll::new()?;
    if mode == Mode::Udp {
        let mut sock = UdpSocket::bind(addr)?;
        poll.registry().register(&mut sock, LISTENER, Interest::READABLE)?;
        listening(sock.local_addr()?);
        return serve_udp(&mut poll, &sock);
    }
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    listening(listener.local_addr()?);
    serve_stream(&mut poll, &listener, mode == Mode::Http)
}

fn wait(poll: &mut Poll, events: &mut Events) -> io::Result<()> {
    match poll.poll(events, None) {
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
        r => r,
    }
}

fn serve_udp(poll: &mut Poll, sock: &UdpSocket) -> io::Result<()> {
    let mut events = Events::with_capacity(16);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        wait(poll, &mut events)?;
        // Several datagrams may be behind one event, so read until EAGAIN.
        loop {
            match sock.recv_from(&mut buf) {
                // A full send buffer drops the echo, as UDP may; the client resends.
                Ok((n, peer)) => _ = sock.send_to(&buf[..n], peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("echo-server: recv_from: {e}");
                    break;
                }
            }
        }
    }
}

fn serve_stream(poll: &mut Poll, listener: &TcpListener, http: bool) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut replies = Vec::new();
    loop {
        wait(poll, &mut events)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(poll, listener, &mut conns, &mut free)?;
                continue;
            }
            let i = ev.token().0;
            let Some(conn) = conns[i].as_mut() else { continue };
            if !conn.on_event(ev, http, &mut buf, &mut replies) {
                // Closing the fd also removes it from the epoll set.
                conns[i] = None;
                free.push(i);
            }
        }
    }
}

fn accept_all(poll: &Poll, listener: &TcpListener, conns: &mut Vec<Option<Conn>>, free: &mut Vec<usize>) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((mut sock, _)) => {
                _ = sock.set_nodelay(true);
                let i = free.pop().unwrap_or_else(|| {
                    conns.push(None);
                    conns.len() - 1
                });
                poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
                conns[i] = Some(Conn { sock, pending: Vec::new(), inbuf: Vec::new(), scanned: 0 });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // EMFILE and friends: report and wait for the next connection's event.
            Err(e) => {
                eprintln!("echo-server: accept: {e}");
                return Ok(());
            }
        }
    }
}

struct Conn {
    sock: TcpStream,
    /// Reply bytes the socket would not take yet; while non-empty nothing is read.
    pending: Vec<u8>,
    /// http: the start of a request whose blank line has not arrived, and how much of
    /// it was already searched for one.
    inbuf: Vec<u8>,
    scanned: usize,
}

impl Conn {
    /// Handles one readiness event; false when the connection is finished.
    fn on_event(&mut self, ev: &Event, http: bool, buf: &mut [u8], replies: &mut Vec<u8>) -> bool {
        let was_blocked = !self.pending.is_empty();
        if was_blocked {
            match write_some(&mut self.sock, &self.pending) {
                Ok(n) => _ = self.pending.drain(..n),
                Err(_) => return false,
            }
            if !self.pending.is_empty() {
                return true;
            }
        }
        // After backpressure, data that arrived meanwhile had its edge already: read it.
        if was_blocked || ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            return self.read_and_reply(http, buf, replies);
        }
        true
    }

    fn read_and_reply(&mut self, http: bool, buf: &mut [u8], replies: &mut Vec<u8>) -> bool {
        loop {
            let n = match self.sock.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            let reply: &[u8] = if http {
                if !self.http_replies(&buf[..n], replies) {
                    return false;
                }
                replies
            } else {
                &buf[..n]
            };
            match write_some(&mut self.sock, reply) {
                Ok(written) => self.pending.extend_from_slice(&reply[written..]),
                Err(_) => return false,
            }
            if !self.pending.is_empty() || n < buf.len() {
                return true;
            }
        }
    }

    /// Fills `replies` with one response per request completed by `data`; false if the
    /// peer is not speaking HTTP.
    fn http_replies(&mut self, data: &[u8], replies: &mut Vec<u8>) -> bool {
        replies.clear();
        let count = if self.inbuf.is_empty() {
            let (count, used) = split_requests(data, 0);
            self.inbuf.extend_from_slice(&data[used..]);
            count
        } else {
            self.inbuf.extend_from_slice(data);
            let (count, used) = split_requests(&self.inbuf, self.scanned);
            self.inbuf.drain(..used);
            count
        };
        self.scanned = self.inbuf.len();
        for _ in 0..count {
            replies.extend_from_slice(RESPONSE);
        }
        self.inbuf.len() <= MAX_PARTIAL_REQUEST
    }
}
