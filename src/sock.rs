//! Low-level socket I/O on the loop: `sock_recv`, `sock_recv_into`, `sock_recvfrom`,
//! `sock_recvfrom_into`, `sock_sendall`, `sock_sendto`, `sock_connect`, `sock_accept`
//! (and the machinery `sock_sendfile` in `sendfile` runs on).
//!
//! In asyncio these are coroutines: nothing happens until the first `await` (or the
//! first step of the task they were given to), every error is raised there, and the
//! stdlib's `asyncio.create_task(loop.sock_recv(...))` must work. Each method here
//! returns a `SockOp`, a small Rust object that is a coroutine to asyncio (it has
//! `__await__`, `send`, `throw` and `close`, which is what `asyncio.iscoroutine` and
//! C `Task` look for) and a state machine inside: its first step runs asyncio's
//! checks and tries the syscall at once (the socket is non-blocking); only when that
//! would block does it create a future, register itself as the fd's reader or writer
//! callback through the loop's fd machinery, and yield the future. When the fd is
//! ready the loop calls the `SockOp` (`__call__`), which retries and completes the
//! future; the awaiting task then steps the `SockOp` once more for the result. The
//! fast path of a `sock_recv` whose data is already there is therefore one object,
//! one syscall and one `bytes`, with no future and no Python-level code.
//!
//! Cancelling the awaiting task throws into the `SockOp` (C `Task` throws
//! `CancelledError` into its coroutine, which delegates to us), which unregisters the
//! fd callback, playing the part of asyncio's `_sock_read_done` done-callback; like
//! that callback it only removes the fd's callback if it is still its own, so a
//! second concurrent reader on the same fd, which replaced it, is left alone.
//!
//! Plain `socket.socket` objects take the Rust syscalls of `ferroloop_core::sockio`
//! (recv, recv_into, send); anything else (subclasses, look-alikes, odd arguments
//! whose error message must match the socket module's) goes through the socket's own
//! methods, exactly as asyncio calls them. Operations that carry addresses
//! (`recvfrom`, `sendto`, `connect`, `accept`) always use the socket's methods, so
//! addresses of every family convert exactly as in the stdlib.

use std::os::fd::RawFd;

use ferroloop_core::sockio;
use pyo3::exceptions::{
    PyBaseException, PyBlockingIOError, PyInterruptedError, PyOSError, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError,
};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PySlice, PyTuple, PyType};

use crate::buffer::BufView;
use crate::event_loop::LoopCore;
use crate::fd_callbacks::{self, Direction};
use crate::flow_control::is_fatal;
use crate::gil_cell::GilCell;
use crate::sendfile::Sendfile;

/// Reads of up to this many bytes receive straight into a `bytes` of the size asked
/// for, shrunk in place to what came (as the socket module does): glibc serves
/// them from the heap (its default mmap threshold is 128 KiB), and one same-sized
/// block per read reuses freed blocks well. Copying out of a scratch buffer into a
/// `bytes` of the received size instead cost a memcpy per read and, with 64 KiB
/// reads on 10 connections, 0.30 `brk` per request (the heap top trimmed and
/// grown again, each page faulted back in): 46 against 29 µs of server CPU.
const DIRECT_MAX: usize = 128 * 1024;

/// Reads above `DIRECT_MAX` and up to this many bytes go through one reused buffer
/// and are copied into a `bytes` of the received size, so a
/// `sock_recv(sock, 256 * 1024)` costs no mmap/munmap pair per call; larger
/// requests allocate their `bytes` directly.
const SCRATCH_MAX: usize = 256 * 1024;

static RECV_SCRATCH: GilCell<Vec<u8>> = GilCell::new(Vec::new());

extern "C" {
    // Part of CPython's ABI on every supported version (pyo3-ffi keeps its binding
    // private): shrink a fresh bytes object in place.
    fn _PyBytes_Resize(bytes: *mut *mut pyo3::ffi::PyObject, newsize: pyo3::ffi::Py_ssize_t) -> std::os::raw::c_int;
}

/// What one attempt at the syscall gave: `Ok(Some(result))`, `Ok(None)` for "would
/// block, wait for readiness", or the error to raise.
pub type Attempt = PyResult<Option<Py<PyAny>>>;

/// What stepping the coroutine gives: a future to wait on, or its return value.
pub enum Step {
    Yield(Py<PyAny>),
    Return(Py<PyAny>),
}

/// The operation and its arguments.
pub enum Op {
    Recv {
        n: Py<PyAny>,
        fast_n: usize,
    },
    RecvInto {
        buf: Py<PyAny>,
    },
    RecvFrom {
        bufsize: Py<PyAny>,
    },
    RecvFromInto {
        buf: Py<PyAny>,
        nbytes: Py<PyAny>,
    },
    /// `view` (fast path) or `memview` (socket-method path) is taken once the first
    /// send did not take everything: it pins the data until the last byte is sent.
    SendAll {
        data: Py<PyAny>,
        view: Option<BufView>,
        memview: Option<Py<PyAny>>,
        pos: usize,
    },
    SendTo {
        data: Py<PyAny>,
        address: Py<PyAny>,
    },
    Connect {
        address: Py<PyAny>,
    },
    Accept,
    Sendfile(Box<Sendfile>),
    /// After `__clear__` (garbage collection broke a cycle through us).
    Cleared,
}

