//! `add_reader` / `remove_reader` / `add_writer` / `remove_writer`: Python callbacks
//! run when an fd is ready, level-triggered like asyncio's selector loop.

use std::os::fd::RawFd;

use std::ffi::CStr;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyWeakrefReference};

use crate::event_loop::{IoOwner, LoopCore};
use crate::handles::Handle;
use crate::sock::SockOp;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// An int fd or any object with `fileno()`, with `selectors`' error messages.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = match obj.extract::<i64>() {
        Ok(fd) => fd,
        Err(_) => obj.call_method0("fileno").and_then(|f| f.extract::<i64>()).map_err(|_| {
            PyValueError::new_err(format!("Invalid file object: {}", obj.repr().map(|r| r.to_string()).unwrap_or_default()))
        })?,
    };
    if fd < 0 || fd > RawFd::MAX as i64 {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    Ok(fd as RawFd)
}

/// An OS error as Python raises it: `OSError(errno, strerror)`, which Python maps
/// to its subclass (`PermissionError` for EPERM) with `.errno` set, as the stdlib
/// selector loop's errors are. PyO3's own conversion gives only a message.
pub fn os_error(err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            // SAFETY: strerror returns a valid NUL-terminated string for any value;
            // it is copied at once, with the GIL held.
            let text = unsafe { CStr::from_ptr(libc::strerror(code)) }.to_string_lossy().into_owned();
            PyOSError::new_err((code, text))
        }
        None => err.into(),
    }
}

/// asyncio's `_ensure_fd_no_transport`: an fd a transport owns takes no other
/// callbacks (the transport reads and writes it itself).
pub fn ensure_fd_no_transport(slf: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let py = slf.py();
    let (owner, gone) = slf.get().state.with(py, |s| match s.io.get(&fd).map(|h| h.owner(py)) {
        Some(Some(o @ (IoOwner::Stream(_) | IoOwner::Datagram(_)))) => (Some(o), None),
        // An idle transport collected without letting go of its fd (its finalizer
        // failed): the number belongs to a new file now.
        Some(None) => (None, s.forget_owner(fd)),
        _ => (None, None),
    });
    drop(gone);
    if let Some(t) = owner {
        let transport = t.describe(py);
        let repr = transport.bind(py).repr()?;
        return Err(PyRuntimeError::new_err(format!("File descriptor {fd} is used by transport {repr}")));
    }
    Ok(())
}

pub fn add(
    slf: &Bound<'_, LoopCore>,
    fileobj: &Bound<'_, PyAny>,
    callback: Bound<'_, PyAny>,
    args: Bound<'_, PyTuple>,
    dir: Direction,
) -> PyResult<()> {
    let fd = fileobj_to_fd(fileobj)?;
    add_fd(slf, fd, callback, args, dir, None)?;
    if fileobj.extract::<i64>().is_err() {
        // Objects without weak reference support are not found once closed.
        if let Ok(weak) = PyWeakrefReference::new(fileobj) {
            let replaced = slf.get().state.with(slf.py(), |s| s.fileobjs.insert(fd, weak.unbind()));
            drop(replaced); // outside the cell
        }
    }
    Ok(())
}

/// `add` for an fd already known to be valid (the loop's own `sock_*` operations).
/// `after_eagain`: the socket object the caller just got `EAGAIN` from on `fd`;
/// if its previous wait left the fd lingering in the poller and the object is the
/// same live one (so the fd still names the same file), the registration is taken
/// back without a syscall.
pub fn add_fd(
    slf: &Bound<'_, LoopCore>,
    fd: RawFd,
    callback: Bound<'_, PyAny>,
    args: Bound<'_, PyTuple>,
    dir: Direction,
    after_eagain: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = slf.py();
    let core = slf.get();
    core.check_closed(py)?;
    ensure_fd_no_transport(slf, fd)?;
    // asyncio gives fd callbacks a copy of the current context.
    let ctx = crate::scheduling::context_or_copy(py, None)?;
    let handle = Py::new(py, Handle::new(callback.unbind(), Some(args.unbind()), ctx, None))?;
    // On error the new handle comes back out, to be dropped outside the cell.
    let outcome = core.state.with(py, |s| {
        let reading = dir == Direction::Read || s.readers.contains_key(&fd);
        let writing = dir == Direction::Write || s.writers.contains_key(&fd);
        let same_socket = after_eagain.is_some_and(|sock| {
            // A strong reference to a live object, dropped at once: frees nothing.
            s.sock_lingering.get(&fd).and_then(|w| w.bind(py).upgrade()).is_some_and(|o| o.is(sock))
        });
        let reclaimed = same_socket && s.registrar.as_mut().is_some_and(|reg| reg.reclaim(fd, reading, writing));
        if !reclaimed {
            if let Some(Err(e)) = s.registrar.as_mut().map(|reg| reg.set_interest(fd, reading, writing)) {
                return Err((e, handle));
            }
        }
        let table = if dir == Direction::Read { &mut s.readers } else { &mut s.writers };
        Ok(table.insert(fd, handle))
    });
    match outcome {
        Ok(replaced) => {
            if let Some(old) = replaced {
                old.get().cancel_silently(py);
            }
            Ok(())
        }
        Err((e, handle)) => {
            drop(handle);
            Err(os_error(e))
        }
    }
}

