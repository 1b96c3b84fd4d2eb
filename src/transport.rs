//! `StreamTransportCore`: the Rust half of ferroloop's stream transport (TCP and
//! Unix sockets), with the semantics of asyncio's `_SelectorSocketTransport`.
//!
//! The loop owns the socket's fd for the transport's lifetime (`LoopState.io`),
//! holding the transport itself only while it reads or has data the kernel
//! refused, and a weak reference otherwise (`event_loop::Held`), so a transport
//! the application drops unclosed is collected as asyncio's would be. The fd is
//! registered edge-triggered, for reading, and for writing only while the kernel
//! has refused some of what was written (`LoopCore::watch_writable`: a socket
//! watched for writability is woken whenever its send buffer frees space, a Unix
//! socket after every read of its peer). Each poll event becomes one
//! `Ready::Io` entry in the ready queue, in the batch position asyncio would run the
//! reader callback. Running it (`on_io`) calls into this object directly: no Python
//! `Handle` per event. Reads loop until `EAGAIN` (the poller reports an fd again only
//! when it becomes ready again), up to a cap per event for fairness, after which the
//! transport queues itself for the next iteration.
//!
//! Writes made while the loop runs are collected and sent at the end of the
//! iteration (`Ready::Flush`, one vectored `sendmsg` however many `write()` calls a
//! protocol made: a header and a body written apart leave as one segment), up to
//! `DEFER_MAX` bytes, beyond which they are sent at once. Even a reply written in
//! one call gains: sent at the end of the batch, just before the loop polls, it
//! wakes the peer when the loop has nothing left to do. Sending it from inside the
//! protocol callback costs ~250 fewer instructions, but measured 1-3 % more
//! server CPU per request (1 KiB echo and HTTP, 1 and 10 connections, A/B on one
//! machine). Everything whose result depends on what was sent
//! (`get_write_buffer_size`, `close`, `abort`, `write_eof`, sendfile) sends the
//! collected writes first, so what a protocol can observe is what asyncio's
//! immediate send gives. Outside a running loop writes are sent at once. What the
//! kernel does not take is queued (`ferroloop_core::writebuf`) and flushed when the
//! socket turns writable.
//!
//! The Python class `ferroloop._transports._StreamTransport` (an `asyncio.Transport`)
//! wraps this object: `asyncio.BaseTransport` has an instance slot (`_extra`), which
//! makes a Python class with both as bases impossible (layout conflict), so the
//! wrapper holds the core (its `write` is a C method reaching the core directly,
//! see `fastcall::install_transport_method`).
//! Protocol callbacks get the wrapper (`owner`) as their transport.
//!
//! Every protocol callback's exception goes to the loop's exception handler with
//! asyncio's context keys and closes the transport (`fatal_error`), except
//! `SystemExit`/`KeyboardInterrupt`, which propagate out of the loop.

use std::os::fd::RawFd;

use ferroloop_core::sockio;
use ferroloop_core::writebuf::{self, WriteQueue};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyTuple};

use crate::buffer::{BufView, KeptBytes, ReadBuf};
use crate::event_loop::{IoOwner, LoopCore};
use crate::flow_control::{self, is_fatal, logger};
use crate::gil_cell::{GilCell, GilFlag};
use crate::io_context;
use crate::reading::{self, ProtocolMethod, ReadSwitch};
use crate::sock::os_error;

/// asyncio's `max_size` for one `recv` of a transport.
pub(crate) const MAX_READ: usize = 256 * 1024;
/// A read of at least this many bytes sends the next one straight into a fresh
/// `bytes` of `MAX_READ` (`bulk`). Not `MAX_READ / 2`: 100 KiB reads on 10
/// connections, copied out of the scratch buffer into exact-size `bytes`, made
/// glibc trim and regrow the heap top (0.37 `brk` per request, each page faulted
/// back in), 56-60 against 34-38 µs of server CPU per request.
const BULK_MIN: usize = MAX_READ / 4;
/// Reads per readiness event before the transport yields to other work.
const MAX_READS_PER_EVENT: usize = 4;
/// Writes while the loop runs are collected up to this many bytes and sent at the
/// end of the iteration; beyond, they are sent at once.
const DEFER_MAX: usize = 64 * 1024;
/// Where `StreamTransportCore::route` sends a write.
enum Route {
    /// Queued for the end of the iteration; `first`: the transport's first of it.
    Collected { first: bool },
    /// Sent now: nothing is queued before it.
    SendNow,
    /// Queued behind what the kernel has not taken yet.
    Queue,
}

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

static READ_SCRATCH: GilCell<Vec<u8>> = GilCell::new(Vec::new());

extern "C" {
    // Part of CPython's ABI on every supported version (pyo3-ffi keeps its binding
    // private): shrink a fresh bytes object in place.
    fn _PyBytes_Resize(bytes: *mut *mut pyo3::ffi::PyObject, newsize: pyo3::ffi::Py_ssize_t) -> std::os::raw::c_int;
}

