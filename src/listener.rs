//! `Listener`: the accept loop of a listening socket, owned by the loop like a
//! stream transport's fd (edge-triggered, `Ready::Io` entries in the ready queue, no
//! Python `Handle` per event). Each readiness event accepts up to `backlog`
//! connections (as asyncio's `_accept_connection` does) and hands each to the
//! server's Python `on_accept(conn, addr)`, which builds the protocol and transport.
//! Errors other than "would block"/"aborted" go to `on_error(exc)`: the server
//! pauses accepting on EMFILE and friends, as asyncio does, instead of spinning.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyBlockingIOError, PyConnectionAbortedError, PyInterruptedError, PyKeyboardInterrupt, PySystemExit};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;

use crate::event_loop::{IoOwner, LoopCore};
use crate::gil_cell::GilCell;
use crate::io_context;

#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct Listener {
    fd: RawFd,
    event_loop: Py<LoopCore>,
    backlog: usize,
    inner: GilCell<ListenerInner>,
}

struct ListenerInner {
    sock: Option<Py<PyAny>>,
    on_accept: Option<Py<PyAny>>,
    on_error: Option<Py<PyAny>>,
    registered: bool,
    /// The context it accepts in (`io_context`): a copy of the one current when it
    /// last started accepting, as asyncio's reader handle. Each connection is set
    /// up in a copy of its own (asyncio makes a task per connection).
    context: Option<Py<PyAny>>,
}

impl Listener {
    /// The context dispatch runs this listener's accepts in (see `io_context::run_in`).
    #[inline]
    pub fn io_context<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.inner.with(py, |i| io_context::bind(py, &i.context))
    }

    pub fn on_io(slf: &Bound<'_, Self>, readable: bool) -> PyResult<()> {
        if !readable {
            return Ok(());
        }
        let py = slf.py();
        let outcome = Self::accept_batch(slf, py);
        // Unless the backlog is known to be empty, connections may still be waiting and
        // no new edge will tell us: look again next iteration (also after an error, so
        // one failed accept does not strand the ones behind it).
        if !matches!(outcome, Ok(false)) {
            slf.get().event_loop.get().state.with(py, |s| s.queue_attempt(IoOwner::Listener(slf.clone().unbind()), true, false));
        }
        outcome.map(drop)
    }

    /// Accepts up to `backlog` connections; `Ok(false)` once the backlog is empty or
    /// the listener stopped.
    fn accept_batch(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<bool> {
        let me = slf.get();
        for _ in 0..me.backlog.max(1) {
            let Some((sock, on_accept, on_error, context)) = me.inner.with(py, |i| {
                if !i.registered {
                    return None;
                }
                let context = i.context.as_ref()?.clone_ref(py);
                Some((i.sock.as_ref()?.clone_ref(py), i.on_accept.as_ref()?.clone_ref(py), i.on_error.as_ref()?.clone_ref(py), context))
            }) else {
                return Ok(false);
            };
            match sock.bind(py).call_method0(intern!(py, "accept")) {
                Ok(pair) => {
                    let (conn, addr) = (pair.get_item(0)?, pair.get_item(1)?);
                    let connection_context = io_context::copy_of(py, &context)?;
                    io_context::run_in(py, Some(connection_context.into_bound(py)), || on_accept.bind(py).call1((conn, addr)))?;
                }
                Err(e) if e.is_instance_of::<PyBlockingIOError>(py) || e.is_instance_of::<PyInterruptedError>(py) => return Ok(false),
                Err(e) if e.is_instance_of::<PyConnectionAbortedError>(py) => continue,
                Err(e) if e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py) => return Err(e),
                Err(e) => {
                    // Reported (and accepting paused, for fd exhaustion) by the server.
                    on_error.bind(py).call1((e.into_value(py),))?;
                    return Ok(true);
                }
            }
        }
        Ok(true)
    }
}

#[pymethods]
impl Listener {
    #[new]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, LoopCore>,
        sock: Bound<'_, PyAny>,
        on_accept: Bound<'_, PyAny>,
        on_error: Bound<'_, PyAny>,
        backlog: usize,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        Ok(Listener {
            fd,
            event_loop: event_loop.unbind(),
            backlog,
            inner: GilCell::new(ListenerInner {
                sock: Some(sock.unbind()),
                on_accept: Some(on_accept.unbind()),
                on_error: Some(on_error.unbind()),
                registered: false,
                context: None,
            }),
        })
    }

    /// Starts accepting (idempotent). Connections already waiting are picked up by
    /// an attempt queued with the next poll: an edge that happened before would not
    /// repeat.
    fn start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.inner.with(py, |i| i.registered || i.sock.is_none()) {
            return Ok(());
        }
        let fd = me.fd;
        io_context::renew(py, &me.inner, |i| &mut i.context)?;
        let replaced = me.event_loop.get().state.with(py, |s| {
            let replaced = s.register_owner(fd, IoOwner::Listener(slf.clone().unbind()), true, false)?;
            // A connection may already be waiting: try accepting.
            s.queue_attempt(IoOwner::Listener(slf.clone().unbind()), true, false);
            Ok::<_, PyErr>(replaced)
        })?;
        me.inner.with(py, |i| i.registered = true);
        drop(replaced);
        Ok(())
    }

    /// Stops accepting (idempotent); the socket stays open.
    fn stop(&self, py: Python<'_>) {
        if !self.inner.with(py, |i| std::mem::replace(&mut i.registered, false)) {
            return;
        }
        self.event_loop.get().release_owned(py, self.fd, self);
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = if self.inner.with(py, |i| i.registered) { "accepting" } else { "idle" };
        format!("<Listener fd={} {state}>", self.fd)
    }

    fn is_accepting(&self, py: Python<'_>) -> bool {
        self.inner.with(py, |i| i.registered)
    }

    /// Stops accepting and drops the callbacks (the server is closing).
    fn detach(&self, py: Python<'_>) {
        self.stop(py);
        let taken = self.inner.with(py, |i| (i.sock.take(), i.on_accept.take(), i.on_error.take()));
        drop(taken);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Some(i) = self.inner.get_for_traverse() {
            visit.call(&i.sock)?;
            visit.call(&i.on_accept)?;
            visit.call(&i.on_error)?;
            visit.call(&i.context)?;
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self.inner.with(py, |i| (i.sock.take(), i.on_accept.take(), i.on_error.take(), i.context.take()));
        drop(taken);
    }
}
