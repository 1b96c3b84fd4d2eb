//! Opening N TCP connections without blocking, for every stream mode and for `idle`.
//!
//! Connects are non-blocking and at most `MAX_IN_FLIGHT` are pending at once: a burst of
//! 10,000 SYNs would overflow a Python server's listen backlog (asyncio's default is
//! 100) and stall on the kernel's one-second SYN retransmit. With `ping`, a connection
//! counts only once one byte went to the server and came back, which proves the
//! server accepted it (idle-memory numbers are meaningless for connections still
//! waiting in the backlog); that needs an echoing server.

use crate::write_some;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::time::Instant;

const MAX_IN_FLIGHT: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum State {
    Connecting,
    Pinging,
    Done,
}

/// Opens `n` connections to `addr`, registered with `poll` (readable and writable,
/// token = index). Fails on the first refused or reset connection, or at `deadline`.
pub fn connect_all(poll: &mut Poll, addr: SocketAddr, n: usize, deadline: Instant, ping: bool) -> Result<Vec<TcpStream>, String> {
    let mut socks: Vec<TcpStream> = Vec::with_capacity(n);
    let mut states: Vec<State> = Vec::with_capacity(n);
    let mut events = Events::with_capacity(1024);
    let (mut done, mut in_flight) = (0, 0);
    while done < n {
        while socks.len() < n && in_flight < MAX_IN_FLIGHT {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
            poll.registry().register(&mut s, Token(socks.len()), Interest::READABLE | Interest::WRITABLE).map_err(|e| e.to_string())?;
            socks.push(s);
            states.push(State::Connecting);
            in_flight += 1;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("only {done} of {n} connections to {addr} were established before the deadline"));
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Err(e) if e.kind() != ErrorKind::Interrupted => return Err(format!("poll: {e}")),
            _ => {}
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let next = advance(&mut socks[i], states[i], ev, ping).map_err(|e| format!("connection {i} to {addr}: {e}"))?;
            if next == State::Done && states[i] != State::Done {
                done += 1;
                in_flight -= 1;
            }
            states[i] = next;
        }
    }
    Ok(socks)
}

/// One step of a connection's set-up on a readiness event.
fn advance(sock: &mut TcpStream, state: State, ev: &Event, ping: bool) -> io::Result<State> {
    match state {
        State::Connecting => {
            if let Some(e) = sock.take_error()? {
                return Err(e);
            }
            // mio's recipe: a writable event alone does not mean connected; the peer
            // address exists only once the handshake is done.
            match sock.peer_addr() {
                Err(e) if e.kind() == ErrorKind::NotConnected && !ev.is_error() => Ok(State::Connecting),
                Err(e) => Err(e),
                Ok(_) => {
                    sock.set_nodelay(true)?;
                    if !ping {
                        return Ok(State::Done);
                    }
                    if write_some(sock, b"p")? != 1 {
                        return Err(io::Error::other("could not send the ping byte"));
                    }
                    Ok(State::Pinging)
                }
            }
        }
        State::Pinging => {
            let mut byte = [0u8; 2];
            match sock.read(&mut byte) {
                Ok(0) => Err(io::Error::new(ErrorKind::UnexpectedEof, "server closed the connection")),
                Ok(1) if byte[0] == b'p' => Ok(State::Done),
                Ok(_) => Err(io::Error::new(ErrorKind::InvalidData, "the ping byte did not come back unchanged")),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => Ok(State::Pinging),
                Err(e) => Err(e),
            }
        }
        State::Done => Ok(State::Done),
    }
}