/// A non-blocking read syscall: `sockio::recv` or `sockio::read`.
pub type ReadOp = fn(RawFd, &mut [u8]) -> std::io::Result<usize>;

/// What one read attempt of a transport gave.
pub enum ReadStep<'py> {
    Data(Bound<'py, PyBytes>),
    Eof,
    /// Would block: everything was read (edge-triggered readers stop only here).
    Drained,
    Failed(std::io::Error),
}

/// One read with `op` (`read_bytes`), `EINTR` retried; also returns whether the
/// next read should go straight into a `bytes` (`bulk`).
pub fn read_step<'py>(py: Python<'py>, fd: RawFd, bulk: bool, op: ReadOp) -> PyResult<(ReadStep<'py>, bool)> {
    loop {
        return Ok(match read_bytes(py, fd, bulk, op)? {
            // Interrupted is not "drained": only EAGAIN may end the reading.
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if sockio::would_block(&e) => (ReadStep::Drained, bulk),
            Err(e) => (ReadStep::Failed(e), bulk),
            Ok(data) if data.as_bytes().is_empty() => (ReadStep::Eof, bulk),
            Ok(data) => {
                let bulk = data.as_bytes().len() >= BULK_MIN;
                (ReadStep::Data(data), bulk)
            }
        });
    }
}

/// One read (`recv`, or `read` for pipes: `op`) into a `bytes`. Small reads go
/// through a reused scratch buffer and are copied out (no allocation of `MAX_READ`
/// per read for a chatty protocol); when the previous read was large (`bulk`), the
/// data is received straight into a fresh `bytes` which is then shrunk, saving the
/// copy.
fn read_bytes<'py>(py: Python<'py>, fd: RawFd, bulk: bool, op: ReadOp) -> PyResult<std::io::Result<Bound<'py, PyBytes>>> {
    if !bulk {
        return Ok(READ_SCRATCH.with(py, |buf| {
            if buf.len() < MAX_READ {
                buf.resize(MAX_READ, 0);
            }
            op(fd, &mut buf[..MAX_READ]).map(|n| PyBytes::new(py, &buf[..n]))
        }));
    }
    // SAFETY: a new, uninitialised bytes object of MAX_READ bytes owned only here;
    // recv fills its start, then it is shrunk to what was received (or released).
    unsafe {
        let mut obj = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), MAX_READ as pyo3::ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let data = std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(obj) as *mut u8, MAX_READ);
        match op(fd, data) {
            Ok(got) => {
                if got != MAX_READ && _PyBytes_Resize(&mut obj, got as pyo3::ffi::Py_ssize_t) != 0 {
                    return Err(PyErr::fetch(py)); // _PyBytes_Resize freed it
                }
                Ok(Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked()))
            }
            Err(e) => {
                pyo3::ffi::Py_DECREF(obj);
                Ok(Err(e))
            }
        }
    }
}

pub struct TransportState {
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The protocol is an `asyncio.BufferedProtocol` (reads go into its buffer).
    buffered: bool,
    /// Its read callbacks, kept while it is the protocol (see `ProtocolMethod`).
    data_received: ProtocolMethod,
    get_buffer: ProtocolMethod,
    buffer_updated: ProtocolMethod,
    protocol_connected: bool,
    /// The Python transport object protocols see; dropped at connection lost.
    owner: Option<Py<PyAny>>,
    server: Option<Py<PyAny>>,
    wq: WriteQueue<KeptBytes>,
    read: ReadSwitch,
    conn_lost: u32,
    eof: bool,
    registered: bool,
    /// The loop holds this transport weakly: it waits for no I/O (see `hold_change`).
    held_weakly: bool,
    protocol_paused: bool,
    /// The last read was large: receive straight into a new `bytes` next time.
    bulk: bool,
    /// `wq` holds writes not tried yet: the loop flushes them at the end of the
    /// current iteration (one `sendmsg` for a header and a body written apart).
    deferred: bool,
    high: usize,
    low: usize,
    empty_waiter: Option<Py<PyAny>>,
    /// The context its I/O runs in (`io_context`): a copy of the one it was made
    /// in, taken anew by `resume_reading()`.
    context: Option<Py<PyAny>>,
}

impl TransportState {
    /// The protocol changes or goes: its kept methods go too (dropped by the caller
    /// after the borrow).
    fn forget_protocol_methods(&mut self) -> [Option<Py<PyAny>>; 3] {
        [self.data_received.take(), self.get_buffer.take(), self.buffer_updated.take()]
    }

    /// How the loop should hold the transport now, if that changed: strongly while
    /// it reads or holds data the kernel refused, as asyncio's selector holds a
    /// transport while it has a reader or a writer; weakly otherwise (paused, past
    /// end of file), so that one the application drops is collected and closed
    /// (`event_loop::Held`). For `StreamTransportCore::apply_hold`.
    fn hold_change(&mut self) -> Option<bool> {
        let strongly = self.read.can_read() || !self.wq.is_empty();
        if !self.registered || strongly != self.held_weakly {
            return None;
        }
        self.held_weakly = !strongly;
        Some(strongly)
    }
}

