//! `DatagramTransportCore`: the Rust half of ferroloop's datagram transport (UDP over
//! IPv4/IPv6, and Unix datagram sockets), with the semantics of asyncio's
//! `_SelectorDatagramTransport`.
//!
//! As for stream transports (see `transport`), the loop owns the fd for the
//! transport's lifetime, edge-triggered, for reading, and for writing only while
//! datagrams are queued (a datagram socket watched for writability is woken after
//! every send: `LoopCore::watch_writable`); a poll event is one
//! `Ready::Io` entry handled here: datagrams are received until `EAGAIN` (up to a
//! cap per event, then the transport queues itself again), each handed to
//! `datagram_received(data, addr)`. `sendto` sends at once; what the kernel refuses
//! with "would block" is queued as whole datagrams and sent when the socket turns
//! writable, with asyncio's flow control (`pause_writing`/`resume_writing`).
//!
//! Addresses: for IPv4/IPv6 sockets the syscalls and address conversion are Rust
//! (`ferroloop_core::dgram`); an address Rust does not parse as numeric (a host
//! name, `'<broadcast>'`, a scoped `'fe80::1%eth0'`, a bad value) goes through the
//! socket's own `sendto`, so name resolution and errors are the socket module's.
//! Unix datagram sockets use the socket's `recvfrom`/`sendto` (their addresses are
//! paths, abstract names or `None`), still driven by the loop's readiness here.
//!
//! Error semantics are asyncio's: an `OSError` from a send or receive (an ICMP
//! "port unreachable" arriving as `ECONNREFUSED`) goes to `error_received`; anything
//! else closes the transport through the exception handler; an exception raised by
//! `datagram_received` or `error_received` reaches the loop's exception handler and
//! leaves the transport open, as in asyncio, where they run in the reader callback.
//!
//! The Python class `ferroloop._udp._DatagramTransport` wraps this object (same
//! layout reason as the stream transport's) and is what protocols see (`owner`).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use ferroloop_core::dgram::{self, RawAddr};
use ferroloop_core::sockio;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple};

use crate::buffer::ReadBuf;
use crate::event_loop::{IoOwner, LoopCore};
use crate::flow_control::{self, is_fatal, logger};
use crate::gil_cell::{GilCell, GilFlag};
use crate::io_context;
use crate::reading::{self, ProtocolMethod, ReadSwitch};
use crate::sock::{is_retry, os_error};

/// asyncio's `max_size` for one `recvfrom` of a datagram transport.
const MAX_SIZE: usize = 256 * 1024;
/// Datagrams received per readiness event before the transport yields.
const MAX_DATAGRAMS_PER_EVENT: usize = 32;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

static RECV_SCRATCH: GilCell<Vec<u8>> = GilCell::new(Vec::new());

/// Where a queued datagram goes.
enum Target {
    /// The socket is connected: `send`.
    Connected,
    /// A numeric IPv4/IPv6 address, converted once.
    Native(RawAddr),
    /// Anything else: the socket's own `sendto` resolves (or rejects) it.
    Py(Py<PyAny>),
}

struct DgramState {
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// Its `datagram_received`, kept while it is the protocol.
    datagram_received: ProtocolMethod,
    protocol_connected: bool,
    owner: Option<Py<PyAny>>,
    /// asyncio's `_address`: the `remote_addr` the endpoint was created for.
    address: Option<Py<PyAny>>,
    buffer: VecDeque<(Vec<u8>, Target)>,
    buffer_size: usize,
    read: ReadSwitch,
    conn_lost: u32,
    registered: bool,
    protocol_paused: bool,
    high: usize,
    low: usize,
    peers: PeerCache,
    /// The context its I/O runs in (`io_context`), as a stream transport's.
    context: Option<Py<PyAny>>,
}

/// How many senders' addresses a transport remembers (`PeerCache`).
const PEER_CACHE_SIZE: usize = 16;