/// Whether the fd callback `handle`, which is about to run, needs its fd re-armed
/// (level-triggered readiness). The loop's own receive operations do not: they
/// retry the syscall until it gives data or `EAGAIN`, after which the kernel
/// reports the next arrival anyway. Runs no Python code.
pub fn needs_rearm(py: Python<'_>, handle: &Py<Handle>) -> bool {
    let Some(callback) = handle.get().callback(py) else { return true };
    match callback.bind(py).cast::<SockOp>() {
        Ok(op) => op.try_borrow().map_or(true, |op| !op.retries_until_eagain()),
        Err(_) => true,
    }
}

pub fn remove(slf: &Bound<'_, LoopCore>, fileobj: &Bound<'_, PyAny>, dir: Direction) -> PyResult<bool> {
    let fd = match fileobj_to_fd(fileobj) {
        Ok(fd) => fd,
        // A negative fd (a socket closed since it was added: `fileno()` is -1)
        // passes asyncio's transport check; a closed loop then has nothing to
        // remove, an open one finds the fd the object was added with, as
        // `selectors` looks a key up by its object. Libraries close a socket and
        // then remove its callbacks from a done-callback (anyio). (A `fileno()`
        // that raises is refused by the transport check.)
        Err(e) if is_negative_fd(fileobj) => {
            if slf.get().state.with(slf.py(), |s| s.closed) {
                return Ok(false);
            }
            match registered_fd_of(slf, fileobj) {
                Some(fd) => return Ok(remove_if(slf, fd, dir, |_| true)),
                None => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    ensure_fd_no_transport(slf, fd)?;
    Ok(remove_if(slf, fd, dir, |_| true))
}

fn is_negative_fd(fileobj: &Bound<'_, PyAny>) -> bool {
    let fd = fileobj.extract::<i64>().or_else(|_| fileobj.call_method0("fileno").and_then(|f| f.extract::<i64>()));
    fd.is_ok_and(|fd| fd < 0)
}

/// The fd `fileobj` itself was given to `add_reader`/`add_writer` with, if it still
/// has a callback there.
#[cold]
fn registered_fd_of(slf: &Bound<'_, LoopCore>, fileobj: &Bound<'_, PyAny>) -> Option<RawFd> {
    let py = slf.py();
    slf.get().state.with(py, |s| {
        // Each upgrade is a strong reference to a live object, dropped at once: it
        // frees nothing, so no Python code runs inside the cell.
        s.fileobjs
            .iter()
            .find(|(fd, weak)| {
                (s.readers.contains_key(fd) || s.writers.contains_key(fd)) && weak.bind(py).upgrade().is_some_and(|o| o.is(fileobj))
            })
            .map(|(fd, _)| *fd)
    })
}

/// Removes the fd's reader (or writer) only if its callback is still `callback`: an
/// operation whose callback was replaced by a later `add_reader` on the same fd must
/// not remove its successor (asyncio's `_sock_read_done` tests `handle.cancelled()`
/// for the same reason). Returns whether it removed anything.
pub fn remove_own(slf: &Bound<'_, LoopCore>, fd: RawFd, dir: Direction, callback: &Bound<'_, PyAny>) -> bool {
    let py = slf.py();
    remove_if(slf, fd, dir, |h| h.get().callback_is(py, callback.as_ptr()))
}

/// `remove_own` for a completed wait of the loop's own receive operation on
/// `sock`: when that leaves the fd lingering in the poller, remembers (weakly)
/// which socket object left it, for `add_fd`'s reclaim.
pub fn remove_own_lingering(slf: &Bound<'_, LoopCore>, fd: RawFd, dir: Direction, callback: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>) {
    if !remove_own(slf, fd, dir, callback) {
        return;
    }
    let py = slf.py();
    // Objects without weak reference support just do not get the shortcut.
    let Ok(weak) = PyWeakrefReference::new(sock) else { return };
    let weak = weak.unbind();
    let unused = slf.get().state.with(py, |s| {
        if s.closed || s.readers.contains_key(&fd) || s.writers.contains_key(&fd) {
            return Some(weak);
        }
        s.sock_lingering.insert(fd, weak)
    });
    drop(unused); // outside the cell
}

/// Removes and cancels the fd's handle in direction `dir` if `matches` accepts it,
/// keeping the poller's interest in the other direction.
fn remove_if(slf: &Bound<'_, LoopCore>, fd: RawFd, dir: Direction, matches: impl FnOnce(&Py<Handle>) -> bool) -> bool {
    let py = slf.py();
    let removed = slf.get().state.with(py, |s| {
        if s.closed {
            return None;
        }
        let table = if dir == Direction::Read { &mut s.readers } else { &mut s.writers };
        if !matches(table.get(&fd)?) {
            return None;
        }
        let removed = table.remove(&fd)?;
        let (reading, writing) = (s.readers.contains_key(&fd), s.writers.contains_key(&fd));
        if let Some(reg) = s.registrar.as_mut() {
            let _ = reg.set_interest(fd, reading, writing);
        }
        let fileobj = if reading || writing { None } else { s.fileobjs.remove(&fd) };
        Some((removed, fileobj))
    });
    match removed {
        Some((handle, fileobj)) => {
            drop(fileobj); // outside the cell
            handle.get().cancel_silently(py);
            true
        }
        None => false,
    }
}
