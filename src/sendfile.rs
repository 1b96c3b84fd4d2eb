//! `sock_sendfile`: send a file over a stream socket, zero-copy with `sendfile(2)`
//! when the file is a regular file, else (with `fallback=True`) by reading blocks on
//! the executor and sending them with `sock_sendall`, with asyncio's rules.
//!
//! It runs on the `SockOp` machine of `sock` (one object, stepped by the awaiting
//! task) in phases: argument checks (`_check_sendfile_params`, the debug
//! non-blocking check, the SSL check), then the native phase, which calls
//! `sendfile(2)` until the socket would block and then waits for writability (the
//! stdlib goes back through the loop after every block; we keep sending while the
//! kernel takes data, with the same offsets and counts). "Not available" (no
//! `fileno()`, `fstat` failing, or a first `sendfile` failing before anything was
//! sent) switches to the fallback phase, or raises `SendfileNotAvailableError` when
//! `fallback` is false. The fallback phase awaits `run_in_executor(file.readinto)`
//! and `loop.sock_sendall` in turn, as `_sock_sendfile_fallback` does. At the end,
//! on success, error or cancellation, the file position is left after the last byte
//! sent (`lseek` on the fd for the native phase, `file.seek` for the fallback).

use std::os::fd::RawFd;

use ferroloop_core::sockio;
use pyo3::exceptions::{PyAttributeError, PyConnectionError, PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyInt};

use crate::fd_callbacks::Direction;
use crate::sock::{check_nonblocking, os_error, slice, Attempt, Op, SockOp, Step};

/// asyncio's `constants.SENDFILE_FALLBACK_READBUFFER_SIZE`, read when a fallback
/// starts as the stdlib does (tests and applications tune it).
fn fallback_block(py: Python<'_>) -> PyResult<u64> {
    py.import("asyncio.constants")?.getattr("SENDFILE_FALLBACK_READBUFFER_SIZE")?.extract()
}

pub struct Sendfile {
    file: Py<PyAny>,
    offset_arg: Py<PyAny>,
    count_arg: Py<PyAny>,
    fallback: Py<PyAny>,
    /// The validated `offset` (where sending starts) and `count` (None: to EOF).
    offset: u64,
    count: Option<u64>,
    total_sent: u64,
    phase: Phase,
}

enum Phase {
    Init,
    /// `sendfile(2)` from `file_fd` at `pos`; `calls` counts the syscalls made.
    Native {
        file_fd: RawFd,
        pos: u64,
        blocksize: u64,
        calls: u64,
    },
    /// The native phase found sendfile unusable; the fallback starts on the next step.
    ToFallback,
    /// Awaiting `file.readinto(view)` on the executor.
    FallbackRead {
        buf: Py<PyAny>,
        view: Py<PyAny>,
        blocksize: u64,
    },
    /// Awaiting `sock_sendall(sock, view[:read])`.
    FallbackSend {
        buf: Py<PyAny>,
        view: Py<PyAny>,
        blocksize: u64,
        read: u64,
    },
    Settled,
}

fn not_available(py: Python<'_>, msg: &str) -> PyErr {
    static ERR: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
    match ERR.import(py, "asyncio.exceptions", "SendfileNotAvailableError") {
        Ok(cls) => PyErr::from_type(cls.clone(), msg.to_string()),
        Err(e) => e,
    }
}

fn sf_mut(op: &mut SockOp) -> &mut Sendfile {
    match &mut op.op {
        Op::Sendfile(sf) => sf,
        _ => unreachable!("not a sendfile operation"),
    }
}

impl Sendfile {
    pub fn new(file: Bound<'_, PyAny>, offset: Bound<'_, PyAny>, count: Bound<'_, PyAny>, fallback: Bound<'_, PyAny>) -> Self {
        Sendfile {
            file: file.unbind(),
            offset_arg: offset.unbind(),
            count_arg: count.unbind(),
            fallback: fallback.unbind(),
            offset: 0,
            count: None,
            total_sent: 0,
            phase: Phase::Init,
        }
    }

