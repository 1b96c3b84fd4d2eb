//! What the stream and datagram transports share about reading: the reading
//! switch (asyncio's `_closing`/`_paused` flags plus whether the fd has a reader,
//! and the rules `pause_reading()`/`resume_reading()`/`close()` apply to them), so
//! both pause, resume and close reading the same way; and `ProtocolMethod`, the
//! protocol's read callback kept as a bound method.

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::flow_control::logger;
use crate::gil_cell::GilCell;

/// Embedded in each transport's state (inside its `GilCell`); plain flags, no
/// Python objects, so its methods are safe inside a `with` borrow.
#[derive(Default)]
pub struct ReadSwitch {
    /// asyncio's `_closing`: `close()`/`abort()` were called or the connection is lost.
    pub closing: bool,
    /// asyncio's `_paused`: `pause_reading()` is in force.
    pub paused: bool,
    /// Reading is "registered" (asyncio: the fd has a reader).
    pub reader_active: bool,
    /// When reading last started or resumed (see `can_read_event`).
    armed: Armed,
}

/// The loop iteration in which a transport last started or resumed reading. A
/// readiness event the poll of that same iteration reported came before the start,
/// and is no delivery: asyncio's reader, added then, is found by the next poll,
/// after the callbacks queued meanwhile (`LoopState::queue_attempt` looks then).
#[derive(Default)]
pub struct Armed(usize);

impl Armed {
    pub fn arm(&mut self, iteration: usize) {
        self.0 = iteration;
    }

    /// Whether an event of loop iteration `iteration` may deliver data.
    pub fn allows(&self, iteration: usize) -> bool {
        iteration != self.0
    }
}

impl ReadSwitch {
    /// `is_reading()`: neither closing nor paused.
    pub fn is_reading(&self) -> bool {
        !self.closing && !self.paused
    }

    /// Data may be delivered now: a reader is registered and reading is live.
    pub fn can_read(&self) -> bool {
        self.reader_active && !self.paused && !self.closing
    }

    /// `can_read` for a readiness event of loop iteration `iteration` (see `Armed`).
    pub fn can_read_event(&self, iteration: usize) -> bool {
        self.can_read() && self.armed.allows(iteration)
    }

    /// asyncio's first `_add_reader` after `connection_made`, in loop iteration
    /// `iteration`; true if it started reading.
    pub fn start(&mut self, iteration: usize) -> bool {
        let go = !self.paused && !self.closing && !self.reader_active;
        if go {
            self.reader_active = true;
            self.armed.arm(iteration);
        }
        go
    }

    /// `pause_reading()`: true if this call paused (a no-op when closing or paused).
    pub fn pause(&mut self) -> bool {
        if self.closing || self.paused {
            return false;
        }
        self.paused = true;
        self.reader_active = false;
        true
    }

    /// `resume_reading()`, in loop iteration `iteration`: true if this call resumed
    /// (a no-op when closing or not paused).
    pub fn resume(&mut self, iteration: usize) -> bool {
        if self.closing || !self.paused {
            return false;
        }
        self.paused = false;
        self.reader_active = true;
        self.armed.arm(iteration);
        true
    }

    /// The transport closes: no more reading.
    pub fn close(&mut self) {
        self.closing = true;
        self.reader_active = false;
    }
}

/// asyncio's debug-mode line for a pause or resume (`"%r pauses reading"`); the
/// caller checks the loop's debug flag first so the normal path makes no Python call.
pub fn log_debug(py: Python<'_>, message: &'static str, owner: Py<PyAny>) -> PyResult<()> {
    logger(py)?.call_method1("debug", (message, owner))?;
    Ok(())
}

/// One of the protocol's read callbacks (`data_received`, `get_buffer`, ...) as a
/// bound method, looked up at its first use and kept until the transport's protocol
/// changes (as uvloop keeps a stream transport's): one attribute lookup per
/// connection instead of one per read. Unlike asyncio, a method assigned to the
/// protocol instance later is not seen (README, known differences). Lives in the
/// transport's state; `cached` and `fill` are called inside its borrow, the lookup
/// itself outside (it may run Python code).
#[derive(Default)]
pub struct ProtocolMethod(Option<Py<PyAny>>);

impl ProtocolMethod {
    pub fn cached(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.0.as_ref().map(|m| m.clone_ref(py))
    }

    /// Keeps `method` unless one is kept already; nothing is dropped here.
    pub fn fill(&mut self, method: &Bound<'_, PyAny>) {
        if self.0.is_none() {
            self.0 = Some(method.clone().unbind());
        }
    }

    /// The protocol changed or the transport is done: the caller drops what this
    /// returns after its borrow.
    pub fn take(&mut self) -> Option<Py<PyAny>> {
        self.0.take()
    }

    pub fn as_option(&self) -> &Option<Py<PyAny>> {
        &self.0
    }
}

/// The protocol's read callback `name`: `cached` (what the transport's
/// `ProtocolMethod` held), or else looked up now and kept there, in the field of
/// `state` that `slot` gives with the transport's current protocol, if `protocol`
/// still is that protocol (the lookup may have run Python code).
pub fn protocol_method<'py, S>(
    state: &GilCell<S>,
    protocol: &Bound<'py, PyAny>,
    cached: Option<Py<PyAny>>,
    name: &Bound<'py, PyString>,
    slot: fn(&mut S) -> (&Option<Py<PyAny>>, &mut ProtocolMethod),
) -> PyResult<Bound<'py, PyAny>> {
    let py = protocol.py();
    if let Some(method) = cached {
        return Ok(method.into_bound(py));
    }
    let method = protocol.getattr(name)?;
    state.with(py, |s| {
        let (current, kept) = slot(s);
        if current.as_ref().is_some_and(|p| p.is(protocol)) {
            kept.fill(&method);
        }
    });
    Ok(method)
}