#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct StreamTransportCore {
    fd: RawFd,
    event_loop: Py<LoopCore>,
    /// The fd is watched for writability too: only while the kernel refused some of
    /// what was written (see `LoopCore::watch_writable`).
    write_watched: GilFlag,
    state: GilCell<TransportState>,
}

fn buffered_protocol_type(py: Python<'_>) -> PyResult<&Bound<'_, pyo3::types::PyType>> {
    static T: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
    T.import(py, "asyncio.protocols", "BufferedProtocol")
}

/// What `on_io` should do after reading stopped.
enum ReadEnd {
    /// Would block, end of file handled, closed, or paused: nothing more.
    Done,
    /// The per-event cap was reached with data possibly left: try again next time.
    Again,
}

impl StreamTransportCore {
    fn loop_any<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.event_loop.bind(py).clone().into_any()
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop.get().state.with(py, |s| s.debug)
    }

    pub fn owner(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.with(py, |s| s.owner.as_ref().map(|o| o.clone_ref(py))).unwrap_or_else(|| py.None())
    }

    fn protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.with(py, |s| s.protocol.as_ref().map(|o| o.clone_ref(py))).unwrap_or_else(|| py.None())
    }

    /// The context dispatch runs this transport's I/O in (see `io_context::run_in`).
    #[inline(always)]
    pub fn io_context<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state.with(py, |s| io_context::bind(py, &s.context))
    }

    /// Queues an I/O attempt with the next poll's events (`LoopState::queue_attempt`:
    /// reading started or resumed, or a read cut short by the fairness cap).
    fn queue_io(slf: &Bound<'_, Self>, readable: bool, writable: bool) {
        let py = slf.py();
        // A new reference to a live object: nothing is freed in here.
        slf.get().event_loop.get().state.with(py, |s| s.queue_attempt(IoOwner::Stream(slf.clone().unbind()), readable, writable));
    }

    /// Makes the loop hold the transport as `TransportState::hold_change` decided.
    fn apply_hold(slf: &Bound<'_, Self>, change: Option<bool>) -> PyResult<()> {
        match change {
            Some(strongly) => slf.get().event_loop.get().hold(slf.py(), slf.get().fd, IoOwner::Stream(slf.clone().unbind()), strongly),
            None => Ok(()),
        }
    }

    /// Decides again how the loop holds the transport (see `hold_change`), after a
    /// change that did not already take the state borrow.
    fn rehold(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::apply_hold(slf, slf.get().state.with(slf.py(), |s| s.hold_change()))
    }

    fn call_soon(&self, py: Python<'_>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        crate::scheduling::call_soon(self.event_loop.bind(py), callback, Some(args), None, "call_soon").map(drop)
    }

    /// Called by the loop when the fd is ready (or when we queued ourselves); `clean`:
    /// straight from a poll that saw no hang-up or error (see `Readiness::hup`).
    pub fn on_io(slf: &Bound<'_, Self>, readable: bool, writable: bool, clean: bool) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let iteration = me.event_loop.get().iteration.get();
        if readable && me.state.with(py, |s| s.read.can_read_event(iteration) && s.conn_lost == 0) {
            if let ReadEnd::Again = Self::read_ready(slf, clean)? {
                Self::queue_io(slf, true, false);
            }
        }
        if writable && me.state.with(py, |s| !s.wq.is_empty() && s.conn_lost == 0 && s.sock.is_some()) {
            Self::write_ready(slf)?;
        }
        Ok(())
    }

    /// Reads until the kernel says "would block", or, after a `clean` event, until a
    /// read returns less than asked: then the socket is drained and a later arrival
    /// raises a new edge, so the read that would only give `EAGAIN` is skipped (one
    /// syscall less per request for a request/response protocol).
    fn read_ready(slf: &Bound<'_, Self>, clean: bool) -> PyResult<ReadEnd> {
        let py = slf.py();
        let me = slf.get();
        for _ in 0..MAX_READS_PER_EVENT {
            let (go, buffered, protocol, first) = me.state.with(py, |s| {
                let go = s.read.can_read() && s.conn_lost == 0;
                let first = if s.buffered { s.get_buffer.cached(py) } else { s.data_received.cached(py) };
                (go, s.buffered, s.protocol.as_ref().map(|p| p.clone_ref(py)), first)
            });
            let Some(protocol) = protocol.filter(|_| go) else { return Ok(ReadEnd::Done) };
            let protocol = protocol.bind(py);
            if buffered {
                let get_buffer = match reading::protocol_method(&me.state, protocol, first, intern!(py, "get_buffer"), |s| {
                    (&s.protocol, &mut s.get_buffer)
                }) {
                    Ok(m) => m,
                    Err(e) => return Self::callback_failed(slf, e, "Fatal error: protocol.get_buffer() call failed."),
                };
                let buf = match get_buffer.call1((-1,)).and_then(|b| {
                    if b.len()? == 0 {
                        Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"))
                    } else {
                        Ok(b)
                    }
                }) {
                    Ok(b) => b,
                    Err(e) => return Self::callback_failed(slf, e, "Fatal error: protocol.get_buffer() call failed."),
                };
                let mut view = match BufView::get(&buf, true) {
                    Ok(v) => v,
                    Err(e) => return Self::callback_failed(slf, e, "Fatal error: protocol.get_buffer() call failed."),
                };
                let asked = view.len();
                let got = sockio::recv(me.fd, view.as_mut_slice());
                drop(view);
                match got {
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) if sockio::would_block(&e) => return Ok(ReadEnd::Done),
                    Err(e) => {
                        Self::fatal_error(slf, os_error(&e), "Fatal read error on socket transport")?;
                        return Ok(ReadEnd::Done);
                    }
                    Ok(0) => {
                        Self::on_eof(slf)?;
                        return Ok(ReadEnd::Done);
                    }
                    Ok(n) => {
                        let cached = me.state.with(py, |s| s.buffer_updated.cached(py));
                        let updated = reading::protocol_method(&me.state, protocol, cached, intern!(py, "buffer_updated"), |s| {
                            (&s.protocol, &mut s.buffer_updated)
                        });
                        if let Err(e) = updated.and_then(|m| m.call1((n,))) {
                            return Self::callback_failed(slf, e, "Fatal error: protocol.buffer_updated() call failed.");
                        }
                        if clean && n < asked {
                            return Ok(ReadEnd::Done);
                        }
                    }
                }
            } else {
                let bulk = me.state.with(py, |s| s.bulk);
                let (step, bulk) = read_step(py, me.fd, bulk, sockio::recv)?;
                me.state.with(py, |s| s.bulk = bulk);
                match step {
                    ReadStep::Drained => return Ok(ReadEnd::Done),
                    ReadStep::Failed(e) => {
                        Self::fatal_error(slf, os_error(&e), "Fatal read error on socket transport")?;
                        return Ok(ReadEnd::Done);
                    }
                    ReadStep::Eof => {
                        Self::on_eof(slf)?;
                        return Ok(ReadEnd::Done);
                    }
                    ReadStep::Data(data) => {
                        let short = data.as_bytes().len() < MAX_READ;
                        let received = reading::protocol_method(&me.state, protocol, first, intern!(py, "data_received"), |s| {
                            (&s.protocol, &mut s.data_received)
                        });
                        if let Err(e) = received.and_then(|m| m.call1((data,))) {
                            return Self::callback_failed(slf, e, "Fatal error: protocol.data_received() call failed.");
                        }
                        if clean && short {
                            return Ok(ReadEnd::Done);
                        }
                    }
                }
            }
        }
        Ok(ReadEnd::Again)
    }

    /// A protocol callback raised: propagate SystemExit/KeyboardInterrupt, else
    /// report and close (asyncio's `_fatal_error`).
    fn callback_failed(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<ReadEnd> {
        if is_fatal(slf.py(), &err) {
            return Err(err);
        }
        Self::fatal_error(slf, err, message)?;
        Ok(ReadEnd::Done)
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.debug(py) {
            logger(py)?.call_method1("debug", ("%r received EOF", me.owner(py)))?;
        }
        let protocol = me.protocol(py);
        let keep_open = match protocol.bind(py).call_method0(intern!(py, "eof_received")) {
            Ok(v) => v.is_truthy()?,
            Err(e) => {
                Self::callback_failed(slf, e, "Fatal error: protocol.eof_received() call failed.")?;
                return Ok(());
            }
        };
        if keep_open {
            let change = me.state.with(py, |s| {
                s.read.reader_active = false;
                s.hold_change()
            });
            Self::apply_hold(slf, change)
        } else {
            Self::do_close(slf)
        }
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let result = me.state.with(py, |s| s.wq.flush(me.fd).map(|n| (n, s.wq.is_empty())));
        match result {
            Err(e) => {
                me.state.with(py, |s| s.wq.clear());
                let exc = os_error(&e);
                let waiter_exc = exc.clone_ref(py);
                Self::fatal_error(slf, exc, "Fatal write error on socket transport")?;
                if let Some(w) = me.state.with(py, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py))) {
                    w.bind(py).call_method1(intern!(py, "set_exception"), (waiter_exc.into_value(py),))?;
                }
                Ok(())
            }
            Ok((n, empty)) => {
                if empty {
                    // Failing, it only leaves the fd watched: a wake-up more, never one lost.
                    let _ = me.watch_writable(py, false);
                }
                if n > 0 {
                    Self::maybe_resume_protocol(slf)?;
                }
                // Asked again: resume_writing() may have written more.
                if me.state.with(py, |s| s.wq.is_empty()) {
                    Self::on_drained(slf)?;
                }
                Ok(())
            }
        }
    }

    /// The write buffer became empty: wake a sendfile waiting for it, finish a
    /// pending close or write_eof.
    fn on_drained(slf: &Bound<'_, Self>) -> PyResult<()> {
        if Self::drained_quietly(slf)? {
            return Ok(());
        }
        let py = slf.py();
        let me = slf.get();
        if let Some(w) = me.state.with(py, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py))) {
            // The sendfile waiting on it may have been cancelled meanwhile: the close
            // or write_eof below must happen all the same.
            if !w.bind(py).call_method0(intern!(py, "done"))?.is_truthy()? {
                w.bind(py).call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
        }
        let (closing, eof, conn_lost) = me.state.with(py, |s| (s.read.closing, s.eof, s.conn_lost));
        if closing {
            if conn_lost == 0 {
                me.state.with(py, |s| s.conn_lost += 1);
                Self::call_connection_lost(slf, py.None().into_bound(py))?;
            }
        } else {
            if eof {
                if let Err(e) = writebuf::shutdown_write(me.fd) {
                    return Self::fatal_error(slf, os_error(&e), "Fatal write error on socket transport");
                }
            }
            // Nothing left to send: an idle transport is held weakly from now on.
            Self::rehold(slf)?;
        }
        Ok(())
    }

    /// The common end of a drain (every reply sent whole): nothing waits on it, so
    /// no Python code runs (a transport that does not read may now be held weakly).
    #[inline]
    fn drained_quietly(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let quiet = slf.get().state.with(slf.py(), |s| (s.empty_waiter.is_none() && !s.read.closing && !s.eof).then(|| s.hold_change()));
        match quiet {
            Some(None) => Ok(true),
            Some(change) => Self::apply_hold(slf, change).map(|()| true),
            None => Ok(false),
        }
    }

    /// asyncio's `_fatal_error`: OSErrors are only logged in debug mode, anything
    /// else goes to the exception handler; then the transport is closed at once.
    pub fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
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
        let go = slf.get().state.with(py, |s| {
            if s.conn_lost > 0 {
                return false;
            }
            s.wq.clear();
            s.read.close();
            s.conn_lost += 1;
            true
        });
        if go {
            let exc = exc.map_or_else(|| py.None().into_bound(py), |e| e.into_value(py).into_bound(py).into_any());
            let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
            slf.get().call_soon(py, cb, PyTuple::new(py, [exc])?)?;
        }
        Ok(())
    }

    fn do_close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let schedule = slf.get().state.with(py, |s| {
            if s.read.closing {
                return None;
            }
            s.read.close();
            if s.wq.is_empty() {
                s.conn_lost += 1;
                Some(())
            } else {
                None
            }
        });
        if schedule.is_some() {
            let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
            slf.get().call_soon(py, cb, PyTuple::new(py, [py.None()])?)?;
        }
        Ok(())
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
        let (sock, protocol, owner, server, waiter, methods) = me.state.with(py, |s| {
            (s.sock.take(), s.protocol.take(), s.owner.take(), s.server.take(), s.empty_waiter.take(), s.forget_protocol_methods())
        });
        let close_result = match &sock {
            Some(sock) => sock.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        let detach_result = match (&server, &owner) {
            (Some(server), Some(owner)) => server.bind(py).call_method1(intern!(py, "_detach"), (owner,)).map(drop),
            _ => Ok(()),
        };
        drop((sock, protocol, owner, server, waiter, methods));
        result.and(close_result).and(detach_result)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let pause = slf.get().state.with(py, |s| flow_control::should_pause(s.wq.len(), s.high, &mut s.protocol_paused));
        if pause {
            slf.get().tell_protocol(py, intern!(py, "pause_writing"))?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let resume = slf.get().state.with(py, |s| flow_control::should_resume(s.wq.len(), s.low, &mut s.protocol_paused));
        if resume {
            slf.get().tell_protocol(py, intern!(py, "resume_writing"))?;
        }
        Ok(())
    }

    fn tell_protocol(&self, py: Python<'_>, method: &Bound<'_, pyo3::types::PyString>) -> PyResult<()> {
        flow_control::tell_protocol(py, &self.loop_any(py), self.owner(py), self.protocol(py), method)
    }

    /// The checks `write()` makes before anything is sent; `Ok(false)`: drop the
    /// data silently (the connection is lost).
    fn check_writable(&self, py: Python<'_>, what: &str) -> PyResult<bool> {
        let (eof, sendfile, conn_lost) = self.state.with(py, |s| (s.eof, s.empty_waiter.is_some(), s.conn_lost));
        if eof {
            return Err(PyRuntimeError::new_err(format!("Cannot call {what}() after write_eof()")));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
        }
        if conn_lost > 0 {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            self.state.with(py, |s| s.conn_lost += 1);
            return Ok(false);
        }
        Ok(true)
    }

    /// Where a write goes: collected for the end of the iteration when the loop is
    /// running and the socket is not known to be full; otherwise sent now, or
    /// queued behind what the kernel has not taken yet. A collected `bytes`
    /// (`keep`) is held by reference, not copied (see `WriteQueue::push_kept`).
    fn route(slf: &Bound<'_, Self>, bufs: &[&[u8]], total: usize, keep: Option<&Bound<'_, PyBytes>>) -> PyResult<Route> {
        let py = slf.py();
        let me = slf.get();
        let running = me.event_loop.get().state.with(py, |s| s.running && !s.closed);
        let (route, overflow) = me.state.with(py, |s| {
            let first = !s.deferred;
            if first {
                if !s.wq.is_empty() {
                    return (Route::Queue, false);
                }
                if !running || total >= DEFER_MAX {
                    return (Route::SendNow, false);
                }
            }
            match keep {
                Some(bytes) => s.wq.push_kept(KeptBytes::new(bytes)),
                None => bufs.iter().for_each(|b| s.wq.push(b)),
            }
            s.deferred = true;
            (Route::Collected { first }, s.wq.len() >= DEFER_MAX.min(s.high.max(1)))
        });
        if let Route::Collected { first: true } = route {
            me.event_loop.get().state.with(py, |s| s.deferred_flush.push_back(slf.clone().unbind()));
        }
        if overflow {
            Self::flush_deferred(slf)?;
        }
        Ok(route)
    }

    /// Sends the writes collected during this iteration, for methods whose result
    /// depends on it (the loop's own end-of-batch flush is `flush_from_loop`).
    fn flush_deferred(slf: &Bound<'_, Self>) -> PyResult<()> {
        match Self::send_deferred(slf) {
            Some(sent) => Self::after_send(slf, sent),
            None => Ok(()),
        }
    }

    /// `flush_deferred` at the end of the loop's batch. What follows a send that
    /// did not simply empty the queue may call the protocol (or queue its
    /// `connection_lost`), in the transport's context as its I/O (`io_context`).
    pub fn flush_from_loop(slf: &Bound<'_, Self>) -> PyResult<()> {
        let Some(sent) = Self::send_deferred(slf) else { return Ok(()) };
        if matches!(sent, Ok(true)) && Self::drained_quietly(slf)? {
            return Ok(());
        }
        io_context::run_in(slf.py(), slf.get().io_context(slf.py()), || Self::after_send(slf, sent))
    }

    /// Sends the collected writes, if any are still to go: whether the queue is
    /// empty now, or the send's error.
    fn send_deferred(slf: &Bound<'_, Self>) -> Option<std::io::Result<bool>> {
        let me = slf.get();
        me.state.with(slf.py(), |s| {
            let was = std::mem::replace(&mut s.deferred, false);
            // Already sent by a writable event, or dropped by an abort: done.
            let live = was && s.conn_lost == 0 && s.sock.is_some() && !s.wq.is_empty();
            live.then(|| s.wq.flush(me.fd).map(|_| s.wq.is_empty()))
        })
    }

    fn after_send(slf: &Bound<'_, Self>, sent: std::io::Result<bool>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        match sent {
            Err(e) => {
                me.state.with(py, |s| s.wq.clear());
                Self::fatal_error(slf, os_error(&e), "Fatal write error on socket transport")
            }
            Ok(true) => Self::on_drained(slf),
            Ok(false) => {
                Self::watch_backlog(slf)?;
                Self::maybe_pause_protocol(slf)
            }
        }
    }

    /// Watches the fd for writability while the kernel has refused some of what was
    /// written (see `LoopCore::watch_writable`).
    fn watch_writable(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        self.event_loop.get().watch_writable(py, self.fd, &self.write_watched, on)
    }

    /// Data the kernel refused is queued: watch for the socket turning writable.
    /// If the loop cannot, the queue would never be sent: the transport fails
    /// (closed, the error reported as a write error's).
    fn watch_backlog(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().watch_writable(slf.py(), true) {
            Ok(()) => Self::rehold(slf),
            Err(e) => Self::fatal_error(slf, e, "Fatal write error on socket transport"),
        }
    }

    /// The loop is closing: send what is queued as far as the socket takes it,
    /// without calling the protocol.
    pub fn flush_raw(&self, py: Python<'_>) {
        self.state.with(py, |s| {
            s.deferred = false;
            if s.conn_lost == 0 && s.sock.is_some() {
                let _ = s.wq.flush(self.fd);
            }
        });
    }

    /// Sends `bufs` now if nothing is queued, queues what the kernel did not take.
    /// `keep`: `bufs` is this one `bytes`, which may be queued by reference.
    fn send_or_queue(slf: &Bound<'_, Self>, bufs: &[&[u8]], keep: Option<&Bound<'_, PyBytes>>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let route = Self::route(slf, bufs, total, keep)?;
        let mut sent = 0;
        let mut blocked = true;
        match route {
            Route::Collected { .. } => return Ok(()),
            Route::Queue => {}
            Route::SendNow => {
                match writebuf::send_vectored(me.fd, bufs) {
                    Ok(n) => {
                        sent = n;
                        blocked = false;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => blocked = false,
                    Err(e) if sockio::would_block(&e) => {}
                    Err(e) => return Self::fatal_error(slf, os_error(&e), "Fatal write error on socket transport"),
                }
                if sent == total {
                    return Ok(());
                }
            }
        }
        let flushed = me.state.with(py, |s| {
            let mut skip = sent;
            for b in bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                s.wq.push(&b[skip..]);
                skip = 0;
            }
            // The socket took part of it without saying "would block" (more slices
            // than one sendmsg carries, or a short send): keep going until it does,
            // since only a full socket turning writable raises the next edge.
            if blocked {
                Ok(())
            } else {
                s.wq.flush(me.fd).map(drop)
            }
        });
        if let Err(e) = flushed {
            me.state.with(py, |s| s.wq.clear());
            return Self::fatal_error(slf, os_error(&e), "Fatal write error on socket transport");
        }
        if me.state.with(py, |s| s.wq.is_empty()) {
            return Ok(());
        }
        Self::watch_backlog(slf)?;
        Self::maybe_pause_protocol(slf)
    }
}

