//! The reading switch shared by the stream and datagram transports: asyncio's
//! `_closing`/`_paused` flags plus whether the fd has a reader, and the rules
//! `pause_reading()`/`resume_reading()`/`close()` apply to them. Kept in one
//! place so both transports pause, resume and close reading the same way.

use pyo3::prelude::*;

use crate::flow_control::logger;

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

    /// asyncio's first `_add_reader` after `connection_made`; true if it started reading.
    pub fn start(&mut self) -> bool {
        let go = !self.paused && !self.closing && !self.reader_active;
        if go {
            self.reader_active = true;
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

    /// `resume_reading()`: true if this call resumed (a no-op when closing or not paused).
    pub fn resume(&mut self) -> bool {
        if self.closing || !self.paused {
            return false;
        }
        self.paused = false;
        self.reader_active = true;
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
