//! Watching child processes exit, for `loop.subprocess_exec`/`subprocess_shell`,
//! without `SIGCHLD` and without a child watcher.
//!
//! `ChildWatch` owns a pidfd (`ferroloop_core::child`) registered in the loop's
//! poller like a transport's fd (`IoOwner::Child`). When it turns readable the child
//! has exited: it is reaped at once with `waitpid` (no zombie), the pidfd is closed,
//! and the callback gets the return code through `call_soon` — queued after the pipe
//! reads of the same poll, so output that was ready comes before `process_exited`.
//! The callback gets `None` when someone else reaped the child first (a
//! `Popen.poll()`, an application's `waitpid(-1)`): the Python side then takes the
//! code `Popen` saw, as asyncio's watchers fall back to 255.
//!
//! A child still running when the loop closes is handed to a thread that reaps it.
//! Where no pidfd can be had (an old kernel, a seccomp filter, no fd left) or watched,
//! `ChildWatch.start` returns `None` and the Python
//! side runs `wait_child_blocking` in a thread (asyncio's `ThreadedChildWatcher`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use ferroloop_core::child;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::event_loop::{IoOwner, LoopCore};
use crate::gil_cell::GilCell;
use crate::io_context;

struct Watching {
    pidfd: Option<OwnedFd>,
    callback: Option<Py<PyAny>>,
    /// The context the exit is handled in (`io_context`; the Python side chooses it
    /// as asyncio's watcher of the running version would have it).
    context: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct ChildWatch {
    pid: libc::pid_t,
    fd: RawFd,
    event_loop: Py<LoopCore>,
    state: GilCell<Watching>,
}

impl ChildWatch {
    /// The context dispatch runs the exit in (see `io_context::run_in`).
    #[inline]
    pub fn io_context<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state.with(py, |s| io_context::bind(py, &s.context))
    }

    /// The pidfd turned readable: reap, stop watching, report.
    pub fn on_exit(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let returncode = match child::try_reap(me.pid) {
            Ok(None) => return Ok(()), // not exited after all: keep watching
            Ok(Some(rc)) => Some(rc),
            Err(_) => None, // ECHILD: reaped by someone else
        };
        me.event_loop.get().release_owned(py, me.fd, me);
        let (pidfd, callback) = me.state.with(py, |s| (s.pidfd.take(), s.callback.take()));
        drop(pidfd);
        if let Some(cb) = callback {
            crate::scheduling::call_soon(
                me.event_loop.bind(py),
                cb.into_bound(py),
                Some(PyTuple::new(py, [returncode])?),
                None,
                "call_soon",
            )?;
        }
        Ok(())
    }
}

impl Drop for ChildWatch {
    /// The loop closed with the child still unreaped: a thread waits for it, so it
    /// never stays a zombie (asyncio's watcher threads outlive their loop too).
    fn drop(&mut self) {
        let unreaped = self.state.get_mut().pidfd.take().is_some();
        if unreaped {
            let pid = self.pid;
            let _ = std::thread::Builder::new().name(format!("ferroloop-reap-{pid}")).spawn(move || child::wait_blocking(pid));
        }
    }
}

#[pymethods]
impl ChildWatch {
    /// Watches `pid` (a child of ours, not reaped yet) and calls `callback(returncode)`
    /// on the loop, in a copy of `context`, once it exited; `None` when no pidfd
    /// could be had (the caller waits in a thread instead).
    #[staticmethod]
    fn start(
        event_loop: Bound<'_, LoopCore>,
        pid: libc::pid_t,
        callback: Bound<'_, PyAny>,
        context: Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<ChildWatch>>> {
        let py = event_loop.py();
        // Whatever the reason (no pidfds here, or no fd left), the child is spawned
        // already: a waiting thread needs no fd.
        let Ok(pidfd) = child::pidfd_open(pid) else { return Ok(None) };
        let fd = pidfd.as_raw_fd();
        let watch = Py::new(
            py,
            ChildWatch {
                pid,
                fd,
                event_loop: event_loop.clone().unbind(),
                state: GilCell::new(Watching { pidfd: Some(pidfd), callback: Some(callback.unbind()), context: Some(context.unbind()) }),
            },
        )?;
        let owner = IoOwner::Child(watch.clone_ref(py));
        match event_loop.get().state.with(py, |s| s.register_owner(fd, owner, true, false)) {
            Ok(replaced) => drop(replaced),
            Err(_) => {
                // The loop cannot watch this fd (its number still has a reader of an
                // fd closed without `remove_reader`, or epoll refused it): the caller
                // waits in a thread. Closed here, so the watch's drop reaps nothing.
                let pidfd = watch.get().state.with(py, |s| s.pidfd.take());
                drop(pidfd);
                return Ok(None);
            }
        }
        Ok(Some(watch))
    }

    #[getter]
    fn pid(&self) -> libc::pid_t {
        self.pid
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::gc::PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Some(s) = self.state.get_for_traverse() {
            visit.call(&s.callback)?;
            visit.call(&s.context)?;
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self.state.with(py, |s| (s.callback.take(), s.context.take()));
        drop(taken);
    }
}

/// Blocks (without the GIL) until child `pid` exits and reaps it; its return code,
/// or `None` when someone else reaped it. For the watcher thread of kernels
/// without pidfds.
#[pyfunction]
pub fn wait_child_blocking(py: Python<'_>, pid: libc::pid_t) -> Option<i32> {
    py.detach(|| child::wait_blocking(pid)).ok()
}