    /// `BaseEventLoop._check_sendfile_params`, with its messages.
    fn check_params(&mut self, py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
        let file = self.file.bind(py);
        let has_b = match file.getattr_opt(intern!(py, "mode"))? {
            Some(mode) => mode.contains("b")?,
            None => true,
        };
        if !has_b {
            return Err(PyValueError::new_err("file should be opened in binary mode"));
        }
        if !sock.getattr(intern!(py, "type"))?.eq(libc::SOCK_STREAM)? {
            return Err(PyValueError::new_err("only SOCK_STREAM type sockets are supported"));
        }
        let count = self.count_arg.bind(py);
        if !count.is_none() {
            if !count.is_instance_of::<PyInt>() {
                return Err(PyTypeError::new_err(format!("count must be a positive integer (got {})", count.repr()?)));
            }
            if count.le(0)? {
                return Err(PyValueError::new_err(format!("count must be a positive integer (got {})", count.repr()?)));
            }
            // Beyond u64 means "to the end of the file" in practice.
            self.count = Some(count.extract::<u64>().unwrap_or(u64::MAX));
        }
        let offset = self.offset_arg.bind(py);
        if !offset.is_instance_of::<PyInt>() {
            return Err(PyTypeError::new_err(format!("offset must be a non-negative integer (got {})", offset.repr()?)));
        }
        if offset.lt(0)? {
            return Err(PyValueError::new_err(format!("offset must be a non-negative integer (got {})", offset.repr()?)));
        }
        self.offset = offset.extract()?;
        Ok(())
    }

