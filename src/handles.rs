//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and `add_reader`
//! return, and what the ready queue and the timer heap hold.
//!
//! A handle is a callback, its arguments and the `contextvars.Context` it runs in.
//! Running it enters the context through the C API (`PyContext_Enter`), which is what
//! `Context.run` does without building an argument tuple. The cancelled flag is an
//! atomic so the timer heap can test it without the GIL; the rest lives in a
//! `GilCell`. Cancelling drops the callback and arguments at once, as asyncio does,
//! so a cancelled timer keeps nothing alive while it waits to be purged.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyFloat, PyTuple};
use pyo3::PyTraverseError;

use crate::gil_cell::GilCell;

pub struct HandleInner {
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    source_traceback: Option<Py<PyAny>>,
    /// asyncio freezes the repr of a cancelled handle in debug mode.
    frozen_repr: Option<String>,
}

#[pyclass(module = "ferroloop", subclass, frozen, weakref)]
pub struct Handle {
    cancelled: AtomicBool,
    context: Py<PyAny>,
    inner: GilCell<HandleInner>,
}

impl Handle {
    pub fn new(callback: Py<PyAny>, args: Py<PyTuple>, context: Py<PyAny>, source_traceback: Option<Py<PyAny>>) -> Self {
        Handle {
            cancelled: AtomicBool::new(false),
            context,
            inner: GilCell::new(HandleInner { callback: Some(callback), args: Some(args), source_traceback, frozen_repr: None }),
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Runs the callback in its context. The error, if any, is returned for the loop
    /// to report; the loop decides what propagates.
    #[inline]
    pub fn run(&self, py: Python<'_>) -> PyResult<()> {
        let Some((callback, args)) = self.inner.with(py, |i| Some((i.callback.as_ref()?.clone_ref(py), i.args.as_ref()?.clone_ref(py))))
        else {
            return Ok(()); // cancelled while queued
        };
        let ctx = self.context.as_ptr();
        // SAFETY: `ctx` is a live reference; the check only reads its type.
        if unsafe { pyo3::ffi::PyContext_CheckExact(ctx) } == 0 {
            // asyncio calls `context.run(callback, *args)`: any object with a
            // `run` method works, anything else fails here, when run, as there.
            let mut call_args = vec![callback.clone_ref(py).into_bound(py)];
            call_args.extend(args.bind(py).iter());
            let call_args = PyTuple::new(py, call_args)?;
            return self.context.bind(py).call_method1("run", call_args).map(drop);
        }
        // SAFETY: `ctx` is a live reference owned by `self` for the whole call.
        if unsafe { pyo3::ffi::PyContext_Enter(ctx) } != 0 {
            return Err(PyErr::fetch(py));
        }
        let result = callback.bind(py).call1(args.bind(py));
        // SAFETY: we entered `ctx` above on this thread; exiting it is always valid.
        if unsafe { pyo3::ffi::PyContext_Exit(ctx) } != 0 {
            return Err(PyErr::fetch(py));
        }
        result.map(drop)
    }

    /// Cancels without recording a repr (handles the loop replaces internally).
    pub fn cancel_silently(&self, py: Python<'_>) {
        self.cancel_inner(py, None)
    }

    fn cancel_inner(&self, py: Python<'_>, debug_repr: Option<String>) {
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return;
        }
        self.release_callback(py, debug_repr);
    }

    /// Drops the callback and arguments of a cancelled handle, keeping `debug_repr`.
    fn release_callback(&self, py: Python<'_>, debug_repr: Option<String>) {
        let (cb, args) = self.inner.with(py, |i| {
            if debug_repr.is_some() {
                i.frozen_repr = debug_repr;
            }
            (i.callback.take(), i.args.take())
        });
        drop((cb, args)); // outside the cell: dropping may run Python code
    }

    /// Whether the callback is the object at `ptr` (false once cancelled). Runs no
    /// Python code, so it may be called inside the loop state's `with`.
    pub fn callback_is(&self, py: Python<'_>, ptr: *mut pyo3::ffi::PyObject) -> bool {
        !self.is_cancelled() && self.inner.with(py, |i| i.callback.as_ref().is_some_and(|c| c.as_ptr() == ptr))
    }

    pub fn callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.callback.as_ref().map(|c| c.clone_ref(py)))
    }

    fn callback_and_args(&self, py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyTuple>>) {
        self.inner.with(py, |i| (i.callback.as_ref().map(|c| c.clone_ref(py)), i.args.as_ref().map(|a| a.clone_ref(py))))
    }

    fn repr_parts(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let (callback, args) = self.callback_and_args(py);
        let tb = self.inner.with(py, |i| i.source_traceback.as_ref().map(|t| t.clone_ref(py)));
        let mut parts = Vec::new();
        if self.is_cancelled() {
            parts.push("cancelled".to_string());
        }
        if let Some(cb) = callback {
            parts.push(format_callback_source(py, cb.bind(py), args)?);
        }
        if let Some(tb) = tb {
            if let Ok(frame) = tb.bind(py).get_item(-1) {
                let file: String = frame.getattr("filename")?.extract()?;
                let line: String = frame.getattr("lineno")?.str()?.extract()?;
                parts.push(format!("created at {file}:{line}"));
            }
        }
        Ok(parts)
    }

    fn frozen_repr(&self, py: Python<'_>) -> Option<String> {
        self.inner.with(py, |i| i.frozen_repr.clone())
    }
}