fn is_bytes_like(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>()
}

#[pymethods]
impl StreamTransportCore {
    #[new]
    #[pyo3(signature = (event_loop, sock, protocol, owner, server=None))]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, LoopCore>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        owner: Bound<'_, PyAny>,
        server: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        let buffered = protocol.is_instance(buffered_protocol_type(py)?)?;
        Ok(StreamTransportCore {
            fd,
            event_loop: event_loop.unbind(),
            write_watched: GilFlag::new(false),
            state: GilCell::new(TransportState {
                sock: Some(sock.unbind()),
                protocol: Some(protocol.unbind()),
                buffered,
                data_received: ProtocolMethod::default(),
                get_buffer: ProtocolMethod::default(),
                buffer_updated: ProtocolMethod::default(),
                protocol_connected: true,
                owner: Some(owner.unbind()),
                server: server.filter(|s| !s.is_none()).map(Bound::unbind),
                wq: WriteQueue::new(),
                read: ReadSwitch::default(),
                conn_lost: 0,
                eof: false,
                registered: false,
                held_weakly: false,
                protocol_paused: false,
                bulk: false,
                deferred: false,
                high: flow_control::DEFAULT_HIGH,
                low: flow_control::DEFAULT_LOW,
                empty_waiter: None,
                context: Some(io_context::copy_current(py)?),
            }),
        })
    }

    /// Hands the fd to the loop (edge-triggered; writable too while something waits
    /// to be sent).
    fn _register(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let fd = me.fd;
        let backlog = me.state.with(py, |s| !s.wq.is_empty());
        let replaced =
            me.event_loop.get().state.with(py, |s| s.register_owner(fd, IoOwner::Stream(slf.clone().unbind()), true, backlog))?;
        me.write_watched.set(py, backlog);
        me.state.with(py, |s| {
            s.registered = true;
            s.held_weakly = false;
        });
        drop(replaced);
        Ok(())
    }

    /// asyncio's `call_soon(self._add_reader, ...)` after `connection_made`.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let iteration = slf.get().event_loop.get().iteration.get();
        let (start, change) = slf.get().state.with(py, |s| (s.read.start(iteration), s.hold_change()));
        Self::apply_hold(slf, change)?;
        if start {
            Self::queue_io(slf, true, false);
        }
        Ok(())
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc)
    }

    /// `write(data)`. The transport's `write` calls this directly when given one
    /// positional argument (`fastcall::transport_write`); other calls come here
    /// through PyO3, for its binding and its errors.
    pub(crate) fn write(slf: &Bound<'_, Self>, data: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if !is_bytes_like(&data) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let buf = ReadBuf::get(&data)?;
        let slice = buf.as_slice();
        if slice.is_empty() {
            // asyncio checks write_eof and sendfile first, then ignores empty data.
            let (eof, sendfile) = slf.get().state.with(py, |s| (s.eof, s.empty_waiter.is_some()));
            if eof {
                return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
            }
            if sendfile {
                return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
            }
            return Ok(());
        }
        if !slf.get().check_writable(py, "write")? {
            return Ok(());
        }
        // A `bytes` may be queued by reference instead of copied.
        Self::send_or_queue(slf, &[slice], buf.bytes())
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let items: Vec<Bound<'_, PyAny>> = list_of_data.try_iter()?.collect::<PyResult<_>>()?;
        let mut views = Vec::with_capacity(items.len());
        for item in &items {
            match ReadBuf::get(item) {
                Ok(v) => views.push(v),
                Err(_) => {
                    // The same TypeError as b''.join would raise.
                    PyBytes::new(py, b"").call_method1("join", (PyList::new(py, &items)?,))?;
                    return Err(PyTypeError::new_err("data argument must be a bytes-like object"));
                }
            }
        }
        let (eof, sendfile) = slf.get().state.with(py, |s| (s.eof, s.empty_waiter.is_some()));
        if eof {
            return Err(PyRuntimeError::new_err("Cannot call writelines() after write_eof()"));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err("unable to writelines; sendfile is in progress"));
        }
        let slices: Vec<&[u8]> = views.iter().map(|v| v.as_slice()).filter(|s| !s.is_empty()).collect();
        if slices.is_empty() {
            return Ok(());
        }
        if !slf.get().check_writable(py, "writelines")? {
            return Ok(());
        }
        // One sendmsg carries up to 64 slices; the rest is queued and flushed by it.
        Self::send_or_queue(slf, &slices, None)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::flush_deferred(slf)?;
        let shut = slf.get().state.with(py, |s| {
            if s.read.closing || s.eof {
                return false;
            }
            s.eof = true;
            s.wq.is_empty()
        });
        if shut {
            writebuf::shutdown_write(slf.get().fd).map_err(|e| os_error(&e))?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flush_deferred(slf)?;
        Self::do_close(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        // What write() accepted before abort() has been sent in asyncio.
        Self::flush_deferred(slf)?;
        Self::force_close(slf, None)
    }

    /// asyncio's `_force_close(exc)`: drop what is buffered, close at once, and
    /// report `exc` to `connection_lost` (the TLS layer's timeouts and errors).
    fn _force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let exc = (!exc.is_none()).then(|| PyErr::from_value(exc));
        Self::force_close(slf, exc)
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
        let (paused, change) = me.state.with(py, |s| (s.read.pause(), s.hold_change()));
        Self::apply_hold(slf, change)?;
        if paused && me.debug(py) {
            reading::log_debug(py, "%r pauses reading", me.owner(py))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let iteration = me.event_loop.get().iteration.get();
        let (resumed, change) = me.state.with(py, |s| (s.read.resume(iteration), s.hold_change()));
        Self::apply_hold(slf, change)?;
        if resumed {
            io_context::renew(py, &me.state, |s| &mut s.context)?;
            // Data that arrived while paused raised no new edge: look, after the
            // next poll.
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

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = protocol.is_instance(buffered_protocol_type(py)?)?;
        let old = self.state.with(py, |s| {
            s.buffered = buffered;
            s.protocol_connected = true;
            (s.protocol.replace(protocol.unbind()), s.forget_protocol_methods())
        });
        drop(old);
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let (high, low) = flow_control::water_marks(high, low)?;
        Self::flush_deferred(slf)?;
        slf.get().state.with(slf.py(), |s| {
            s.high = high;
            s.low = low;
        });
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.state.with(py, |s| (s.low, s.high))
    }

    fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        // Pending writes count only once the socket refused them, as in asyncio.
        Self::flush_deferred(slf)?;
        Ok(slf.get().state.with(slf.py(), |s| s.wq.len()))
    }

    // ----- for the Python wrapper and loop.sendfile --------------------------------

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.sock.as_ref().map(|o| o.clone_ref(py)))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
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

    #[getter]
    fn _empty_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.empty_waiter.as_ref().map(|o| o.clone_ref(py)))
    }

    /// asyncio's `_make_empty_waiter` (loop.sendfile waits for the buffer to drain).
    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let me = slf.get();
        Self::flush_deferred(slf)?;
        if me.state.with(py, |s| s.empty_waiter.is_some()) {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let waiter = me.loop_any(py).call_method0(intern!(py, "create_future"))?;
        let empty = me.state.with(py, |s| {
            s.empty_waiter = Some(waiter.clone().unbind());
            s.wq.is_empty()
        });
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let old = self.state.with(py, |s| s.empty_waiter.take());
        drop(old);
    }

    /// `loop.sendfile`: hand the fd to `sock_sendfile` (its own fd callbacks) ...
    fn _detach_fd(&self, py: Python<'_>) {
        self.unregister(py);
    }

    /// ... and take it back, looking at once for what happened meanwhile.
    fn _reattach_fd(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let alive = slf.get().state.with(py, |s| s.sock.is_some() && s.conn_lost == 0 && !s.registered);
        if alive && !slf.get().event_loop.get().state.with(py, |s| s.closed) {
            Self::_register(slf)?;
            // Registered strongly; held weakly again if it was idle before sendfile.
            Self::rehold(slf)?;
            Self::queue_io(slf, true, true);
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Some(s) = self.state.get_for_traverse() {
            visit.call(&s.sock)?;
            visit.call(&s.protocol)?;
            for method in [&s.data_received, &s.get_buffer, &s.buffer_updated] {
                visit.call(method.as_option())?;
            }
            visit.call(&s.owner)?;
            visit.call(&s.server)?;
            visit.call(&s.empty_waiter)?;
            visit.call(&s.context)?;
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self.state.with(py, |s| {
            (s.protocol.take(), s.forget_protocol_methods(), s.owner.take(), s.server.take(), s.empty_waiter.take(), s.context.take())
        });
        drop(taken);
    }
}