pub enum Stage {
    /// Created, not stepped yet: nothing has happened (like an unstarted coroutine).
    Start,
    /// Running Rust code between two states (also what a re-entrant step would see).
    Running,
    /// Waiting for the fd: our callback is registered (`registered`) and the awaiting
    /// task waits on `fut`, which the callback completes.
    Io {
        fut: Py<PyAny>,
        dir: Direction,
        registered: bool,
    },
    /// Awaiting another awaitable (name resolution, an executor read, a nested
    /// `sock_sendall`), whose iterator we drive as `yield from` would.
    Delegate {
        iter: Py<PyAny>,
    },
    Done,
}

#[pyclass(module = "ferroloop._ferroloop", name = "SockOp")]
pub struct SockOp {
    pub event_loop: Py<LoopCore>,
    pub sock: Py<PyAny>,
    /// The socket's fd when the Rust syscalls are used, else -1 until needed.
    pub fd: RawFd,
    /// True when `sock` is a plain `socket.socket`: Rust syscalls on `fd`.
    pub fast: bool,
    pub op: Op,
    pub stage: Stage,
    name: &'static str,
}

// ----- constructors (the loop methods) -------------------------------------------------

fn new_op(slf: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>, op: Op, name: &'static str) -> PyResult<Py<SockOp>> {
    let op = SockOp { event_loop: slf.clone().unbind(), sock: sock.unbind(), fd: -1, fast: false, op, stage: Stage::Start, name };
    Py::new(slf.py(), op)
}

pub fn recv(slf: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>, n: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::Recv { n: n.unbind(), fast_n: 0 }, "sock_recv")
}

pub fn recv_into(slf: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>, buf: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::RecvInto { buf: buf.unbind() }, "sock_recv_into")
}

pub fn recvfrom(slf: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>, bufsize: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::RecvFrom { bufsize: bufsize.unbind() }, "sock_recvfrom")
}

pub fn recvfrom_into(
    slf: &Bound<'_, LoopCore>,
    sock: Bound<'_, PyAny>,
    buf: Bound<'_, PyAny>,
    nbytes: Bound<'_, PyAny>,
) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::RecvFromInto { buf: buf.unbind(), nbytes: nbytes.unbind() }, "sock_recvfrom_into")
}

pub fn sendall(slf: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>, data: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::SendAll { data: data.unbind(), view: None, memview: None, pos: 0 }, "sock_sendall")
}

pub fn sendto(
    slf: &Bound<'_, LoopCore>,
    sock: Bound<'_, PyAny>,
    data: Bound<'_, PyAny>,
    address: Bound<'_, PyAny>,
) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::SendTo { data: data.unbind(), address: address.unbind() }, "sock_sendto")
}

pub fn connect(slf: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>, address: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::Connect { address: address.unbind() }, "sock_connect")
}

pub fn accept(slf: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
    new_op(slf, sock, Op::Accept, "sock_accept")
}

pub fn sendfile(
    slf: &Bound<'_, LoopCore>,
    sock: Bound<'_, PyAny>,
    file: Bound<'_, PyAny>,
    offset: Bound<'_, PyAny>,
    count: Bound<'_, PyAny>,
    fallback: Bound<'_, PyAny>,
) -> PyResult<Py<SockOp>> {
    let sf = Sendfile::new(file, offset, count, fallback);
    new_op(slf, sock, Op::Sendfile(Box::new(sf)), "sock_sendfile")
}

// ----- shared helpers --------------------------------------------------------------

/// `OSError(errno, strerror)`, which Python turns into the matching subclass
/// (`ConnectionResetError`, `BrokenPipeError`...), exactly as the socket module does.
pub fn os_error(err: &std::io::Error) -> PyErr {
    let code = err.raw_os_error().unwrap_or(libc::EIO);
    PyOSError::new_err((code, sockio::strerror(code)))
}

