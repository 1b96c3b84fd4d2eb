//! `call_soon`, `call_soon_threadsafe`, `call_later`, `call_at`: creating handles and
//! queueing them. This is the loop's hottest entry point (C `Task` and `Future` call
//! `call_soon` for every step and done-callback), so the common path is one handle
//! allocation, one context lookup and one push, with no lock.

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyInt, PyTuple};

use crate::event_loop::{LoopCore, TimerEntry};
use crate::handles::{closed_error, Handle, TimerHandle};

/// The context a callback runs in: the one given, or a copy of the caller's. An
/// explicitly passed empty `Context()` is kept (it is falsy, hence `is None`).
#[inline]
pub fn context_or_copy(py: Python<'_>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
    match context {
        Some(ctx) if !ctx.is_none() => Ok(ctx.unbind()),
        _ => crate::io_context::copy_current(py),
    }
}

/// `context_or_copy`, also saying whether the context is a fresh copy (which only
/// the new handle will hold, so it may be untracked with it: `Handle::untrack_queued`).
#[inline]
fn context_for_queue(py: Python<'_>, context: Option<Bound<'_, PyAny>>) -> PyResult<(Py<PyAny>, bool)> {
    let fresh = context.as_ref().is_none_or(|c| c.is_none());
    Ok((context_or_copy(py, context)?, fresh))
}

/// From this many entries in the ready queue (or live timers in the heap) on, new entries
/// are kept out of the garbage collector's lists (`Handle::untrack_queued`). A
/// shorter queue adds little to a collection, and untracking then tracking again
/// would cost more than it saves.
pub const UNTRACK_FROM_LEN: usize = 128;

/// The checks asyncio makes before queueing: closed loop always; thread and callback
/// type in debug mode only. Returns the source traceback in debug mode.
/// How many frames a debug-mode handle records: asyncio extracts 10 frames
/// (`DEBUG_STACK_DEPTH`) inside its own calls, then drops its internal frames, so a
/// handle keeps 8 of the caller's frames (7 for `call_later`, one level deeper).
/// ferroloop's Rust methods add no frame; it extracts the same number directly, so
/// the "Object created at" tracebacks in logs are identical.
pub const HANDLE_STACK_DEPTH: usize = 8;
pub const CALL_LATER_STACK_DEPTH: usize = 7;

#[inline(always)]
fn check_and_trace(
    core: &LoopCore,
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    method: &str,
    threadsafe: bool,
    depth: usize,
) -> PyResult<Option<Py<PyAny>>> {
    let (closed, debug) = core.state.with(py, |s| (s.closed, s.debug));
    if closed {
        return Err(closed_error());
    }
    if !debug {
        return Ok(None);
    }
    check_and_trace_debug(core, py, callback, method, threadsafe, depth)
}

/// `check_and_trace` in debug mode: asyncio's checks, and the source traceback.
#[cold]
#[inline(never)]
fn check_and_trace_debug(
    core: &LoopCore,
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    method: &str,
    threadsafe: bool,
    depth: usize,
) -> PyResult<Option<Py<PyAny>>> {
    if !threadsafe {
        check_thread(core, py)?;
    }
    check_callback(py, callback, method)?;
    Ok(Some(source_traceback(py, depth)?))
}

fn check_callback(py: Python<'_>, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    static IS_CORO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static IS_CORO_FN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let is_coro = IS_CORO.import(py, "asyncio.coroutines", "iscoroutine")?;
    let is_coro_fn = IS_CORO_FN.import(py, "asyncio.coroutines", "iscoroutinefunction")?;
    if is_coro.call1((callback,))?.is_truthy()? || is_coro_fn.call1((callback,))?.is_truthy()? {
        return Err(PyTypeError::new_err(format!("coroutines cannot be used with {method}()")));
    }
    if !callback.is_callable() {
        return Err(PyTypeError::new_err(format!("a callable object was expected by {method}(), got {}", callback.repr()?)));
    }
    Ok(())
}

