//! Write flow control shared by the stream and datagram transports (asyncio's
//! `_FlowControlMixin`): the high/low watermarks, when to pause and resume the
//! protocol, and calling `pause_writing()`/`resume_writing()` with asyncio's error
//! handling. Also the few helpers both transports need to report errors.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

/// A transport's watermarks before any `set_write_buffer_limits()`: asyncio's 64 KiB
/// and a quarter of it.
pub const DEFAULT_HIGH: usize = 64 * 1024;
pub const DEFAULT_LOW: usize = DEFAULT_HIGH / 4;

/// The watermarks `set_write_buffer_limits(high, low)` sets: `DEFAULT_HIGH` and a
/// quarter of it by default, either derived from the other, validated with asyncio's message.
pub fn water_marks(high: Option<i64>, low: Option<i64>) -> PyResult<(usize, usize)> {
    water_marks_default(high, low, DEFAULT_HIGH as i64)
}

/// `water_marks` with another default high-water mark (asyncio's
/// `add_flowcontrol_defaults`, which the TLS layer uses with its own defaults).
pub fn water_marks_default(high: Option<i64>, low: Option<i64>, default_high: i64) -> PyResult<(usize, usize)> {
    let high = match (high, low) {
        (Some(h), _) => h,
        (None, None) => default_high,
        (None, Some(l)) => l.saturating_mul(4),
    };
    let low = low.unwrap_or(high / 4);
    if !(high >= low && low >= 0) {
        return Err(PyValueError::new_err(format!("high ({high}) must be >= low ({low}) must be >= 0")));
    }
    Ok((high as usize, low as usize))
}

/// Whether the protocol must be told `pause_writing()` now (and records it).
pub fn should_pause(buffered: usize, high: usize, paused: &mut bool) -> bool {
    if buffered <= high || *paused {
        return false;
    }
    *paused = true;
    true
}

/// Whether the protocol must be told `resume_writing()` now (and records it).
pub fn should_resume(buffered: usize, low: usize, paused: &mut bool) -> bool {
    if !*paused || buffered > low {
        return false;
    }
    *paused = false;
    true
}

/// Calls `protocol.pause_writing()` or `resume_writing()`. A failure goes to the
/// loop's exception handler (`SystemExit`/`KeyboardInterrupt` propagate), and the
/// transport carries on, as in asyncio.
pub fn tell_protocol(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    transport: Py<PyAny>,
    protocol: Py<PyAny>,
    method: &Bound<'_, pyo3::types::PyString>,
) -> PyResult<()> {
    let reported = protocol.clone_ref(py);
    tell_protocol_reporting(py, event_loop, transport, protocol, reported, method)
}

/// `tell_protocol`, naming `reported` as the context's protocol: asyncio's TLS layer
/// calls the application's protocol but reports itself.
pub fn tell_protocol_reporting(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    transport: Py<PyAny>,
    protocol: Py<PyAny>,
    reported: Py<PyAny>,
    method: &Bound<'_, pyo3::types::PyString>,
) -> PyResult<()> {
    let Err(err) = protocol.bind(py).call_method0(method) else { return Ok(()) };
    if is_fatal(py, &err) {
        return Err(err);
    }
    let ctx = PyDict::new(py);
    ctx.set_item("message", format!("protocol.{method}() failed"))?;
    ctx.set_item("exception", err.value(py))?;
    ctx.set_item("transport", transport)?;
    ctx.set_item("protocol", reported)?;
    event_loop.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
    Ok(())
}

/// Errors that leave the loop rather than going to an exception handler.
pub fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// asyncio's logger, for the transports' debug and warning messages.
pub fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER.import(py, "asyncio.log", "logger")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_follow_the_watermarks() {
        let mut paused = false;
        assert!(!should_pause(100, 100, &mut paused));
        assert!(should_pause(101, 100, &mut paused) && paused);
        assert!(!should_pause(200, 100, &mut paused)); // told once
        assert!(!should_resume(26, 25, &mut paused));
        assert!(should_resume(25, 25, &mut paused) && !paused);
        assert!(!should_resume(0, 25, &mut paused));
    }
}
