//! `PipeTransportCore`: the Rust half of ferroloop's pipe transports
//! (`loop.connect_read_pipe` / `connect_write_pipe`, and so a subprocess's stdin,
//! stdout and stderr), with the semantics of asyncio's `_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport`.
//!
//! The data path is the stream transport's (`transport`): the loop owns the fd
//! (edge-triggered, `IoOwner::Pipe`), a read event reads until `EAGAIN` straight into
//! `bytes` (`transport::read_step`, with `read(2)` instead of `recv(2)`), and what
//! the kernel does not take of a write is queued (`ferroloop_core::writebuf`) and
//! flushed with `writev(2)`. Write flow control is `flow_control`'s.
//!
//! Where pipes differ from sockets, asyncio's pipe rules apply:
//! - end of file on a read pipe always closes it: `eof_received()` then
//!   `connection_lost(None)`, each queued, whatever `eof_received` returns;
//! - a write pipe is watched for readability when it is a FIFO or a socket: that
//!   means the reader went away, and the transport closes (with `BrokenPipeError` if
//!   data was still queued);
//! - `write_eof()` closes the pipe once the queue is drained; writes after it, or
//!   after the connection was lost, are dropped (with a warning after a few);
//! - an exception in `data_received` goes to the loop's exception handler and the
//!   pipe keeps reading (asyncio runs the read as a plain callback);
//! - a read error is reported to the exception handler unless it is `EIO` (a pty
//!   whose other side closed), a write error (`BrokenPipeError`) only in debug
//!   mode; both close the transport with that error.
//!
//! Writes are sent at once (asyncio's order), not collected per iteration as the
//! stream transport does: pipes carry bulk data to children, not request/response
//! segments.

use std::os::fd::RawFd;

use ferroloop_core::sockio;
use ferroloop_core::writebuf::{self, WriteQueue};
use pyo3::exceptions::{PyAssertionError, PyOSError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};

use crate::buffer::ReadBuf;
use crate::event_loop::{IoOwner, LoopCore};
use crate::flow_control::{self, logger};
use crate::gil_cell::GilCell;
use crate::io_context;
use crate::reading::Armed;
use crate::sock::os_error;
use crate::transport::{read_step, ReadStep};

/// Reads per readiness event before the transport yields to other work.
const MAX_READS_PER_EVENT: usize = 4;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

pub struct PipeState {
    pipe: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The Python transport object protocols see; dropped at connection lost.
    owner: Option<Py<PyAny>>,
    wq: WriteQueue,
    closing: bool,
    paused: bool,
    conn_lost: u32,
    registered: bool,
    /// `_call_connection_lost` is queued or ran: nothing may queue it again.
    lost: bool,
    protocol_paused: bool,
    bulk: bool,
    high: usize,
    low: usize,
    /// The context its I/O runs in (`io_context`), as a stream transport's.
    context: Option<Py<PyAny>>,
    /// When reading last resumed (see `reading::Armed`).
    resumed: Armed,
}

#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct PipeTransportCore {
    fd: RawFd,
    /// A write pipe; else a read pipe.
    write: bool,
    /// A write pipe that is a FIFO or socket: readable means the reader went away.
    watch_peer: bool,
    event_loop: Py<LoopCore>,
    state: GilCell<PipeState>,
}

enum ReadEnd {
    Done,
    Again,
}

impl PipeTransportCore {
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

    fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop.get().state.with(py, |s| s.debug)
    }

    fn call_soon(&self, py: Python<'_>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        crate::scheduling::call_soon(self.event_loop.bind(py), callback, Some(args), None, "call_soon").map(drop)
    }

    fn queue_read(slf: &Bound<'_, Self>) {
        let py = slf.py();
        slf.get().event_loop.get().state.with(py, |s| s.queue_attempt(IoOwner::Pipe(slf.clone().unbind()), true, false));
    }

    fn register(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.state.with(py, |s| s.registered) {
            return Ok(());
        }
        let (readable, writable) = if me.write { (me.watch_peer, true) } else { (true, false) };
        let owner = IoOwner::Pipe(slf.clone().unbind());
        let replaced = me.event_loop.get().state.with(py, |s| s.register_owner(me.fd, owner, readable, writable))?;
        me.state.with(py, |s| s.registered = true);
        drop(replaced);
        Ok(())
    }

    fn unregister(&self, py: Python<'_>) {
        if !self.state.with(py, |s| std::mem::replace(&mut s.registered, false)) {
            return;
        }
        self.event_loop.get().release_owned(py, self.fd, self);
    }

    pub fn on_io(slf: &Bound<'_, Self>, readable: bool, writable: bool) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if !me.state.with(py, |s| s.registered) {
            return Ok(());
        }
        if me.write {
            if readable && me.watch_peer {
                return Self::peer_closed(slf);
            }
            if writable && me.state.with(py, |s| !s.wq.is_empty()) {
                return Self::write_ready(slf);
            }
            return Ok(());
        }
        let iteration = me.event_loop.get().iteration.get();
        if readable && me.state.with(py, |s| s.resumed.allows(iteration)) {
            if let ReadEnd::Again = Self::read_ready(slf)? {
                Self::queue_read(slf);
            }
        }
        Ok(())
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<ReadEnd> {
        let py = slf.py();
        let me = slf.get();
        for _ in 0..MAX_READS_PER_EVENT {
            let (go, bulk, protocol) =
                me.state.with(py, |s| (s.registered && !s.paused && !s.closing, s.bulk, s.protocol.as_ref().map(|p| p.clone_ref(py))));
            let Some(protocol) = protocol.filter(|_| go) else { return Ok(ReadEnd::Done) };
            let (step, bulk) = read_step(py, me.fd, bulk, sockio::read)?;
            me.state.with(py, |s| s.bulk = bulk);
            match step {
                ReadStep::Drained => return Ok(ReadEnd::Done),
                ReadStep::Failed(e) => {
                    Self::fatal_error(slf, os_error(&e), "Fatal read error on pipe transport")?;
                    return Ok(ReadEnd::Done);
                }
                ReadStep::Eof => {
                    Self::on_eof(slf)?;
                    return Ok(ReadEnd::Done);
                }
                ReadStep::Data(data) => {
                    if let Err(e) = protocol.bind(py).call_method1(intern!(py, "data_received"), (data,)) {
                        // Reported by the loop like a failed callback; the pipe keeps
                        // reading (edge-triggered: look again next iteration).
                        Self::queue_read(slf);
                        return Err(e);
                    }
                }
            }
        }
        Ok(ReadEnd::Again)
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.debug(py) {
            logger(py)?.call_method1("info", ("%r was closed by peer", me.owner(py)))?;
        }
        me.state.with(py, |s| {
            s.closing = true;
            s.lost = true;
        });
        me.unregister(py);
        let eof = me.protocol(py).bind(py).getattr(intern!(py, "eof_received"))?;
        me.call_soon(py, eof, PyTuple::empty(py))?;
        let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
        me.call_soon(py, cb, PyTuple::new(py, [py.None()])?)
    }

    /// A write pipe's reader went away (asyncio's `_read_ready` of a write pipe).
    fn peer_closed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.debug(py) {
            logger(py)?.call_method1("info", ("%r was closed by peer", me.owner(py)))?;
        }
        let exc =
            if me.state.with(py, |s| s.wq.is_empty()) { None } else { Some(PyErr::new::<pyo3::exceptions::PyBrokenPipeError, _>(())) };
        Self::close_with(slf, exc)
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        match me.state.with(py, |s| s.wq.flush_with(me.fd, writebuf::Vectored::Writev)) {
            Err(e) => {
                me.state.with(py, |s| {
                    s.wq.clear();
                    s.conn_lost += 1;
                });
                Self::fatal_error(slf, os_error(&e), "Fatal write error on pipe transport")
            }
            Ok(_) => {
                if !me.state.with(py, |s| s.wq.is_empty()) {
                    return Ok(());
                }
                Self::tell_flow(slf, false)?;
                // Closing (write_eof) waited for the queue to drain.
                let finish = me.state.with(py, |s| s.closing && !std::mem::replace(&mut s.lost, true));
                if finish {
                    me.unregister(py);
                    Self::call_connection_lost(slf, py.None().into_bound(py))?;
                }
                Ok(())
            }
        }
    }

    /// asyncio's `_fatal_error`: then the transport closes with `exc`.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let quiet = exc.is_instance_of::<PyOSError>(py)
            && (me.write || exc.value(py).getattr(intern!(py, "errno"))?.extract::<i32>().ok() == Some(libc::EIO));
        if quiet {
            if me.debug(py) {
                let kwargs = PyDict::new(py);
                kwargs.set_item("exc_info", exc.value(py))?;
                logger(py)?.call_method("debug", ("%r: %s", me.owner(py), message), Some(&kwargs))?;
            }
        } else {
            let ctx = PyDict::new(py);
            ctx.set_item("message", message)?;
            ctx.set_item("exception", exc.value(py))?;
            ctx.set_item("transport", me.owner(py))?;
            ctx.set_item("protocol", me.protocol(py))?;
            me.event_loop.bind(py).call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        }
        Self::close_with(slf, Some(exc))
    }

    /// asyncio's `_close`: stop at once, drop what is queued, queue connection_lost.
    fn close_with(slf: &Bound<'_, Self>, exc: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let go = me.state.with(py, |s| {
            s.closing = true;
            s.wq.clear();
            !std::mem::replace(&mut s.lost, true)
        });
        me.unregister(py);
        if go {
            let exc = exc.map_or_else(|| py.None().into_bound(py), |e| e.into_value(py).into_bound(py).into_any());
            let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
            me.call_soon(py, cb, PyTuple::new(py, [exc])?)?;
        }
        Ok(())
    }

    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let protocol = me.state.with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)));
        let result = match protocol {
            Some(p) => p.bind(py).call_method1(intern!(py, "connection_lost"), (exc,)).map(drop),
            None => Ok(()),
        };
        me.unregister(py);
        let (pipe, protocol, owner) = me.state.with(py, |s| (s.pipe.take(), s.protocol.take(), s.owner.take()));
        let closed = match &pipe {
            Some(p) => p.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        drop((pipe, protocol, owner));
        result.and(closed)
    }

    /// `pause_writing()` (`pause`) once the queue went above the high-water mark,
    /// or `resume_writing()` once it went down to the low one.
    fn tell_flow(slf: &Bound<'_, Self>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let crossed = me.state.with(py, |s| {
            if pause {
                flow_control::should_pause(s.wq.len(), s.high, &mut s.protocol_paused)
            } else {
                flow_control::should_resume(s.wq.len(), s.low, &mut s.protocol_paused)
            }
        });
        if crossed {
            let method = if pause { intern!(py, "pause_writing") } else { intern!(py, "resume_writing") };
            flow_control::tell_protocol(py, me.event_loop.bind(py).as_any(), me.owner(py), me.protocol(py), method)?;
        }
        Ok(())
    }
}