/// The caller's stack (its `depth` innermost frames), as asyncio records it for
/// handles created in debug mode.
pub fn source_traceback(py: Python<'_>, depth: usize) -> PyResult<Py<PyAny>> {
    static EXTRACT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let extract = EXTRACT.import(py, "asyncio.format_helpers", "extract_stack")?;
    let frame = py.import("sys")?.getattr("_getframe")?.call1((0,))?;
    Ok(extract.call1((frame, depth))?.unbind())
}

pub fn current_thread_id() -> u64 {
    // SAFETY: a plain query of the calling thread's identity; no preconditions.
    unsafe { pyo3::ffi::PyThread_get_thread_ident() as u64 }
}

pub fn check_thread(core: &LoopCore, py: Python<'_>) -> PyResult<()> {
    match core.state.with(py, |s| s.thread_id) {
        Some(id) if id != current_thread_id() => {
            Err(PyRuntimeError::new_err("Non-thread-safe operation invoked on an event loop other than the current one"))
        }
        _ => Ok(()),
    }
}

/// Queues a `call_soon` handle (no checks), reusing a spare handle object if the
/// loop has one (see `Handle::take_for_reuse`). In a long queue the handle, and
/// its context if it is a fresh copy, are not tracked by the garbage collector
/// while queued (see `Handle::untrack_queued`).
#[inline]
pub fn push_ready(
    core: &LoopCore,
    py: Python<'_>,
    callback: Bound<'_, PyAny>,
    args: Option<Bound<'_, PyTuple>>,
    (ctx, fresh_ctx): (Py<PyAny>, bool),
    tb: Option<Py<PyAny>>,
) -> PyResult<Py<Handle>> {
    let handle = match core.state.with(py, |s| s.spare_handles.take()) {
        Some(spare) => {
            spare.get().refill(py, callback.unbind(), args.map(Bound::unbind), ctx, tb);
            spare
        }
        None => Py::new(py, Handle::new_reusable(callback.unbind(), args.map(Bound::unbind), ctx, tb))?,
    };
    let queued = handle.clone_ref(py);
    let long = core.state.with(py, |s| {
        s.ready.push_back(crate::event_loop::Ready::Handle(queued));
        s.ready.len() >= UNTRACK_FROM_LEN
    });
    if long {
        Handle::untrack_queued(handle.bind(py), fresh_ctx);
    }
    Ok(handle)
}

pub fn call_soon(
    slf: &Bound<'_, LoopCore>,
    callback: Bound<'_, PyAny>,
    args: Option<Bound<'_, PyTuple>>,
    context: Option<Bound<'_, PyAny>>,
    method: &str,
) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let core = slf.get();
    let tb = check_and_trace(core, py, &callback, method, false, HANDLE_STACK_DEPTH)?;
    let ctx = context_for_queue(py, context)?;
    push_ready(core, py, callback, args, ctx, tb)
}

pub fn call_soon_threadsafe(
    slf: &Bound<'_, LoopCore>,
    callback: Bound<'_, PyAny>,
    args: Option<Bound<'_, PyTuple>>,
    context: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let core = slf.get();
    let tb = check_and_trace(core, py, &callback, "call_soon_threadsafe", true, HANDLE_STACK_DEPTH)?;
    let ctx = context_for_queue(py, context)?;
    let handle = push_ready(core, py, callback, args, ctx, tb)?;
    core.state.with(py, |s| s.waker.as_ref().map(|w| w.wake())).transpose()?;
    Ok(handle)
}