/// asyncio's own rendering of a callback and its arguments ("func(1, 2) at f.py:3").
pub fn format_callback_source(py: Python<'_>, callback: &Bound<'_, PyAny>, args: Option<Py<PyTuple>>) -> PyResult<String> {
    static FORMAT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let format = FORMAT.import(py, "asyncio.format_helpers", "_format_callback_source")?;
    let args = args.map_or_else(|| PyTuple::empty(py), |a| a.into_bound(py));
    format.call1((callback, args))?.extract()
}

fn class_name(slf: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(slf.get_type().qualname()?.to_string())
}

#[pymethods]
impl Handle {
    // Handles sit in reference cycles often (an object keeps the timer whose callback
    // is its own bound method), so they take part in garbage collection.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.context)?;
        if let Some(i) = self.inner.get_for_traverse() {
            visit.call(&i.callback)?;
            visit.call(&i.args)?;
            visit.call(&i.source_traceback)?;
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self.inner.with(py, |i| (i.callback.take(), i.args.take(), i.source_traceback.take()));
        drop(taken);
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.get().cancel_with_repr(py, slf.as_any())
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    /// Runs the callback now (asyncio's private `Handle._run`, used by some tests and
    /// libraries); errors go to the exception handler of the running loop.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if let Err(err) = slf.get().run(py) {
            crate::dispatch::report_callback_error(py, None, slf, err)?;
        }
        Ok(())
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.callback_and_args(py).1
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.source_traceback.as_ref().map(|t| t.clone_ref(py)))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        if let Some(r) = slf.get().frozen_repr(py) {
            return Ok(r);
        }
        let mut parts = vec![class_name(slf.as_any())?];
        parts.extend(slf.get().repr_parts(py)?);
        Ok(format!("<{}>", parts.join(" ")))
    }
}

impl Handle {
    /// asyncio keeps the repr a cancelled handle had, in debug mode, for its logs.
    fn cancel_with_repr(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.is_cancelled() {
            return Ok(());
        }
        let debug = self.inner.with(py, |i| i.source_traceback.is_some());
        if !debug {
            self.cancel_inner(py, None);
            return Ok(());
        }
        // asyncio marks the handle cancelled first, so the kept repr reads
        // "<Handle cancelled callback() ...>", callback included.
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let repr = obj.repr().map(|r| r.to_string());
        self.release_callback(py, repr.as_ref().ok().cloned());
        repr.map(drop)
    }
}

/// What the loop's timer heap holds for one timer: the handle, only while it is
/// scheduled. Cancelling empties the slot, so a cancelled timer waiting to be
/// purged keeps this small Rust allocation alive, not the handle with its context
/// (garbage-collected objects: a million of them made every collection slow).
pub struct TimerSlot {
    scheduled: AtomicBool,
    handle: GilCell<Option<Py<Handle>>>,
}