#[pymethods]
impl PipeTransportCore {
    /// `write`: a write pipe (else read); `watch_peer`: a write pipe that is a FIFO
    /// or socket. The Python wrapper has checked the file type and made the fd
    /// non-blocking.
    #[new]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, LoopCore>,
        pipe: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        owner: Bound<'_, PyAny>,
        write: bool,
        watch_peer: bool,
    ) -> PyResult<Self> {
        let fd: RawFd = pipe.call_method0("fileno")?.extract()?;
        Ok(PipeTransportCore {
            fd,
            write,
            watch_peer,
            event_loop: event_loop.unbind(),
            state: GilCell::new(PipeState {
                pipe: Some(pipe.unbind()),
                protocol: Some(protocol.unbind()),
                owner: Some(owner.unbind()),
                wq: WriteQueue::new(),
                closing: false,
                paused: false,
                conn_lost: 0,
                registered: false,
                lost: false,
                protocol_paused: false,
                bulk: false,
                high: flow_control::DEFAULT_HIGH,
                low: flow_control::DEFAULT_LOW,
                context: Some(io_context::copy_current(py)?),
                resumed: Armed::default(),
            }),
        })
    }

    /// Queued after `connection_made`, as asyncio adds its reader then. A write pipe
    /// to a character device that epoll refuses (`/dev/null`) is simply not
    /// watched: writes to it never block. A write pipe closed (`write_eof`) with
    /// data still queued, in `connection_made`, is watched all the same: asyncio
    /// watches for writability from the `write()` that queued, and only the
    /// drained queue ends the transport.
    fn _start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let idle = me.state.with(py, |s| s.pipe.is_none() || if me.write { s.lost } else { s.closing || s.paused });
        if idle {
            return Ok(());
        }
        match Self::register(slf) {
            Err(e) if me.write && e.is_instance_of::<pyo3::exceptions::PyPermissionError>(py) => return Ok(()),
            other => other?,
        }
        if !me.write {
            Self::queue_read(slf);
        }
        Ok(())
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.closing)
    }

    /// `pause_reading()` (`true`) / `resume_reading()` (`false`) by asyncio's rules;
    /// true when the state changed (the wrapper then logs it in debug mode). A
    /// paused pipe stays registered, held weakly (`event_loop::Held`): an edge while
    /// paused is ignored, and resuming looks again.
    fn _set_paused(slf: &Bound<'_, Self>, paused: bool) -> PyResult<bool> {
        let py = slf.py();
        let me = slf.get();
        let iteration = me.event_loop.get().iteration.get();
        let (changed, registered) = me.state.with(py, |s| {
            let change = !s.closing && s.paused != paused;
            s.paused ^= change;
            if change && !paused {
                s.resumed.arm(iteration);
            }
            (change, s.registered)
        });
        if changed && registered {
            me.event_loop.get().hold(py, me.fd, IoOwner::Pipe(slf.clone().unbind()), !paused)?;
        }
        if changed && !paused {
            io_context::renew(py, &me.state, |s| &mut s.context)?;
            Self::register(slf)?;
            Self::queue_read(slf);
        }
        Ok(changed)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.write {
            if me.state.with(py, |s| s.pipe.is_some() && !s.closing) {
                return Self::write_eof(slf);
            }
            return Ok(());
        }
        if !me.state.with(py, |s| s.closing) {
            return Self::close_with(slf, None);
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, None)
    }

    fn write(slf: &Bound<'_, Self>, data: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if !(data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()) {
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
        let buf = ReadBuf::get(&data)?;
        let bytes = buf.as_slice();
        if bytes.is_empty() {
            return Ok(());
        }
        let lost = me.state.with(py, |s| s.conn_lost);
        if lost > 0 || me.state.with(py, |s| s.closing) {
            if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1("warning", ("pipe closed by peer or os.write(pipe, data) raised exception.",))?;
            }
            me.state.with(py, |s| s.conn_lost += 1);
            return Ok(());
        }
        let mut sent = 0;
        if me.state.with(py, |s| s.wq.is_empty()) {
            match writebuf::write_vectored(me.fd, &[bytes]) {
                Ok(n) => sent = n,
                Err(e) if sockio::would_block(&e) => {}
                Err(e) => {
                    me.state.with(py, |s| s.conn_lost += 1);
                    return Self::fatal_error(slf, os_error(&e), "Fatal write error on pipe transport");
                }
            }
            if sent == bytes.len() {
                return Ok(());
            }
        }
        me.state.with(py, |s| s.wq.push(&bytes[sent..]));
        Self::tell_flow(slf, true)
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let finish = me.state.with(py, |s| {
            if s.closing {
                return false;
            }
            s.closing = true;
            s.wq.is_empty() && !std::mem::replace(&mut s.lost, true)
        });
        if finish {
            me.unregister(py);
            let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
            me.call_soon(py, cb, PyTuple::new(py, [py.None()])?)?;
        }
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.protocol(py)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self.state.with(py, |s| s.protocol.replace(protocol.unbind()));
        drop(old);
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let (high, low) = flow_control::water_marks(high, low)?;
        slf.get().state.with(slf.py(), |s| {
            s.high = high;
            s.low = low;
        });
        Self::tell_flow(slf, true)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.state.with(py, |s| (s.low, s.high))
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.with(py, |s| s.wq.len())
    }

    // ----- for the Python wrapper ----------------------------------------------------

    #[getter]
    fn _pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.pipe.as_ref().map(|o| o.clone_ref(py)))
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    /// The private state asyncio's pipe transports keep in attributes, for the
    /// wrapper's properties: `(closing, paused, conn_lost, protocol_paused, registered)`.
    fn _status(&self, py: Python<'_>) -> (bool, bool, u32, bool, bool) {
        self.state.with(py, |s| (s.closing, s.paused, s.conn_lost, s.protocol_paused, s.registered))
    }

    /// Stops watching the fd and lets go of the pipe, returned for the caller to
    /// close (an unclosed transport being collected) or not (`transport._pipe = None`).
    fn _detach(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.unregister(py);
        self.state.with(py, |s| s.pipe.take())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Some(s) = self.state.get_for_traverse() {
            visit.call(&s.pipe)?;
            visit.call(&s.protocol)?;
            visit.call(&s.owner)?;
            visit.call(&s.context)?;
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self.state.with(py, |s| (s.protocol.take(), s.owner.take(), s.context.take()));
        drop(taken);
    }
}