/// `call_later`: the deadline is `loop.time() + delay` computed with Python's `+`,
/// so a bad delay fails exactly as in asyncio (`TypeError: unsupported operand
/// type(s) for +: 'float' and 'str'`, `OverflowError` for a huge int). Callback
/// errors in debug mode name `call_at`, which asyncio's `call_later` delegates to.
pub fn call_later(
    slf: &Bound<'_, LoopCore>,
    delay: Bound<'_, PyAny>,
    callback: Bound<'_, PyAny>,
    args: Option<Bound<'_, PyTuple>>,
    context: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<TimerHandle>> {
    let py = slf.py();
    if delay.is_none() {
        return Err(PyTypeError::new_err("delay must not be None"));
    }
    let now = slf.get().state.with(py, |s| s.now());
    let when = match exact_number(py, &delay) {
        Some(d) => now + d,
        // Anything else, and an int too large for a float: Python's `+`, for its
        // result or its error.
        None => PyFloat::new(py, now).add(&delay)?.extract::<f64>()?,
    };
    schedule_at(slf, when, None, callback, args, context, "call_at", CALL_LATER_STACK_DEPTH)
}

/// `call_at`: the deadline must be a real number (asyncio stores anything and fails
/// later, inside the run loop; ferroloop fails here, with `float()`'s message).
pub fn call_at(
    slf: &Bound<'_, LoopCore>,
    when: Bound<'_, PyAny>,
    callback: Bound<'_, PyAny>,
    args: Option<Bound<'_, PyTuple>>,
    context: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<TimerHandle>> {
    if when.is_none() {
        return Err(PyTypeError::new_err("when cannot be None"));
    }
    let given_int = when.cast_exact::<PyInt>().ok().map(|i| i.clone().unbind());
    let when = match exact_number(when.py(), &when) {
        Some(w) => w,
        None => when.extract::<f64>()?,
    };
    schedule_at(slf, when, given_int, callback, args, context, "call_at", HANDLE_STACK_DEPTH)
}

/// An exact float or int as a double, without the intermediate float object that
/// `extract::<f64>()` makes of an int (through `int.__float__`). `None` for anything
/// else, and for an int too large for a float: the caller takes Python's path, for
/// its exact result or error.
#[inline]
fn exact_number(py: Python<'_>, obj: &Bound<'_, PyAny>) -> Option<f64> {
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        return Some(f.value());
    }
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    // SAFETY: `obj` is a live int object; on failure (-1.0 with an exception set)
    // the exception is fetched and dropped.
    let d = unsafe { pyo3::ffi::PyLong_AsDouble(obj.as_ptr()) };
    if d == -1.0 && PyErr::take(py).is_some() {
        None
    } else {
        Some(d)
    }
}

#[allow(clippy::too_many_arguments)]
fn schedule_at(
    slf: &Bound<'_, LoopCore>,
    when: f64,
    given_int: Option<Py<PyInt>>,
    callback: Bound<'_, PyAny>,
    args: Option<Bound<'_, PyTuple>>,
    context: Option<Bound<'_, PyAny>>,
    method: &str,
    depth: usize,
) -> PyResult<Py<TimerHandle>> {
    let py = slf.py();
    let core = slf.get();
    let tb = check_and_trace(core, py, &callback, method, false, depth)?;
    let (ctx, fresh_ctx) = context_for_queue(py, context)?;
    let spare = core.state.with(py, |s| s.spare_slots.pop());
    let (timer, slot) = TimerHandle::new(py, when, given_int, spare, &core.cancelled_timers);
    let init = PyClassInitializer::from(Handle::new(callback.unbind(), args.map(Bound::unbind), ctx, tb)).add_subclass(timer);
    let timer = Bound::new(py, init)?;
    TimerHandle::fill_slot(&timer);
    // asyncio fires a NaN deadline at once (its comparisons with NaN are false).
    let key = if when.is_nan() { f64::NEG_INFINITY } else { when };
    let entry = TimerEntry(slot);
    let pending_cancelled = core.cancelled_timers.get();
    let long = core.state.with(py, |s| {
        s.timers.push(key, entry);
        s.timers.live_len(pending_cancelled) >= UNTRACK_FROM_LEN
    });
    if long {
        // Out of the collector's lists while scheduled, as in a long ready queue.
        Handle::untrack_queued(timer.as_super(), fresh_ctx);
    }
    Ok(timer.unbind())
}