/// asyncio retries after these (`BlockingIOError`, `InterruptedError`).
pub fn is_retry(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

/// The result of calling one of the socket's own methods, as an attempt.
fn method_attempt(py: Python<'_>, result: PyResult<Bound<'_, PyAny>>) -> Attempt {
    match result {
        Ok(v) => Ok(Some(v.unbind())),
        Err(e) if is_retry(py, &e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn socket_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static SOCKET: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    SOCKET.import(py, "socket", "socket")
}

/// `base_events._check_ssl_socket`: TypeError for an `ssl.SSLSocket`.
pub fn check_ssl_socket(py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    static SSL_SOCKET: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();
    let ssl_socket = SSL_SOCKET.get_or_init(py, || py.import("ssl").and_then(|m| m.getattr("SSLSocket")).ok().map(Bound::unbind));
    if let Some(cls) = ssl_socket {
        if sock.is_instance(cls.bind(py))? {
            return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
        }
    }
    Ok(())
}

/// asyncio's debug-mode guard: `sock.gettimeout() != 0` raises ValueError.
pub fn check_nonblocking(py: Python<'_>, event_loop: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    if event_loop.get().state.with(py, |s| s.debug) {
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
        if timeout.ne(0)? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
    }
    Ok(())
}

/// The fd to register a callback for (selectors' checks: -1 is a ValueError).
fn fileno(sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    fd_callbacks::fileobj_to_fd(&sock.call_method0(intern!(sock.py(), "fileno"))?)
}

/// The fd for a syscall: a closed socket's -1 is kept, so the syscall fails with
/// EBADF as the socket module's own call does.
pub fn raw_fileno(sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    sock.call_method0(intern!(sock.py(), "fileno"))?.extract()
}

/// `slice(start, stop)` with step None, each bound None when not given, as Python's
/// `x[start:stop]` builds it.
///
/// Not `PySlice::new`: PyO3 0.30's passes three fresh ints (`PyLong_FromSsize_t`)
/// to `PySlice_New`, which takes references of its own and does not steal them, so
/// every call leaked its ints. Those above 256 are real allocations (36 bytes for
/// the `isize::MAX` of an open-ended slice): one per `sock_connect` to an IP
/// address, per partial send of a socket-method `sock_sendall`, per block of a
/// `sock_sendfile` fallback.
pub fn slice(py: Python<'_>, start: Option<isize>, stop: Option<isize>) -> PyResult<Bound<'_, PySlice>> {
    let start = start.map(|v| v.into_pyobject(py)).transpose()?;
    let stop = stop.map(|v| v.into_pyobject(py)).transpose()?;
    let ptr = |b: &Option<Bound<'_, pyo3::types::PyInt>>| b.as_ref().map_or(std::ptr::null_mut(), |b| b.as_ptr());
    // SAFETY: the GIL is held; `start` and `stop` are live ints (or NULL, which
    // PySlice_New reads as None) that it only borrows, taking references of its own,
    // while we keep ours and drop them at the end of this function. It returns a new
    // reference to a `slice` object, or NULL with an exception set, which
    // `from_owned_ptr_or_err` turns into the error, so the cast to PySlice is exact.
    unsafe {
        let obj = pyo3::ffi::PySlice_New(ptr(&start), ptr(&stop), std::ptr::null_mut());
        Ok(Bound::from_owned_ptr_or_err(py, obj)?.cast_into_unchecked())
    }
}

fn stop_iteration(value: Py<PyAny>) -> PyErr {
    PyStopIteration::new_err((value,))
}

/// Builds the exception `throw(typ, val, tb)` raises, with generators' rules.
fn exception_from_throw(
    py: Python<'_>,
    typ: Bound<'_, PyAny>,
    val: Option<Bound<'_, PyAny>>,
    tb: Option<Bound<'_, PyAny>>,
) -> PyResult<PyErr> {
    let exc = if typ.is_instance_of::<PyBaseException>() {
        if val.as_ref().is_some_and(|v| !v.is_none()) {
            return Err(PyTypeError::new_err("instance exception may not have a separate value"));
        }
        typ
    } else if typ.is_instance_of::<PyType>() && typ.cast::<PyType>()?.is_subclass_of::<PyBaseException>()? {
        match val {
            Some(v) if v.is_instance(&typ)? => v,
            Some(v) if v.is_none() => typ.call0()?,
            Some(v) if v.is_instance_of::<PyTuple>() => typ.call1(v.cast_into::<PyTuple>()?)?,
            Some(v) => typ.call1((v,))?,
            None => typ.call0()?,
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "exceptions must be classes or instances deriving from BaseException, not {}",
            typ.get_type().name()?
        )));
    };
    if let Some(tb) = tb.filter(|t| !t.is_none()) {
        exc.call_method1(intern!(py, "with_traceback"), (tb,))?;
    }
    Ok(PyErr::from_value(exc))
}

enum Sent {
    Next(Py<PyAny>),
    Return(Py<PyAny>),
}

/// `iter.send(value)` without an exception for the return value (`PyIter_Send`).
fn iter_send(py: Python<'_>, iter: &Bound<'_, PyAny>, value: Option<&Bound<'_, PyAny>>) -> PyResult<Sent> {
    let arg = value.map_or_else(|| py.None().into_bound(py), |v| v.clone());
    let mut result: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `iter` and `arg` are live objects (GIL held); `result` receives a new
    // reference (or NULL on error, with the exception set), per PyIter_Send's contract.
    let status = unsafe { pyo3::ffi::PyIter_Send(iter.as_ptr(), arg.as_ptr(), &mut result) };
    match status {
        pyo3::ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
        // SAFETY: on PYGEN_NEXT/PYGEN_RETURN `result` is a new, non-NULL reference.
        pyo3::ffi::PySendResult::PYGEN_NEXT => Ok(Sent::Next(unsafe { Bound::from_owned_ptr(py, result).unbind() })),
        // SAFETY: as above.
        pyo3::ffi::PySendResult::PYGEN_RETURN => Ok(Sent::Return(unsafe { Bound::from_owned_ptr(py, result).unbind() })),
    }
}

/// `iter.throw(exc)`, the return value of a finished iterator taken out of its
/// `StopIteration`. An iterator without `throw` gets the exception raised in place.
fn iter_throw(py: Python<'_>, iter: &Bound<'_, PyAny>, err: PyErr) -> PyResult<Sent> {
    let Some(throw) = iter.getattr_opt(intern!(py, "throw"))? else {
        return Err(err);
    };
    match throw.call1((err.into_value(py),)) {
        Ok(v) => Ok(Sent::Next(v.unbind())),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => Ok(Sent::Return(e.value(py).getattr(intern!(py, "value"))?.unbind())),
        Err(e) => Err(e),
    }
}

// ----- the syscalls of the fast path -----------------------------------------------

/// One `recv` of up to `n` bytes into a new `bytes`.
fn recv_bytes(py: Python<'_>, fd: RawFd, n: usize) -> Attempt {
    if n == 0 {
        // The socket module returns b'' without a syscall (which could EAGAIN).
        return Ok(Some(PyBytes::new(py, b"").into_any().unbind()));
    }
    if n > DIRECT_MAX && n <= SCRATCH_MAX {
        return RECV_SCRATCH.with(py, |buf| {
            if buf.len() < n {
                buf.resize(n, 0);
            }
            match sockio::recv(fd, &mut buf[..n]) {
                Ok(got) => Ok(Some(PyBytes::new(py, &buf[..got]).into_any().unbind())),
                Err(e) if sockio::would_block(&e) => Ok(None),
                Err(e) => Err(os_error(&e)),
            }
        });
    }
    // SAFETY: creates an uninitialised bytes object of `n` bytes that we own alone;
    // it is filled by recv, then shrunk in place to what was received (or freed).
    unsafe {
        let mut obj = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as pyo3::ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let data = std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(obj) as *mut u8, n);
        match sockio::recv(fd, data) {
            Ok(got) => {
                if got != n && _PyBytes_Resize(&mut obj, got as pyo3::ffi::Py_ssize_t) != 0 {
                    return Err(PyErr::fetch(py)); // _PyBytes_Resize freed it
                }
                Ok(Some(Bound::from_owned_ptr(py, obj).unbind()))
            }
            Err(e) => {
                pyo3::ffi::Py_DECREF(obj);
                if sockio::would_block(&e) {
                    Ok(None)
                } else {
                    Err(os_error(&e))
                }
            }
        }
    }
}

