//! Signals, the loop's side: the wakeup socket that Python's C-level signal handler
//! writes signal numbers to, and the `add_signal_handler` handles those numbers
//! queue. The Python glue (`_signals.py`) validates arguments and installs the
//! Python-level handlers; everything that runs when a signal arrives is here, in
//! Rust, so that no Python code runs between reading the numbers and queueing their
//! handlers (Python code would run pending signal handlers first, and a
//! `KeyboardInterrupt` raised there would lose the numbers already read).

use std::os::fd::RawFd;

use ferroloop_core::poller;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::event_loop::{LoopCore, LoopState, Ready};
use crate::handles::{closed_error, Handle};

/// Watches the read end of the wakeup socket (`None`: stop watching).
pub fn watch_fd(core: &LoopCore, py: Python<'_>, fd: Option<RawFd>) -> PyResult<()> {
    core.state.with(py, |s| -> PyResult<()> {
        let Some(reg) = s.registrar.as_mut() else { return Err(closed_error()) };
        if let Some(old) = s.signal_fd.take() {
            reg.unwatch_internal(old);
        }
        if let Some(fd) = fd {
            reg.watch_internal(fd)?;
            s.signal_fd = Some(fd);
        }
        Ok(())
    })
}

/// Installs the handle run for each arrival of `sig`, replacing any previous one.
pub fn set_handler(
    core: &LoopCore,
    py: Python<'_>,
    sig: i32,
    callback: Bound<'_, PyAny>,
    args: Bound<'_, PyTuple>,
) -> PyResult<Py<Handle>> {
    let ctx = crate::scheduling::context_or_copy(py, None)?;
    let handle = Py::new(py, Handle::new(callback.unbind(), Some(args.unbind()), ctx, None))?;
    let stored = handle.clone_ref(py);
    let replaced = core.state.with(py, |s| s.signal_handlers.insert(sig, stored));
    if let Some(old) = replaced {
        old.get().cancel_silently(py);
    }
    Ok(handle)
}

pub fn forward_to(core: &LoopCore, py: Python<'_>, fd: Option<RawFd>) {
    core.state.with(py, |s| s.signal_forward_fd = fd);
}

pub fn remove_handler(core: &LoopCore, py: Python<'_>, sig: i32) -> bool {
    let removed = core.state.with(py, |s| s.signal_handlers.remove(&sig));
    match removed {
        Some(handle) => {
            handle.get().cancel_silently(py);
            true
        }
        None => false,
    }
}

/// Reads the signal numbers waiting on the wakeup socket and queues their handlers
/// (called inside the state cell: no Python code runs here). The bytes are passed on
/// to the wakeup fd the loop displaced, if any, as Python would have written them.
pub fn queue_arrived(s: &mut LoopState, py: Python<'_>, fd: RawFd) {
    let signums = poller::drain_nonblocking(fd);
    if let Some(forward) = s.signal_forward_fd {
        // SAFETY: writes from a valid buffer; a full or closed fd only fails, and
        // Python ignores such failures for wakeup fds too.
        unsafe { libc::write(forward, signums.as_ptr().cast(), signums.len()) };
    }
    for signum in signums {
        if let Some(handle) = s.signal_handlers.get(&i32::from(signum)) {
            if !handle.get().is_cancelled() {
                s.ready.push_back(Ready::Handle(handle.clone_ref(py)));
            }
        }
    }
}