/// The last few senders' addresses, each with the tuple `datagram_received` was
/// given for it. A peer's datagrams then share one tuple instead of formatting its
/// IP address for each, and `sendto(data, addr)` with a tuple received here sends
/// without parsing it back. Tuples are immutable, so sharing one is not observable
/// beyond `is`.
#[derive(Default)]
struct PeerCache {
    peers: Vec<(RawAddr, Py<PyAny>)>,
    /// The entry replaced next once full (round robin).
    next: usize,
}

impl PeerCache {
    fn tuple_for(&self, py: Python<'_>, raw: &RawAddr) -> Option<Py<PyAny>> {
        self.peers.iter().find(|(r, _)| r == raw).map(|(_, t)| t.clone_ref(py))
    }

    fn raw_for(&self, addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
        self.peers.iter().find(|(_, t)| t.is(addr)).map(|(r, _)| *r)
    }

    /// Remembers `raw` as `tuple`; returns the entry it replaced, to be dropped
    /// after the state borrow.
    fn insert(&mut self, raw: RawAddr, tuple: Py<PyAny>) -> Option<Py<PyAny>> {
        if self.peers.len() < PEER_CACHE_SIZE {
            self.peers.push((raw, tuple));
            return None;
        }
        let old = std::mem::replace(&mut self.peers[self.next], (raw, tuple));
        self.next = (self.next + 1) % PEER_CACHE_SIZE;
        Some(old.1)
    }
}

#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct DatagramTransportCore {
    fd: RawFd,
    family: i32,
    /// The socket has a peer (`getpeername()` succeeded): `sendto` uses `send`.
    connected: bool,
    /// IPv4/IPv6: syscalls and addresses in Rust; else the socket's methods.
    native: bool,
    /// 3.13+: empty datagrams are sent, and each queued one counts 8 header bytes.
    send_empty: bool,
    header_bytes: usize,
    event_loop: Py<LoopCore>,
    /// The fd is watched for writability too: only while datagrams are queued.
    write_watched: GilFlag,
    state: GilCell<DgramState>,
}

/// A received datagram and its sender's address.
type Datagram<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

/// What failed in one send or receive attempt.
enum SendErr {
    WouldBlock,
    /// An OSError: for `error_received`.
    Os(PyErr),
    /// Anything else: fatal for the transport.
    Other(PyErr),
}

/// A received sender address as CPython's socket module gives it.
fn py_address<'py>(py: Python<'py>, addr: &RawAddr) -> PyResult<Bound<'py, PyAny>> {
    match addr.to_std() {
        Some(SocketAddr::V4(a)) => Ok((a.ip().to_string(), a.port()).into_pyobject(py)?.into_any()),
        Some(SocketAddr::V6(a)) => {
            let host = addr.numeric_host().map_err(|e| PyOSError::new_err(e.to_string()))?;
            Ok((host, a.port(), a.flowinfo(), a.scope_id()).into_pyobject(py)?.into_any())
        }
        None => Ok(py.None().into_bound(py)),
    }
}

/// A numeric IPv4/IPv6 address tuple as a socket address; `None` for anything the
/// socket module should see itself.
fn native_target(family: i32, addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
    let tuple = addr.cast::<PyTuple>().ok()?;
    let n = tuple.len();
    let host_obj = tuple.get_item(0).ok()?;
    let host = host_obj.cast::<PyString>().ok()?.to_str().ok()?;
    let port: u16 = tuple.get_item(1).ok()?.extract().ok()?;
    match family {
        libc::AF_INET if n == 2 => {
            let ip: Ipv4Addr = host.parse().ok()?;
            Some(RawAddr::from_std(&SocketAddr::V4(SocketAddrV4::new(ip, port))))
        }
        libc::AF_INET6 if (2..=4).contains(&n) => {
            let ip: Ipv6Addr = host.parse().ok()?;
            let flowinfo: u32 = if n > 2 { tuple.get_item(2).ok()?.extract().ok()? } else { 0 };
            let scope_id: u32 = if n > 3 { tuple.get_item(3).ok()?.extract().ok()? } else { 0 };
            if flowinfo > 0xfffff {
                return None; // the socket module's OverflowError
            }
            Some(RawAddr::from_std(&SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope_id))))
        }
        _ => None,
    }
}