fn recv_into_view(py: Python<'_>, fd: RawFd, view: &mut BufView) -> Attempt {
    if view.len() == 0 {
        return Ok(Some(0u8.into_pyobject(py)?.into_any().unbind())); // as the socket module
    }
    match sockio::recv(fd, view.as_mut_slice()) {
        Ok(got) => Ok(Some(got.into_pyobject(py)?.into_any().unbind())),
        Err(e) if sockio::would_block(&e) => Ok(None),
        Err(e) => Err(os_error(&e)),
    }
}

// ----- the state machine -----------------------------------------------------------

impl SockOp {
    fn loop_bound<'py>(&self, py: Python<'py>) -> Bound<'py, LoopCore> {
        self.event_loop.bind(py).clone()
    }

    /// One step: the first runs the operation, later ones collect what we waited on.
    fn resume(&mut self, me: &Bound<'_, PyAny>, value: Option<&Bound<'_, PyAny>>) -> PyResult<Step> {
        let py = me.py();
        match std::mem::replace(&mut self.stage, Stage::Running) {
            Stage::Start => {
                if value.is_some_and(|v| !v.is_none()) {
                    self.stage = Stage::Done;
                    return Err(PyTypeError::new_err("can't send non-None value to a just-started coroutine"));
                }
                let result = self.start(me);
                self.fail_guard(py, result)
            }
            Stage::Io { fut, dir, registered } => {
                let f = fut.bind(py);
                if !f.call_method0(intern!(py, "done"))?.is_truthy()? {
                    // Stepped before the future is done: yield it again, as a future's
                    // own iterator would.
                    f.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
                    self.stage = Stage::Io { fut: fut.clone_ref(py), dir, registered };
                    return Ok(Step::Yield(fut));
                }
                if registered {
                    fd_callbacks::remove_own(&self.loop_bound(py), self.fd, dir, me);
                }
                let result = f.call_method0(intern!(py, "result")).and_then(|v| self.after_done(me, v.unbind()));
                self.fail_guard(py, result)
            }
            Stage::Delegate { iter } => {
                let sent = iter_send(py, iter.bind(py), value);
                self.stage = Stage::Delegate { iter };
                let result = self.on_delegate(me, sent);
                self.fail_guard(py, result)
            }
            Stage::Running => Err(PyRuntimeError::new_err(format!("{} is already running", self.name))),
            Stage::Done => {
                self.stage = Stage::Done;
                Err(PyRuntimeError::new_err("cannot reuse already awaited coroutine"))
            }
        }
    }

    /// On an error leaving the machine, run the operation's cleanup and end.
    fn fail_guard(&mut self, py: Python<'_>, result: PyResult<Step>) -> PyResult<Step> {
        match result {
            Ok(Step::Return(v)) => {
                self.stage = Stage::Done;
                self.release();
                Ok(Step::Return(v))
            }
            Ok(step) => Ok(step),
            Err(e) => {
                self.stage = Stage::Done;
                let e = self.on_error_cleanup(py, e);
                self.release();
                Err(e)
            }
        }
    }

    /// Drops what pins the caller's data once the operation is over.
    fn release(&mut self) {
        if let Op::SendAll { view, memview, .. } = &mut self.op {
            *view = None;
            *memview = None;
        }
    }

    fn on_error_cleanup(&mut self, py: Python<'_>, err: PyErr) -> PyErr {
        match &mut self.op {
            Op::Sendfile(sf) => sf.on_error(py, err),
            _ => err,
        }
    }

    fn on_delegate(&mut self, me: &Bound<'_, PyAny>, sent: PyResult<Sent>) -> PyResult<Step> {
        match sent? {
            Sent::Next(y) => Ok(Step::Yield(y)),
            Sent::Return(v) => {
                self.stage = Stage::Running;
                self.after_delegate(me, v.into_bound(me.py()))
            }
        }
    }

    /// Starts awaiting `awaitable` (its `__await__` iterator) and steps it once.
    pub fn delegate(&mut self, me: &Bound<'_, PyAny>, awaitable: Bound<'_, PyAny>) -> PyResult<Step> {
        let py = me.py();
        let iter = awaitable.call_method0(intern!(py, "__await__"))?;
        let sent = iter_send(py, &iter, None);
        self.stage = Stage::Delegate { iter: iter.unbind() };
        self.on_delegate(me, sent)
    }

    /// The first step: asyncio's checks, then the immediate attempt.
    fn start(&mut self, me: &Bound<'_, PyAny>) -> PyResult<Step> {
        let py = me.py();
        let sock = self.sock.bind(py).clone();
        let event_loop = self.loop_bound(py);
        if let Op::Sendfile(_) = self.op {
            return crate::sendfile::start(self, me);
        }
        self.fast = sock.get_type().is(socket_type(py)?);
        if !self.fast {
            check_ssl_socket(py, &sock)?;
        }
        check_nonblocking(py, &event_loop, &sock)?;
        if self.fast {
            self.fd = raw_fileno(&sock)?;
        }
        let dir = match &mut self.op {
            Op::Recv { n, fast_n } => {
                match (self.fast, n.bind(py).extract::<isize>()) {
                    (true, Ok(v)) if v >= 0 => *fast_n = v as usize,
                    _ => self.fast = false, // the socket module raises the right error
                }
                Direction::Read
            }
            Op::RecvFromInto { buf, nbytes } => {
                if !nbytes.bind(py).is_truthy()? {
                    *nbytes = buf.bind(py).len()?.into_pyobject(py)?.into_any().unbind();
                }
                Direction::Read
            }
            Op::RecvInto { .. } | Op::RecvFrom { .. } | Op::Accept => Direction::Read,
            Op::SendAll { .. } | Op::SendTo { .. } => Direction::Write,
            Op::Connect { .. } => return self.start_connect(me),
            Op::Sendfile(_) | Op::Cleared => unreachable!(),
        };
        let outcome = self.attempt(py, true);
        self.conclude(me, outcome, dir)
    }

    /// After an attempt: done, wait for the fd, or fail.
    pub fn conclude(&mut self, me: &Bound<'_, PyAny>, outcome: Attempt, dir: Direction) -> PyResult<Step> {
        match outcome? {
            Some(v) => self.after_done(me, v),
            None => self.wait(me, dir),
        }
    }

    /// The operation completed with `v` (immediately or through the future).
    fn after_done(&mut self, me: &Bound<'_, PyAny>, v: Py<PyAny>) -> PyResult<Step> {
        if let Op::Sendfile(_) = self.op {
            return crate::sendfile::after_done(self, me, v);
        }
        Ok(Step::Return(v))
    }

    fn after_delegate(&mut self, me: &Bound<'_, PyAny>, v: Bound<'_, PyAny>) -> PyResult<Step> {
        match &self.op {
            Op::Connect { .. } => {
                // `_ensure_resolved` returned getaddrinfo's list: connect to the first.
                let address = v.get_item(0)?.get_item(4)?;
                self.connect_now(me, address)
            }
            Op::Sendfile(_) => crate::sendfile::after_delegate(self, me, v),
            _ => Ok(Step::Return(v.unbind())),
        }
    }

    /// A receive through the Rust syscalls: it waits only after `EAGAIN`, so its
    /// fd needs no level-triggered re-arming (see `fd_callbacks::needs_rearm`).
    pub fn retries_until_eagain(&self) -> bool {
        self.fast && matches!(self.op, Op::Recv { .. } | Op::RecvInto { .. })
    }

    /// Registers this operation as the fd's callback and yields a new future.
    pub fn wait(&mut self, me: &Bound<'_, PyAny>, dir: Direction) -> PyResult<Step> {
        let py = me.py();
        let event_loop = self.loop_bound(py);
        if self.fd < 0 || !self.fast {
            self.fd = fileno(self.sock.bind(py))?;
        }
        if let Op::SendAll { data, view, memview, .. } = &mut self.op {
            // Pin the data until it is all sent, as asyncio's memoryview does.
            if self.fast {
                *view = Some(BufView::get(data.bind(py), false)?);
            } else {
                *memview = Some(py.import("builtins")?.getattr("memoryview")?.call1((data.bind(py),))?.unbind());
            }
        }
        let fut = event_loop.call_method0(intern!(py, "create_future"))?;
        let after_eagain = self.retries_until_eagain().then(|| self.sock.bind(py));
        fd_callbacks::add_fd(&event_loop, self.fd, me.clone(), PyTuple::empty(py), dir, after_eagain)?;
        fut.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        self.stage = Stage::Io { fut: fut.clone().unbind(), dir, registered: true };
        Ok(Step::Yield(fut.unbind()))
    }

    /// One try of the syscall. `first` tells the immediate attempt from the retries
    /// the fd callback makes (they differ for connect and sendto, as in asyncio).
    fn attempt(&mut self, py: Python<'_>, first: bool) -> Attempt {
        let sock = self.sock.bind(py);
        match &mut self.op {
            Op::Recv { n, fast_n } => {
                if self.fast {
                    recv_bytes(py, self.fd, *fast_n)
                } else {
                    method_attempt(py, sock.call_method1(intern!(py, "recv"), (n.bind(py),)))
                }
            }
            Op::RecvInto { buf } => {
                if self.fast {
                    if let Ok(mut view) = BufView::get(buf.bind(py), true) {
                        return recv_into_view(py, self.fd, &mut view);
                    }
                }
                // Not a writable buffer: the socket module raises its own error.
                method_attempt(py, sock.call_method1(intern!(py, "recv_into"), (buf.bind(py),)))
            }
            Op::RecvFrom { bufsize } => method_attempt(py, sock.call_method1(intern!(py, "recvfrom"), (bufsize.bind(py),))),
            Op::RecvFromInto { buf, nbytes } => {
                method_attempt(py, sock.call_method1(intern!(py, "recvfrom_into"), (buf.bind(py), nbytes.bind(py))))
            }
            Op::SendAll { data, view, memview, pos } => {
                if first {
                    // asyncio: n = sock.send(data); done if n == len(data).
                    if self.fast {
                        if let Ok(v) = BufView::get(data.bind(py), false) {
                            return match sockio::send(self.fd, v.as_slice()) {
                                Ok(n) if n == v.len() => Ok(Some(py.None())),
                                Ok(n) => {
                                    *pos = n;
                                    Ok(None)
                                }
                                Err(e) if sockio::would_block(&e) => Ok(None),
                                Err(e) => Err(os_error(&e)),
                            };
                        }
                        self.fast = false; // not a buffer: let the socket module say so
                    }
                    let n = match method_attempt(py, sock.call_method1(intern!(py, "send"), (data.bind(py),)))? {
                        Some(n) => n.bind(py).extract::<usize>()?,
                        None => 0,
                    };
                    if n == data.bind(py).len()? {
                        return Ok(Some(py.None()));
                    }
                    *pos = n;
                    return Ok(None);
                }
                if let Some(v) = view {
                    let total = v.len();
                    match sockio::send(self.fd, &v.as_slice()[*pos..]) {
                        Ok(n) => {
                            *pos += n;
                            Ok(if *pos == total { Some(py.None()) } else { None })
                        }
                        Err(e) if sockio::would_block(&e) => Ok(None),
                        Err(e) => Err(os_error(&e)),
                    }
                } else {
                    let mv = memview.as_ref().expect("pinned while waiting").bind(py);
                    let rest = mv.get_item(slice(py, Some(*pos as isize), None)?)?;
                    match method_attempt(py, sock.call_method1(intern!(py, "send"), (rest,)))? {
                        Some(n) => {
                            *pos += n.bind(py).extract::<usize>()?;
                            Ok(if *pos == mv.len()? { Some(py.None()) } else { None })
                        }
                        None => Ok(None),
                    }
                }
            }
            Op::SendTo { data, address } => {
                let res = if first {
                    sock.call_method1(intern!(py, "sendto"), (data.bind(py), address.bind(py)))
                } else {
                    sock.call_method1(intern!(py, "sendto"), (data.bind(py), 0, address.bind(py)))
                };
                method_attempt(py, res)
            }
            Op::Connect { address } => {
                if first {
                    return method_attempt(
                        py,
                        sock.call_method1(intern!(py, "connect"), (address.bind(py),)).map(|_| py.None().into_bound(py)),
                    );
                }
                // asyncio's _sock_connect_cb: the outcome is in SO_ERROR.
                match sockio::take_socket_error(self.fd) {
                    Ok(0) => Ok(Some(py.None())),
                    Ok(err) => Err(PyOSError::new_err((err, format!("Connect call failed {}", address.bind(py).str()?)))),
                    Err(e) if sockio::would_block(&e) => Ok(None),
                    Err(e) => Err(os_error(&e)),
                }
            }
            Op::Accept => {
                let pair = match method_attempt(py, sock.call_method0(intern!(py, "accept")))? {
                    Some(p) => p,
                    None => return Ok(None),
                };
                pair.bind(py).get_item(0)?.call_method1(intern!(py, "setblocking"), (false,))?;
                Ok(Some(pair))
            }
            Op::Sendfile(_) => crate::sendfile::attempt(self, py, first),
            Op::Cleared => Ok(Some(py.None())),
        }
    }

    /// `sock_connect`: resolve (numeric addresses skip getaddrinfo), then connect.
    fn start_connect(&mut self, me: &Bound<'_, PyAny>) -> PyResult<Step> {
        static IPADDR_INFO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = me.py();
        let sock = self.sock.bind(py).clone();
        let Op::Connect { address } = &self.op else { unreachable!() };
        let address = address.bind(py).clone();
        let family: i32 = sock.getattr(intern!(py, "family"))?.extract()?;
        if family != libc::AF_INET && family != libc::AF_INET6 {
            return self.connect_now(me, address);
        }
        // asyncio's _ensure_resolved(address, family=, type=, proto=).
        let (stype, proto) = (sock.getattr(intern!(py, "type"))?, sock.getattr(intern!(py, "proto"))?);
        let head = address.get_item(slice(py, None, Some(2))?)?;
        let parts: Vec<Bound<'_, PyAny>> = head.try_iter()?.collect::<PyResult<_>>()?;
        let [host, port] = <[Bound<'_, PyAny>; 2]>::try_from(parts)
            .map_err(|p| PyValueError::new_err(format!("not enough values to unpack (expected 2, got {})", p.len())))?;
        let rest = address.get_item(slice(py, Some(2), None)?)?;
        let mut args = vec![host.clone(), port.clone(), family.into_pyobject(py)?.into_any(), stype.clone(), proto.clone()];
        args.extend(rest.try_iter()?.collect::<PyResult<Vec<_>>>()?);
        let ipaddr_info = IPADDR_INFO.import(py, "asyncio.base_events", "_ipaddr_info")?;
        let info = ipaddr_info.call1(PyTuple::new(py, args)?)?;
        if !info.is_none() {
            return self.connect_now(me, info.get_item(4)?);
        }
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("family", family)?;
        kwargs.set_item("type", stype)?;
        kwargs.set_item("proto", proto)?;
        kwargs.set_item("flags", 0)?;
        let resolving = self.loop_bound(py).call_method(intern!(py, "getaddrinfo"), (host, port), Some(&kwargs))?;
        self.delegate(me, resolving)
    }

    fn connect_now(&mut self, me: &Bound<'_, PyAny>, address: Bound<'_, PyAny>) -> PyResult<Step> {
        let py = me.py();
        self.op = Op::Connect { address: address.unbind() };
        self.fd = raw_fileno(self.sock.bind(py))?;
        let outcome = self.attempt(py, true);
        self.conclude(me, outcome, Direction::Write)
    }

    /// The fd is ready (the loop calls us as the fd's reader/writer callback).
    fn on_ready(&mut self, me: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = me.py();
        let (fut, dir) = match &self.stage {
            Stage::Io { fut, dir, registered: true } => (fut.clone_ref(py), *dir),
            _ => return Ok(()),
        };
        let fut = fut.bind(py);
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Cancelled (perhaps directly, with no task to throw into us): stop
            // watching now, as asyncio's done-callback does, or the level-triggered
            // fd would call us forever.
            fd_callbacks::remove_own(&self.loop_bound(py), self.fd, dir, me);
            self.stage = Stage::Io { fut: fut.clone().unbind(), dir, registered: false };
            return Ok(());
        }
        let outcome = match self.attempt(py, false) {
            Ok(None) => return Ok(()), // not yet: level-triggered, we are called again
            Err(e) if is_fatal(py, &e) => return Err(e),
            other => other,
        };
        if self.retries_until_eagain() && outcome.is_ok() {
            fd_callbacks::remove_own_lingering(&self.loop_bound(py), self.fd, dir, me, self.sock.bind(py));
        } else {
            fd_callbacks::remove_own(&self.loop_bound(py), self.fd, dir, me);
        }
        self.stage = Stage::Io { fut: fut.clone().unbind(), dir, registered: false };
        match outcome {
            Ok(Some(v)) => fut.call_method1(intern!(py, "set_result"), (v,))?,
            Ok(None) => unreachable!(),
            Err(e) => fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?,
        };
        Ok(())
    }

    /// Ends a wait early (the task was cancelled, or the coroutine closed): the fd
    /// callback goes; the future is left alone, as a future's own iterator leaves it
    /// (cancelling it would wake the task again, or fail on a closed loop).
    fn abandon_io(&mut self, me: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = me.py();
        if let Stage::Io { dir, registered: true, .. } = std::mem::replace(&mut self.stage, Stage::Running) {
            fd_callbacks::remove_own(&self.loop_bound(py), self.fd, dir, me);
        }
        Ok(())
    }

    fn throw_in(&mut self, me: &Bound<'_, PyAny>, err: PyErr) -> PyResult<Step> {
        let py = me.py();
        match std::mem::replace(&mut self.stage, Stage::Running) {
            Stage::Start | Stage::Done => {
                self.stage = Stage::Done;
                Err(err)
            }
            io @ Stage::Io { .. } => {
                // C `Task` delivers our future's exception by throwing it into us:
                // that is the operation failing, not being abandoned.
                let own_failure = match &io {
                    Stage::Io { fut, .. } => {
                        let f = fut.bind(py);
                        f.call_method0(intern!(py, "done"))?.is_truthy()? && !f.call_method0(intern!(py, "cancelled"))?.is_truthy()?
                    }
                    _ => false,
                };
                self.stage = io;
                let err = match self.abandon_io(me) {
                    Ok(()) => err,
                    Err(e) => e,
                };
                let err = match &mut self.op {
                    Op::Sendfile(sf) if own_failure => sf.on_error(py, err),
                    Op::Sendfile(sf) => sf.on_abandon(py, err),
                    _ => err,
                };
                self.stage = Stage::Done;
                self.release();
                Err(err)
            }
            Stage::Delegate { iter } => {
                let sent = iter_throw(py, iter.bind(py), err);
                self.stage = Stage::Delegate { iter };
                let result = self.on_delegate(me, sent);
                self.fail_guard(py, result)
            }
            Stage::Running => {
                self.stage = Stage::Running;
                Err(PyRuntimeError::new_err(format!("{} is already running", self.name)))
            }
        }
    }

    fn close_op(&mut self, me: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = me.py();
        let result = match std::mem::replace(&mut self.stage, Stage::Running) {
            io @ Stage::Io { .. } => {
                self.stage = io;
                self.abandon_io(me)
            }
            Stage::Delegate { iter } => match iter.bind(py).getattr_opt(intern!(py, "close"))? {
                Some(close) => close.call0().map(drop),
                None => Ok(()),
            },
            _ => Ok(()),
        };
        if let Op::Sendfile(sf) = &mut self.op {
            sf.on_close(py);
        }
        self.stage = Stage::Done;
        self.release();
        result
    }

    /// One step of the coroutine, `value` sent into it (`None`: `__next__`). What
    /// `__next__`, `send` and the raw `am_send` slot (`fastcall::sockop_send`) share.
    pub fn step(slf: &Bound<'_, Self>, value: Option<&Bound<'_, PyAny>>) -> PyResult<Step> {
        slf.try_borrow_mut()?.resume(slf.as_any(), value)
    }
}