impl TimerSlot {
    #[inline]
    pub fn is_scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    /// Takes the handle out of the heap's reach (it fired, was cancelled, or the
    /// loop dropped it). Drop the result after any state borrow ends.
    pub fn unschedule(&self, py: Python<'_>) -> Option<Py<Handle>> {
        if !self.scheduled.swap(false, Ordering::Relaxed) {
            return None;
        }
        self.handle.with(py, Option::take)
    }

    /// For the loop's `__traverse__`.
    pub fn handle_for_traverse(&self) -> Option<&Py<Handle>> {
        self.handle.get_for_traverse().and_then(Option::as_ref)
    }
}

/// A handle with a deadline. `cancel()` also tells the loop, through a counter it
/// shares with the loop's timer queue, so the queue knows when to purge.
#[pyclass(module = "ferroloop", extends = Handle, frozen)]
pub struct TimerHandle {
    when: f64,
    slot: Arc<TimerSlot>,
    cancelled_timers: Arc<AtomicUsize>,
}

impl TimerHandle {
    /// A timer and the slot for the heap, which `fill_slot` then points at it.
    pub fn new(when: f64, cancelled_timers: Arc<AtomicUsize>) -> (Self, Arc<TimerSlot>) {
        let slot = Arc::new(TimerSlot { scheduled: AtomicBool::new(true), handle: GilCell::new(None) });
        (TimerHandle { when, slot: slot.clone(), cancelled_timers }, slot)
    }

    pub fn fill_slot(slf: &Bound<'_, Self>) {
        let handle = slf.as_super().clone().unbind();
        slf.get().slot.handle.with(slf.py(), |h| *h = Some(handle));
    }

    #[inline]
    pub fn is_scheduled(&self) -> bool {
        self.slot.is_scheduled()
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let base = slf.as_super();
        if base.get().is_cancelled() {
            return Ok(());
        }
        let py = slf.py();
        let me = slf.get();
        let was_scheduled = me.slot.is_scheduled();
        let unscheduled = me.slot.unschedule(py);
        if was_scheduled {
            me.cancelled_timers.fetch_add(1, Ordering::Relaxed);
        }
        let result = base.get().cancel_with_repr(py, slf.as_any());
        drop(unscheduled); // a reference to ourselves, not the last one
        result
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.is_scheduled()
    }

    /// `hash(when)`, as asyncio defines it (Python's float hash, not the bits).
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        PyFloat::new(py, self.when).hash()
    }

    fn __richcmp__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || timers_equal(slf, other)?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || timers_equal(slf, other)?,
            CompareOp::Eq => timers_equal(slf, other)?,
            CompareOp::Ne => !timers_equal(slf, other)?,
        };
        Ok(PyBool::new(py, result).to_owned().into_any().unbind())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let base = slf.as_super().get();
        if let Some(r) = base.frozen_repr(py) {
            return Ok(r);
        }
        let mut parts = vec![class_name(slf.as_any())?];
        let rest = base.repr_parts(py)?;
        let cancelled = base.is_cancelled();
        let (head, tail) = rest.split_at(usize::from(cancelled));
        parts.extend_from_slice(head);
        parts.push(format!("when={}", PyFloat::new(py, slf.get().when).repr()?));
        parts.extend_from_slice(tail);
        Ok(format!("<{}>", parts.join(" ")))
    }
}

/// `a == b` for timer handles, as asyncio defines it: same deadline, callback,
/// arguments and cancelled state.
fn timers_equal(x: &Bound<'_, TimerHandle>, y: &Bound<'_, TimerHandle>) -> PyResult<bool> {
    if x.is(y) {
        return Ok(true);
    }
    let (a, b) = (x.as_super().get(), y.as_super().get());
    if x.get().when != y.get().when || a.is_cancelled() != b.is_cancelled() {
        return Ok(false);
    }
    let py = x.py();
    let (ca, aa) = a.callback_and_args(py);
    let (cb, ab) = b.callback_and_args(py);
    Ok(optional_eq(py, ca, cb)? && optional_eq(py, aa.map(Py::into_any), ab.map(Py::into_any))?)
}

fn optional_eq(py: Python<'_>, a: Option<Py<PyAny>>, b: Option<Py<PyAny>>) -> PyResult<bool> {
    match (a, b) {
        (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)),
        (None, None) => Ok(true),
        _ => Ok(false),
    }
}

pub fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}