    /// Leaves the file position after the last byte sent (both phases' `finally`).
    fn settle_position(&mut self, py: Python<'_>) -> PyResult<()> {
        let phase = std::mem::replace(&mut self.phase, Phase::Settled);
        if self.total_sent == 0 {
            return Ok(());
        }
        match phase {
            Phase::Native { file_fd, pos, .. } => {
                let _ = sockio::seek_to(file_fd, pos);
                Ok(())
            }
            Phase::FallbackRead { .. } | Phase::FallbackSend { .. } => {
                let file = self.file.bind(py);
                if file.hasattr(intern!(py, "seek"))? {
                    file.call_method1(intern!(py, "seek"), (self.offset + self.total_sent,))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The operation ends with `err`: settle the position (an error while doing so
    /// replaces `err`, as in a `finally` clause).
    pub fn on_error(&mut self, py: Python<'_>, err: PyErr) -> PyErr {
        match self.settle_position(py) {
            Ok(()) => err,
            Err(e) => e,
        }
    }

    /// Cancelled (thrown into) or closed while waiting. The stdlib's native phase
    /// only removes its writer then (the position stays where it was); its
    /// fallback's `finally` still seeks.
    pub fn on_abandon(&mut self, py: Python<'_>, err: PyErr) -> PyErr {
        if let Phase::Native { .. } = self.phase {
            self.phase = Phase::Settled;
            return err;
        }
        self.on_error(py, err)
    }

    pub fn on_close(&mut self, py: Python<'_>) {
        let _ = self.on_abandon(py, pyo3::exceptions::PyGeneratorExit::new_err(()));
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.file)?;
        visit.call(&self.offset_arg)?;
        visit.call(&self.count_arg)?;
        visit.call(&self.fallback)?;
        match &self.phase {
            Phase::FallbackRead { buf, view, .. } | Phase::FallbackSend { buf, view, .. } => {
                visit.call(buf)?;
                visit.call(view)?;
            }
            _ => {}
        }
        Ok(())
    }
}

enum Native {
    Empty,
    Unavailable(&'static str),
    Ready,
}

/// `_sock_sendfile_native`'s preconditions: a file with a working `fileno()` and
/// `fstat`, and something to send.
fn prepare_native(sf: &mut Sendfile, py: Python<'_>) -> PyResult<Native> {
    static UNSUPPORTED: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
    let fileno = match sf.file.bind(py).call_method0(intern!(py, "fileno")) {
        Ok(v) => v,
        Err(e) if e.is_instance_of::<PyAttributeError>(py) || e.is_instance(py, UNSUPPORTED.import(py, "io", "UnsupportedOperation")?) => {
            return Ok(Native::Unavailable("not a regular file"));
        }
        Err(e) => return Err(e),
    };
    let file_fd: RawFd = fileno.extract()?;
    let Ok(fsize) = sockio::file_size(file_fd) else {
        return Ok(Native::Unavailable("not a regular file"));
    };
    let blocksize = sf.count.unwrap_or(fsize);
    if blocksize == 0 {
        return Ok(Native::Empty);
    }
    sf.phase = Phase::Native { file_fd, pos: sf.offset, blocksize, calls: 0 };
    Ok(Native::Ready)
}

/// The first step of `sock_sendfile`.
pub fn start(op: &mut SockOp, me: &Bound<'_, PyAny>) -> PyResult<Step> {
    let py = me.py();
    let sock = op.sock.bind(py).clone();
    // asyncio's order: the debug non-blocking check, then SSL, then the parameters.
    check_nonblocking(py, op.event_loop.bind(py), &sock)?;
    crate::sock::check_ssl_socket(py, &sock)?;
    sf_mut(op).check_params(py, &sock)?;
    match prepare_native(sf_mut(op), py)? {
        Native::Empty => Ok(Step::Return(0u8.into_pyobject(py)?.into_any().unbind())),
        Native::Unavailable(msg) => {
            unavailable(op, py, msg)?;
            start_fallback(op, me)
        }
        Native::Ready => {
            op.fd = crate::sock::raw_fileno(&sock)?;
            let outcome = attempt(op, py, true);
            op.conclude(me, outcome, Direction::Write)
        }
    }
}

/// Native sendfile is not possible: switch to the fallback, or raise if it is off.
fn unavailable(op: &mut SockOp, py: Python<'_>, msg: &str) -> PyResult<()> {
    let sf = sf_mut(op);
    if !sf.fallback.bind(py).is_truthy()? {
        return Err(not_available(py, msg));
    }
    sf.phase = Phase::ToFallback;
    Ok(())
}

/// `sendfile(2)` until done, end of file, or the socket would block.
pub fn attempt(op: &mut SockOp, py: Python<'_>, _first: bool) -> Attempt {
    enum Ended {
        Total(u64),
        Again,
        Failed(std::io::Error, u64),
    }
    let fd = op.fd;
    let sf = sf_mut(op);
    let count = sf.count;
    let Phase::Native { file_fd, pos, blocksize, calls } = &mut sf.phase else {
        return Ok(Some(py.None()));
    };
    let ended = loop {
        if let Some(count) = count {
            if sf.total_sent >= count {
                break Ended::Total(sf.total_sent);
            }
            *blocksize = count - sf.total_sent;
        }
        let (file_fd, at, size) = (*file_fd, *pos, *blocksize);
        // Released GIL: a socket left in blocking mode may block here.
        let result = py.detach(|| sockio::sendfile(fd, file_fd, at, size));
        *calls += 1;
        match result {
            Ok(0) => break Ended::Total(sf.total_sent),
            Ok(sent) => {
                *pos += sent as u64;
                sf.total_sent += sent as u64;
            }
            Err(e) if sockio::would_block(&e) => break Ended::Again,
            Err(e) => break Ended::Failed(e, *calls),
        }
    };
    match ended {
        Ended::Total(total) => Ok(Some(total.into_pyobject(py)?.into_any().unbind())),
        Ended::Again => Ok(None),
        Ended::Failed(_, _) if sf.total_sent == 0 => {
            // Typically a file sendfile cannot map: fall back (or raise).
            unavailable(op, py, "os.sendfile call failed")?;
            Ok(Some(py.None()))
        }
        Ended::Failed(e, calls) => {
            let err = os_error(&e);
            if calls > 1 && e.raw_os_error() == Some(libc::ENOTCONN) {
                // asyncio normalises a connection closed mid-way to ConnectionError.
                let new = PyConnectionError::new_err(("socket is not connected", libc::ENOTCONN));
                new.set_cause(py, Some(err));
                return Err(new);
            }
            Err(err)
        }
    }
}

/// The native phase completed (`v` is the total), or handed over to the fallback.
pub fn after_done(op: &mut SockOp, me: &Bound<'_, PyAny>, v: Py<PyAny>) -> PyResult<Step> {
    let py = me.py();
    if let Phase::ToFallback = sf_mut(op).phase {
        return start_fallback(op, me);
    }
    sf_mut(op).settle_position(py)?;
    Ok(Step::Return(v))
}

/// `_sock_sendfile_fallback`: seek, then read blocks on the executor and send them.
fn start_fallback(op: &mut SockOp, me: &Bound<'_, PyAny>) -> PyResult<Step> {
    let py = me.py();
    let sf = sf_mut(op);
    if sf.offset_arg.bind(py).is_truthy()? {
        sf.file.bind(py).call_method1(intern!(py, "seek"), (sf.offset_arg.bind(py),))?;
    }
    let block = fallback_block(py)?;
    let blocksize = match sf.count {
        Some(count) => count.min(block),
        None => block,
    };
    let buf = PyByteArray::new_with(py, blocksize as usize, |_| Ok(()))?.into_any().unbind();
    sf.total_sent = 0;
    sf.phase = Phase::FallbackRead { view: py.None(), buf, blocksize };
    next_read(op, me)
}

fn next_read(op: &mut SockOp, me: &Bound<'_, PyAny>) -> PyResult<Step> {
    let py = me.py();
    let event_loop = op.event_loop.bind(py).clone();
    let sf = sf_mut(op);
    let (buf, mut blocksize) = match &sf.phase {
        Phase::FallbackRead { buf, blocksize, .. } | Phase::FallbackSend { buf, blocksize, .. } => (buf.clone_ref(py), *blocksize),
        _ => unreachable!(),
    };
    if let Some(count) = sf.count {
        blocksize = blocksize.min(count.saturating_sub(sf.total_sent));
        if blocksize == 0 {
            return finish(op, py);
        }
    }
    let memoryview = py.import("builtins")?.getattr("memoryview")?;
    let view = memoryview.call1((buf.bind(py),))?.get_item(slice(py, None, Some(blocksize as isize))?)?;
    let readinto = sf.file.bind(py).getattr(intern!(py, "readinto"))?;
    let reading = event_loop.call_method1(intern!(py, "run_in_executor"), (py.None(), readinto, &view))?;
    sf.phase = Phase::FallbackRead { buf, view: view.unbind(), blocksize };
    op.delegate(me, reading)
}

fn finish(op: &mut SockOp, py: Python<'_>) -> PyResult<Step> {
    let sf = sf_mut(op);
    let total = sf.total_sent;
    sf.settle_position(py)?;
    Ok(Step::Return(total.into_pyobject(py)?.into_any().unbind()))
}

/// What a delegated awaitable returned: a block read, or a block sent.
pub fn after_delegate(op: &mut SockOp, me: &Bound<'_, PyAny>, v: Bound<'_, PyAny>) -> PyResult<Step> {
    let py = me.py();
    let sock = op.sock.bind(py).clone();
    let event_loop = op.event_loop.bind(py).clone();
    let sf = sf_mut(op);
    match std::mem::replace(&mut sf.phase, Phase::Settled) {
        Phase::FallbackRead { buf, view, blocksize } => {
            if !v.is_truthy()? {
                sf.phase = Phase::FallbackRead { buf, view, blocksize };
                return finish(op, py); // end of file
            }
            let read: u64 = v.extract()?;
            let chunk = view.bind(py).get_item(slice(py, None, Some(read as isize))?)?;
            sf.phase = Phase::FallbackSend { buf, view, blocksize, read };
            let sending = event_loop.call_method1(intern!(py, "sock_sendall"), (sock, chunk))?;
            op.delegate(me, sending)
        }
        Phase::FallbackSend { buf, view, blocksize, read } => {
            sf.total_sent += read;
            sf.phase = Phase::FallbackSend { buf, view, blocksize, read: 0 };
            next_read(op, me)
        }
        other => {
            sf.phase = other;
            Ok(Step::Return(v.unbind()))
        }
    }
}