fn is_bytes_like(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>()
}

impl DatagramTransportCore {
    fn loop_any<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.event_loop.bind(py).clone().into_any()
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop.get().state.with(py, |s| s.debug)
    }

    pub fn owner(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.with(py, |s| s.owner.as_ref().map(|o| o.clone_ref(py))).unwrap_or_else(|| py.None())
    }

    /// The context dispatch runs this transport's I/O in (see `io_context::run_in`).
    #[inline]
    pub fn io_context<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state.with(py, |s| io_context::bind(py, &s.context))
    }

    fn protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.with(py, |s| s.protocol.as_ref().map(|o| o.clone_ref(py))).unwrap_or_else(|| py.None())
    }

    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.sock.as_ref().map(|o| o.clone_ref(py)))
    }

    fn queue_io(slf: &Bound<'_, Self>, readable: bool, writable: bool) {
        let py = slf.py();
        slf.get().event_loop.get().state.with(py, |s| s.queue_attempt(IoOwner::Datagram(slf.clone().unbind()), readable, writable));
    }

    fn call_soon(&self, py: Python<'_>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        crate::scheduling::call_soon(self.event_loop.bind(py), callback, Some(args), None, "call_soon").map(drop)
    }

    /// Called by the loop when the fd is ready (or when we queued ourselves).
    pub fn on_io(slf: &Bound<'_, Self>, readable: bool, writable: bool) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let iteration = me.event_loop.get().iteration.get();
        if readable && me.state.with(py, |s| s.read.can_read_event(iteration) && s.conn_lost == 0) {
            Self::read_ready(slf)?;
        }
        // Watched with an empty queue: the last datagram's send failed, and what
        // follows a drained queue (resume_writing, a pending close) is still due.
        let watched = me.write_watched.get();
        if writable && me.state.with(py, |s| s.sock.is_some() && (watched || !s.buffer.is_empty())) {
            Self::write_ready(slf)?;
        }
        Ok(())
    }

    /// One receive: `Ok(Ok(None))` would block.
    fn recv_one<'py>(&self, py: Python<'py>) -> PyResult<Result<Option<Datagram<'py>>, SendErr>> {
        if self.native {
            let got = RECV_SCRATCH.with(py, |buf| {
                if buf.len() < MAX_SIZE {
                    buf.resize(MAX_SIZE, 0);
                }
                loop {
                    match dgram::recvfrom(self.fd, &mut buf[..MAX_SIZE]) {
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                        // A bytes object runs no Python code to be made.
                        other => break other.map(|(n, addr)| (PyBytes::new(py, &buf[..n]), addr)),
                    }
                }
            });
            return match got {
                Ok((data, addr)) => Ok(Ok(Some((data.into_any(), self.sender_tuple(py, &addr)?)))),
                Err(e) if sockio::would_block(&e) => Ok(Ok(None)),
                Err(e) => Ok(Err(SendErr::Os(os_error(&e)))),
            };
        }
        let Some(sock) = self.sock(py) else { return Ok(Ok(None)) };
        match sock.bind(py).call_method1(intern!(py, "recvfrom"), (MAX_SIZE,)) {
            Ok(pair) => {
                let (data, addr): (Bound<'py, PyAny>, Bound<'py, PyAny>) = pair.extract()?;
                Ok(Ok(Some((data, addr))))
            }
            Err(e) if is_fatal(py, &e) => Err(e),
            Err(e) if is_retry(py, &e) => Ok(Ok(None)),
            Err(e) if e.is_instance_of::<PyOSError>(py) => Ok(Err(SendErr::Os(e))),
            Err(e) => Ok(Err(SendErr::Other(e))),
        }
    }

    /// The sender's address as Python sees it, shared with its earlier datagrams'.
    fn sender_tuple<'py>(&self, py: Python<'py>, raw: &RawAddr) -> PyResult<Bound<'py, PyAny>> {
        if let Some(tuple) = self.state.with(py, |s| s.peers.tuple_for(py, raw)) {
            return Ok(tuple.into_bound(py));
        }
        let tuple = py_address(py, raw)?;
        if !tuple.is_none() {
            let replaced = self.state.with(py, |s| s.peers.insert(*raw, tuple.clone().unbind()));
            drop(replaced.map(|t| t.into_bound(py)));
        }
        Ok(tuple)
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        for _ in 0..MAX_DATAGRAMS_PER_EVENT {
            let (go, protocol, kept) = me.state.with(py, |s| {
                let go = s.read.can_read() && s.conn_lost == 0;
                (go, s.protocol.as_ref().map(|p| p.clone_ref(py)), s.datagram_received.cached(py))
            });
            if !go {
                return Ok(());
            }
            let protocol = protocol.unwrap_or_else(|| py.None());
            let result = match me.recv_one(py)? {
                Ok(None) | Err(SendErr::WouldBlock) => return Ok(()),
                Ok(Some((data, addr))) => me.datagram_received(protocol.bind(py), kept).and_then(|m| m.call1((data, addr))),
                Err(SendErr::Os(exc)) => protocol.bind(py).call_method1(intern!(py, "error_received"), (exc.into_value(py),)),
                Err(SendErr::Other(exc)) => {
                    return Self::fatal_error(slf, exc, "Fatal read error on datagram transport");
                }
            };
            if let Err(e) = result {
                // asyncio runs these in the reader callback: the error reaches the
                // loop's handler and the transport stays open. More datagrams may be
                // waiting, with no new edge to announce them.
                Self::queue_io(slf, true, false);
                return Err(e);
            }
        }
        Self::queue_io(slf, true, false);
        Ok(())
    }

    /// `protocol.datagram_received`: `kept` (see `ProtocolMethod`), or looked up now.
    fn datagram_received<'py>(&self, protocol: &Bound<'py, PyAny>, kept: Option<Py<PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let name = intern!(protocol.py(), "datagram_received");
        reading::protocol_method(&self.state, protocol, kept, name, |s| (&s.protocol, &mut s.datagram_received))
    }

    /// One send attempt of `data` to `target`.
    fn send_one(&self, py: Python<'_>, data: &[u8], target: &Target) -> Result<(), SendErr> {
        let raw = match target {
            Target::Connected => None,
            Target::Native(a) => Some(a),
            Target::Py(addr) => {
                let Some(sock) = self.sock(py) else { return Ok(()) };
                let bytes = PyBytes::new(py, data);
                return match sock.bind(py).call_method1(intern!(py, "sendto"), (bytes, addr.bind(py))) {
                    Ok(_) => Ok(()),
                    Err(e) if is_retry(py, &e) => Err(SendErr::WouldBlock),
                    Err(e) if e.is_instance_of::<PyOSError>(py) => Err(SendErr::Os(e)),
                    Err(e) => Err(SendErr::Other(e)),
                };
            }
        };
        loop {
            match dgram::sendto(self.fd, data, raw) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if sockio::would_block(&e) => return Err(SendErr::WouldBlock),
                Err(e) => return Err(SendErr::Os(os_error(&e))),
            }
        }
    }

    fn target_for(&self, addr: &Bound<'_, PyAny>) -> Target {
        if self.connected {
            return Target::Connected;
        }
        if self.native {
            let known = self.state.with(addr.py(), |s| s.peers.raw_for(addr));
            if let Some(raw) = known.or_else(|| native_target(self.family, addr)) {
                return Target::Native(raw);
            }
        }
        Target::Py(addr.clone().unbind())
    }

    fn error_received(&self, py: Python<'_>, exc: PyErr) -> PyResult<()> {
        self.protocol(py).bind(py).call_method1(intern!(py, "error_received"), (exc.into_value(py),)).map(drop)
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        loop {
            let Some((data, target)) = me.state.with(py, |s| {
                let item = s.buffer.pop_front();
                if let Some((d, _)) = &item {
                    s.buffer_size -= d.len() + me.header_bytes;
                }
                item
            }) else {
                break;
            };
            match me.send_one(py, &data, &target) {
                Ok(()) => {}
                Err(SendErr::WouldBlock) => {
                    me.state.with(py, |s| {
                        s.buffer_size += data.len() + me.header_bytes;
                        s.buffer.push_front((data, target));
                    });
                    break;
                }
                Err(SendErr::Os(exc)) => {
                    drop(target);
                    // No new edge comes (the socket is writable): look again next
                    // iteration, as asyncio's writer callback would, for the rest of
                    // the queue or, if this was the last, what follows its end.
                    Self::queue_io(slf, false, true);
                    return me.error_received(py, exc);
                }
                Err(SendErr::Other(exc)) => {
                    drop(target);
                    if is_fatal(py, &exc) {
                        return Err(exc);
                    }
                    return Self::fatal_error(slf, exc, "Fatal write error on datagram transport");
                }
            }
        }
        if me.state.with(py, |s| s.buffer.is_empty()) {
            // Failing, it only leaves the fd watched for writability: a wake-up more
            // per send, never a lost one.
            let _ = me.watch_writable(py, false);
        }
        Self::maybe_resume_protocol(slf)?;
        let finish = me.state.with(py, |s| {
            if s.buffer.is_empty() && s.read.closing && s.conn_lost == 0 {
                s.conn_lost += 1;
                true
            } else {
                false
            }
        });
        if finish {
            Self::call_connection_lost(slf, py.None().into_bound(py))?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: OSErrors are only logged in debug mode, anything
    /// else goes to the exception handler; then the transport is closed at once.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let owner = me.owner(py);
        if exc.is_instance_of::<PyOSError>(py) {
            if me.debug(py) {
                let kwargs = PyDict::new(py);
                kwargs.set_item("exc_info", exc.value(py))?;
                logger(py)?.call_method("debug", ("%r: %s", owner, message), Some(&kwargs))?;
            }
        } else {
            let ctx = PyDict::new(py);
            ctx.set_item("message", message)?;
            ctx.set_item("exception", exc.value(py))?;
            ctx.set_item("transport", owner)?;
            ctx.set_item("protocol", me.protocol(py))?;
            me.loop_any(py).call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        }
        Self::force_close(slf, Some(exc))
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let dropped = slf.get().state.with(py, |s| {
            if s.conn_lost > 0 {
                return None;
            }
            s.buffer_size = 0;
            s.read.close();
            s.conn_lost += 1;
            Some(std::mem::take(&mut s.buffer))
        });
        let Some(dropped) = dropped else { return Ok(()) };
        drop(dropped);
        let exc = exc.map_or_else(|| py.None().into_bound(py), |e| e.into_value(py).into_bound(py).into_any());
        let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
        slf.get().call_soon(py, cb, PyTuple::new(py, [exc])?)
    }

    /// Watches the fd for writability while datagrams are queued (see
    /// `LoopCore::watch_writable`).
    fn watch_writable(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        self.event_loop.get().watch_writable(py, self.fd, &self.write_watched, on)
    }

    /// Stops watching the fd (before the socket is closed: the number may be reused).
    fn unregister(&self, py: Python<'_>) {
        if !self.state.with(py, |s| std::mem::replace(&mut s.registered, false)) {
            return;
        }
        self.event_loop.get().release_owned(py, self.fd, self);
    }

    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let (connected, protocol) = me.state.with(py, |s| (s.protocol_connected, s.protocol.as_ref().map(|p| p.clone_ref(py))));
        let result = match protocol {
            Some(p) if connected => p.bind(py).call_method1(intern!(py, "connection_lost"), (exc,)).map(drop),
            _ => Ok(()),
        };
        me.unregister(py);
        let taken = me.state.with(py, |s| {
            (
                s.sock.take(),
                s.protocol.take(),
                s.datagram_received.take(),
                s.owner.take(),
                std::mem::take(&mut s.buffer),
                std::mem::take(&mut s.peers),
            )
        });
        let close_result = match &taken.0 {
            Some(sock) => sock.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        drop(taken);
        result.and(close_result)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let pause = slf.get().state.with(py, |s| flow_control::should_pause(s.buffer_size, s.high, &mut s.protocol_paused));
        if pause {
            slf.get().tell_protocol(py, intern!(py, "pause_writing"))?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let resume = slf.get().state.with(py, |s| flow_control::should_resume(s.buffer_size, s.low, &mut s.protocol_paused));
        if resume {
            slf.get().tell_protocol(py, intern!(py, "resume_writing"))?;
        }
        Ok(())
    }

    fn tell_protocol(&self, py: Python<'_>, method: &Bound<'_, PyString>) -> PyResult<()> {
        flow_control::tell_protocol(py, &self.loop_any(py), self.owner(py), self.protocol(py), method)
    }
}

#[pymethods]
impl DatagramTransportCore {
    #[new]
    #[pyo3(signature = (event_loop, sock, protocol, owner, address, connected, send_empty=false, header_bytes=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, LoopCore>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        owner: Bound<'_, PyAny>,
        address: Option<Bound<'_, PyAny>>,
        connected: bool,
        send_empty: bool,
        header_bytes: usize,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        let family: i32 = sock.getattr(intern!(py, "family"))?.extract()?;
        Ok(DatagramTransportCore {
            fd,
            family,
            connected,
            native: family == libc::AF_INET || family == libc::AF_INET6,
            send_empty,
            header_bytes,
            event_loop: event_loop.unbind(),
            write_watched: GilFlag::new(false),
            state: GilCell::new(DgramState {
                sock: Some(sock.unbind()),
                protocol: Some(protocol.unbind()),
                datagram_received: ProtocolMethod::default(),
                protocol_connected: true,
                owner: Some(owner.unbind()),
                address: address.filter(|a| !a.is_none()).map(Bound::unbind),
                buffer: VecDeque::new(),
                buffer_size: 0,
                read: ReadSwitch::default(),
                conn_lost: 0,
                registered: false,
                protocol_paused: false,
                high: flow_control::DEFAULT_HIGH,
                low: flow_control::DEFAULT_LOW,
                peers: PeerCache::default(),
                context: Some(io_context::copy_current(py)?),
            }),
        })
    }

    /// Hands the fd to the loop (edge-triggered, readable; writable while datagrams
    /// are queued).
    fn _register(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let fd = me.fd;
        // Readable only: see `watch_writable`.
        let replaced =
            me.event_loop.get().state.with(py, |s| s.register_owner(fd, IoOwner::Datagram(slf.clone().unbind()), true, false))?;
        me.state.with(py, |s| s.registered = true);
        drop(replaced);
        Ok(())
    }

    /// asyncio's `call_soon(self._add_reader, ...)` after `connection_made`.
    fn _start_reading(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let iteration = slf.get().event_loop.get().iteration.get();
        let start = slf.get().state.with(py, |s| s.read.start(iteration));
        if start {
            Self::queue_io(slf, true, false);
        }
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc)
    }

    /// `sendto(data, addr=None)`. The transport's `sendto` calls this directly when
    /// given positional arguments only (`fastcall::transport_sendto`); other calls
    /// come here through PyO3, for its binding and its errors.
    #[pyo3(signature = (data, addr=None))]
    pub(crate) fn sendto(slf: &Bound<'_, Self>, data: Bound<'_, PyAny>, addr: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if !is_bytes_like(&data) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        if !me.send_empty && !data.is_truthy()? {
            return Ok(());
        }
        let mut addr = addr.unwrap_or_else(|| py.None().into_bound(py));
        let address = me.state.with(py, |s| s.address.as_ref().map(|a| a.clone_ref(py)));
        let address = match address {
            Some(a) if a.bind(py).is_truthy()? => Some(a.into_bound(py)),
            _ => None,
        };
        if let Some(address) = &address {
            if !addr.is_none() && !addr.is(address) && !addr.eq(address)? {
                return Err(PyValueError::new_err(format!("Invalid address: must be None or {}", address.str()?)));
            }
            addr = address.clone();
        }
        let (conn_lost, gone) = me.state.with(py, |s| (s.conn_lost, s.sock.is_none()));
        if conn_lost > 0 && (address.is_some() || gone) {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            me.state.with(py, |s| s.conn_lost += 1);
            return Ok(());
        }
        let target = me.target_for(&addr);
        // The buffer view is released before any protocol callback (a held view
        // stops a bytearray's resizing); what cannot be sent now is copied for the queue.
        let (sent, unsent) = {
            let buf = ReadBuf::get(&data)?;
            let slice = buf.as_slice();
            let sent = if me.state.with(py, |s| s.buffer.is_empty()) { me.send_one(py, slice, &target) } else { Err(SendErr::WouldBlock) };
            let unsent = matches!(sent, Err(SendErr::WouldBlock)).then(|| slice.to_vec());
            (sent, unsent)
        };
        match sent {
            Ok(()) | Err(SendErr::WouldBlock) => {}
            Err(SendErr::Os(exc)) => return me.error_received(py, exc),
            Err(SendErr::Other(exc)) => {
                if is_fatal(py, &exc) {
                    return Err(exc);
                }
                return Self::fatal_error(slf, exc, "Fatal write error on datagram transport");
            }
        }
        let Some(copy) = unsent else { return Ok(()) };
        me.state.with(py, |s| {
            s.buffer_size += copy.len() + me.header_bytes;
            s.buffer.push_back((copy, target));
        });
        if let Err(e) = me.watch_writable(py, true) {
            // The queue would never be sent.
            return Self::fatal_error(slf, e, "Fatal write error on datagram transport");
        }
        Self::maybe_pause_protocol(slf)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let schedule = slf.get().state.with(py, |s| {
            if s.read.closing {
                return false;
            }
            s.read.close();
            if s.buffer.is_empty() {
                s.conn_lost += 1;
                true
            } else {
                false
            }
        });
        if schedule {
            let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
            slf.get().call_soon(py, cb, PyTuple::new(py, [py.None()])?)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.read.closing)
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.read.is_reading())
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.state.with(py, |s| s.read.pause()) && me.debug(py) {
            reading::log_debug(py, "%r pauses reading", me.owner(py))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let iteration = me.event_loop.get().iteration.get();
        if me.state.with(py, |s| s.read.resume(iteration)) {
            io_context::renew(py, &me.state, |s| &mut s.context)?;
            Self::queue_io(slf, true, false);
            if me.debug(py) {
                reading::log_debug(py, "%r resumes reading", me.owner(py))?;
            }
        }
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.protocol(py)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self.state.with(py, |s| {
            s.protocol_connected = true;
            (s.protocol.replace(protocol.unbind()), s.datagram_received.take())
        });
        drop(old);
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let (high, low) = flow_control::water_marks(high, low)?;
        slf.get().state.with(slf.py(), |s| {
            s.high = high;
            s.low = low;
        });
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.state.with(py, |s| (s.low, s.high))
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.with(py, |s| s.buffer_size)
    }

    // ----- for the Python wrapper ------------------------------------------------

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sock(py)
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.address.as_ref().map(|a| a.clone_ref(py)))
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.read.closing)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.with(py, |s| s.conn_lost)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.read.paused)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.protocol_paused)
    }

    #[getter]
    fn _reader_active(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.read.can_read())
    }

    /// The transport is being collected unclosed: stop watching the fd.
    fn _detach_fd(&self, py: Python<'_>) {
        self.unregister(py);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Some(s) = self.state.get_for_traverse() {
            visit.call(&s.sock)?;
            visit.call(&s.protocol)?;
            visit.call(s.datagram_received.as_option())?;
            visit.call(&s.owner)?;
            visit.call(&s.address)?;
            for (_, tuple) in &s.peers.peers {
                visit.call(tuple)?;
            }
            for (_, target) in &s.buffer {
                if let Target::Py(a) = target {
                    visit.call(a)?;
                }
            }
            visit.call(&s.context)?;
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self
            .state
            .with(py, |s| (s.protocol.take(), s.datagram_received.take(), s.owner.take(), std::mem::take(&mut s.buffer), s.context.take()));
        drop(taken);
    }
}