#[pymethods]
impl SockOp {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let step = Self::step(slf, None)?;
        match step {
            Step::Yield(y) => Ok(Some(y)),
            Step::Return(v) if v.is_none(slf.py()) => Ok(None),
            Step::Return(v) => Err(stop_iteration(v)),
        }
    }

    fn send(slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let step = Self::step(slf, Some(&value))?;
        match step {
            Step::Yield(y) => Ok(y),
            Step::Return(v) => Err(stop_iteration(v)),
        }
    }

    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let err = exception_from_throw(slf.py(), typ, val, tb)?;
        let step = slf.try_borrow_mut()?.throw_in(slf.as_any(), err)?;
        match step {
            Step::Yield(y) => Ok(y),
            Step::Return(v) => Err(stop_iteration(v)),
        }
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.try_borrow_mut()?.close_op(slf.as_any())
    }

    /// The fd callback: the loop calls this when the fd is ready.
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.try_borrow_mut()?.on_ready(slf.as_any())
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        self.name
    }

    #[getter]
    fn __qualname__(&self) -> String {
        format!("Loop.{}", self.name)
    }

    #[getter]
    fn cr_running(&self) -> bool {
        matches!(self.stage, Stage::Running)
    }

    fn __repr__(&self) -> String {
        let state = match self.stage {
            Stage::Start => "created",
            Stage::Running => "running",
            Stage::Io { .. } => "waiting for the socket",
            Stage::Delegate { .. } => "awaiting",
            Stage::Done => "done",
        };
        format!("<SockOp {} {}>", self.name, state)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        match &self.stage {
            Stage::Io { fut, .. } => visit.call(fut)?,
            Stage::Delegate { iter } => visit.call(iter)?,
            _ => {}
        }
        match &self.op {
            Op::Recv { n, .. } => visit.call(n)?,
            Op::RecvInto { buf } => visit.call(buf)?,
            Op::RecvFrom { bufsize } => visit.call(bufsize)?,
            Op::RecvFromInto { buf, nbytes } => {
                visit.call(buf)?;
                visit.call(nbytes)?;
            }
            Op::SendAll { data, memview, .. } => {
                visit.call(data)?;
                visit.call(memview)?;
            }
            Op::SendTo { data, address } => {
                visit.call(data)?;
                visit.call(address)?;
            }
            Op::Connect { address } => visit.call(address)?,
            Op::Sendfile(sf) => sf.traverse(&visit)?,
            Op::Accept | Op::Cleared => {}
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.stage = Stage::Done;
        self.op = Op::Cleared;
    }
}
