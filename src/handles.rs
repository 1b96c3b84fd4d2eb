//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and `add_reader`
//! return, and what the ready queue and the timer queue hold.
//!
//! A handle is a callback, its arguments and the `contextvars.Context` it runs in.
//! Running it enters the context through the C API (`PyContext_Enter`), which is what
//! `Context.run` does without building an argument tuple. The cancelled flag is a
//! `GilFlag` (an atomic written only under the GIL) so it can be read anywhere; the
//! rest lives in a `GilCell`. Cancelling drops the callback and arguments at once,
//! as asyncio does, so a cancelled timer keeps nothing alive while it waits to be
//! purged.

use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyTuple};
use pyo3::PyTraverseError;

use crate::gil_cell::{GilCell, GilCounter, GilFlag, GilRc};

pub struct HandleInner {
    /// None once released (cancelled, or emptied for reuse).
    callback: Option<Py<PyAny>>,
    /// None when the callback takes no arguments (`call_soon(cb)`, most calls).
    args: Option<Py<PyTuple>>,
    /// Always set, except in a spare handle waiting in the loop for reuse.
    context: Option<Py<PyAny>>,
    /// Set only for handles made in debug mode, so the common handle stays small
    /// (a burst of `call_soon_threadsafe` queues hundreds of thousands of them).
    debug: Option<Box<DebugInfo>>,
    /// The context is a copy the loop took out of the collector's lists
    /// (`Handle::untrack_queued`).
    context_untracked: bool,
}

/// What a handle made in debug mode also keeps.
struct DebugInfo {
    source_traceback: Py<PyAny>,
    /// asyncio freezes the repr of a cancelled handle in debug mode.
    frozen_repr: Option<String>,
}

impl HandleInner {
    fn source_traceback(&self) -> Option<&Py<PyAny>> {
        self.debug.as_ref().map(|d| &d.source_traceback)
    }

    fn take_source_traceback(&mut self) -> Option<Py<PyAny>> {
        self.debug.take().map(|d| d.source_traceback)
    }
}

impl Drop for HandleInner {
    /// However the handle dies, an untracked context must be tracked again before
    /// its last reference can go (see `Released::drop_now`).
    fn drop(&mut self) {
        if let (Some(ctx), true) = (&self.context, self.context_untracked) {
            track(ctx.as_ptr());
        }
    }
}

#[pyclass(module = "ferroloop", subclass, frozen, weakref)]
pub struct Handle {
    cancelled: GilFlag,
    /// Made by `call_soon` and dropped by the loop without anyone else holding it:
    /// the loop may reuse the object for a later `call_soon` (see `take_for_reuse`).
    reusable: bool,
    /// The loop took the handle out of the collector's lists (`untrack_queued`).
    untracked: GilFlag,
    inner: GilCell<HandleInner>,
}

/// What a handle held, taken out to be dropped after any state borrow ends (dropping
/// may run Python code). Dropped through `Bound`, which decrefs directly.
pub struct Released(Option<Py<PyAny>>, Option<Py<PyTuple>>, Option<Py<PyAny>>, Option<Py<PyAny>>, bool);

impl Released {
    /// Drops what a handle held. A context copy the loop untracked for the queue
    /// goes back under the collector first: CPython's context dealloc unlinks it
    /// from the collector's lists unconditionally (and something else may hold it).
    pub fn drop_now(self, py: Python<'_>) {
        if let (Some(ctx), true) = (&self.2, self.4) {
            track(ctx.as_ptr());
        }
        drop((
            self.0.map(|o| o.into_bound(py)),
            self.1.map(|o| o.into_bound(py)),
            self.2.map(|o| o.into_bound(py)),
            self.3.map(|o| o.into_bound(py)),
        ));
    }
}

impl Handle {
    pub fn new(callback: Py<PyAny>, args: Option<Py<PyTuple>>, context: Py<PyAny>, source_traceback: Option<Py<PyAny>>) -> Self {
        Self::with_fields(false, callback, args, context, source_traceback)
    }

    /// A handle the loop may reuse once it drops the last reference (`call_soon`'s).
    pub fn new_reusable(callback: Py<PyAny>, args: Option<Py<PyTuple>>, context: Py<PyAny>, source_traceback: Option<Py<PyAny>>) -> Self {
        Self::with_fields(true, callback, args, context, source_traceback)
    }

    fn with_fields(reusable: bool, callback: Py<PyAny>, args: Option<Py<PyTuple>>, context: Py<PyAny>, tb: Option<Py<PyAny>>) -> Self {
        Handle {
            cancelled: GilFlag::new(false),
            reusable,
            untracked: GilFlag::new(false),
            inner: GilCell::new(HandleInner {
                callback: Some(callback),
                args,
                context: Some(context),
                debug: tb.map(|source_traceback| Box::new(DebugInfo { source_traceback, frozen_repr: None })),
                context_untracked: false,
            }),
        }
    }

    /// Empties a handle the loop held the only reference to, so the object can be
    /// refilled by a later `call_soon` instead of freed and allocated again (an
    /// allocation and a deallocation of a garbage-collected object cost more than
    /// the rest of `call_soon`). Nobody can observe the reuse: no other reference,
    /// no weak reference, and the handle came from `call_soon` (not a timer, not a
    /// subclass). Returns what the handle held, or None if it cannot be reused.
    pub fn take_for_reuse(slf: &Bound<'_, Handle>) -> Option<Released> {
        let me = slf.get();
        // SAFETY: `slf` is a live object; reading its refcount and its type's weak
        // reference list offset (the list head lives at that offset in the object,
        // also for managed weakrefs on 3.12+) has no preconditions.
        let unobserved = unsafe {
            let obj = slf.as_ptr();
            let offset = (*pyo3::ffi::Py_TYPE(obj)).tp_weaklistoffset;
            pyo3::ffi::Py_REFCNT(obj) == 1
                && offset != 0
                && (*(obj as *const u8).offset(offset).cast::<*mut pyo3::ffi::PyObject>()).is_null()
        };
        if !me.reusable || !unobserved {
            return None;
        }
        me.cancelled.set(slf.py(), false);
        Some(me.inner.with(slf.py(), |i| {
            let ctx_untracked = std::mem::take(&mut i.context_untracked);
            Released(i.callback.take(), i.args.take(), i.context.take(), i.take_source_traceback(), ctx_untracked)
        }))
    }

    /// Visits what the handle references (for its own `__traverse__`, and for the
    /// loop's while the handle waits in the ready queue untracked).
    pub fn traverse_contents(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(i) = self.inner.get_for_traverse() {
            visit.call(&i.context)?;
            visit.call(&i.callback)?;
            visit.call(&i.args)?;
            visit.call(i.source_traceback())?;
        }
        Ok(())
    }

    /// Takes a handle just made for the ready queue (or a timer for the heap) out of
    /// the garbage collector's lists. A long ready queue (a burst of `call_soon_threadsafe`, a thousand task
    /// steps) otherwise fills the young generation with handles that every
    /// collection traverses, though the loop is about to run and drop them. While
    /// queued, the loop's `__traverse__` visits the handle's references on its
    /// behalf if the loop holds the only reference (see `LoopCore::__traverse__`),
    /// and `track_again` puts the handle back under the collector once the loop lets
    /// go of it while someone else still holds it.
    /// `fresh_context`: the context is a copy made for this handle alone, untracked
    /// with it (CPython's context dealloc requires it tracked again first: see
    /// `Released::drop_now` and `HandleInner`'s `Drop`).
    pub fn untrack_queued(slf: &Bound<'_, Handle>, fresh_context: bool) {
        let me = slf.get();
        if !me.untracked.replace(slf.py(), true) {
            // SAFETY: a live, tracked garbage-collected object (the flag says so).
            unsafe { pyo3::ffi::PyObject_GC_UnTrack(slf.as_ptr().cast()) };
        }
        if fresh_context {
            me.inner.with(slf.py(), |i| {
                if let (Some(ctx), false) = (&i.context, i.context_untracked) {
                    // SAFETY: a live context only this handle holds, tracked (flag).
                    unsafe { pyo3::ffi::PyObject_GC_UnTrack(ctx.as_ptr().cast()) };
                    i.context_untracked = true;
                }
            });
        }
    }

    /// For the loop's `__traverse__` (no `Python` token there, the collector holds
    /// the GIL): an untracked handle whose one reference is the caller's.
    pub fn untracked_and_held_only_once(h: &Py<Handle>) -> bool {
        // SAFETY: a live object; reads its refcount only.
        h.get().untracked.get() && unsafe { pyo3::ffi::Py_REFCNT(h.as_ptr()) } == 1
    }

    /// Puts an untracked handle, and the context copy untracked with it, back under
    /// the garbage collector: before the loop drops its reference to a handle
    /// somebody else still holds, or drops its queue at close.
    #[inline]
    pub fn track_again(slf: &Bound<'_, Handle>) {
        let me = slf.get();
        if !me.untracked.replace(slf.py(), false) {
            return; // never untracked, so neither was its context
        }
        track(slf.as_ptr());
        me.inner.with(slf.py(), |i| {
            if let (Some(ctx), true) = (&i.context, i.context_untracked) {
                track(ctx.as_ptr());
                i.context_untracked = false;
            }
        });
    }

    /// Refills a handle emptied by `take_for_reuse`. Only stores references (drops
    /// nothing), so it may run inside the loop state's `with`.
    pub fn refill(&self, py: Python<'_>, callback: Py<PyAny>, args: Option<Py<PyTuple>>, context: Py<PyAny>, tb: Option<Py<PyAny>>) {
        self.inner.with(py, |i| {
            // Emptied by `take_for_reuse`: nothing to drop (so no drop call either).
            debug_assert!(i.callback.is_none() && i.context.is_none() && i.debug.is_none());
            i.callback = Some(callback);
            i.args = args;
            i.context = Some(context);
            if let Some(source_traceback) = tb {
                i.debug = Some(Box::new(DebugInfo { source_traceback, frozen_repr: None }));
            }
        });
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }

    /// Runs the callback in its context. The error, if any, is returned for the loop
    /// to report; the loop decides what propagates.
    #[inline(always)]
    pub fn run(&self, py: Python<'_>) -> PyResult<()> {
        // Strong references for the call (the callback may cancel its own handle,
        // which drops them from the handle); the context is kept alive by the thread
        // state while entered, and nothing replaces it (only spares are refilled).
        let Some((callback, args, ctx)) = self.inner.with(py, |i| {
            Some((i.callback.as_ref()?.bind(py).clone(), i.args.as_ref().map(|a| a.bind(py).clone()), i.context.as_ref()?.as_ptr()))
        }) else {
            return Ok(()); // cancelled while queued
        };
        // SAFETY: `ctx` is a live reference held by the handle; the check only reads its type.
        if unsafe { pyo3::ffi::PyContext_CheckExact(ctx) } == 0 {
            // asyncio calls `context.run(callback, *args)`: any object with a
            // `run` method works, anything else fails here, when run, as there.
            let mut call_args = vec![callback];
            call_args.extend(args.iter().flat_map(|a| a.iter()));
            let call_args = PyTuple::new(py, call_args)?;
            // SAFETY: as above, `ctx` is live for this call.
            let ctx = unsafe { Bound::from_borrowed_ptr(py, ctx) };
            return ctx.call_method1("run", call_args).map(drop);
        }
        // SAFETY: `ctx` is a live reference owned by the handle; entering it takes a
        // reference of its own for as long as it is entered.
        if unsafe { pyo3::ffi::PyContext_Enter(ctx) } != 0 {
            return Err(PyErr::fetch(py));
        }
        // Vectorcall with the tuple's own item array: no argument tuple is built
        // and no `*args` unpacking happens in the callee's call path.
        // SAFETY: `args` is a tuple we hold a reference to for the whole call, so
        // its item array stays valid; `callback` is a live object.
        let result = unsafe {
            let (items, nargs) = match &args {
                Some(args) => {
                    let tuple = args.as_ptr().cast::<pyo3::ffi::PyTupleObject>();
                    ((*tuple).ob_item.as_ptr(), pyo3::ffi::PyTuple_GET_SIZE(args.as_ptr()) as usize)
                }
                None => (std::ptr::null(), 0),
            };
            let ret = pyo3::ffi::PyObject_Vectorcall(callback.as_ptr(), items, nargs, std::ptr::null_mut());
            Bound::from_owned_ptr_or_err(py, ret)
        };
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
        if self.cancelled.replace(py, true) {
            return;
        }
        self.release_callback(py, debug_repr);
    }

    /// Drops the callback and arguments of a cancelled handle, keeping `debug_repr`.
    fn release_callback(&self, py: Python<'_>, debug_repr: Option<String>) {
        let (cb, args) = self.inner.with(py, |i| {
            if let (Some(d), Some(_)) = (&mut i.debug, &debug_repr) {
                d.frozen_repr = debug_repr;
            }
            (i.callback.take(), i.args.take())
        });
        // Outside the cell: dropping may run Python code. Through Bound, which
        // decrefs directly (PyO3's Py drop reads a thread-local first).
        drop((cb.map(|o| o.into_bound(py)), args.map(|o| o.into_bound(py))));
    }

    /// Whether the callback is the object at `ptr` (false once cancelled). Runs no
    /// Python code, so it may be called inside the loop state's `with`.
    pub fn callback_is(&self, py: Python<'_>, ptr: *mut pyo3::ffi::PyObject) -> bool {
        !self.is_cancelled() && self.inner.with(py, |i| i.callback.as_ref().is_some_and(|c| c.as_ptr() == ptr))
    }

    fn context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.context.as_ref().map(|c| c.clone_ref(py)))
    }

    pub fn callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.callback.as_ref().map(|c| c.clone_ref(py)))
    }

    fn callback_and_args(&self, py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyTuple>>) {
        let (callback, args) =
            self.inner.with(py, |i| (i.callback.as_ref().map(|c| c.clone_ref(py)), i.args.as_ref().map(|a| a.clone_ref(py))));
        // asyncio's `_args`: `()` without arguments, None once released.
        let args = callback.as_ref().map(|_| args.unwrap_or_else(|| PyTuple::empty(py).unbind()));
        (callback, args)
    }

    fn repr_parts(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let (callback, args) = self.callback_and_args(py);
        let tb = self.source_traceback(py);
        let mut parts = Vec::new();
        if self.is_cancelled() {
            parts.push("cancelled".to_string());
        }
        if let Some(cb) = callback {
            // 3.13 shows the arguments only when the handle's loop is in debug mode;
            // a handle does not keep its loop, but it has a source traceback exactly
            // when that loop was in debug mode as it made the handle.
            parts.push(format_callback_source(py, cb.bind(py), args, tb.is_some())?);
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
        self.inner.with(py, |i| i.debug.as_ref().and_then(|d| d.frozen_repr.clone()))
    }

    fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.with(py, |i| i.source_traceback().map(|t| t.clone_ref(py)))
    }
}

/// Puts a garbage-collected object the loop untracked back under the collector.
fn track(obj: *mut pyo3::ffi::PyObject) {
    // SAFETY: `obj` is a live garbage-collected object (a handle or a context)
    // the loop untracked, as its flag recorded; tracking only links it into the
    // collector's lists.
    unsafe { pyo3::ffi::PyObject_GC_Track(obj.cast()) }
}

/// asyncio's own rendering of a callback and its arguments ("func(1, 2) at f.py:3").
/// From 3.13 asyncio hides the arguments ("func() at f.py:3") unless `debug`, as
/// they may hold secrets; earlier versions always show them and take no `debug`.
pub fn format_callback_source(py: Python<'_>, callback: &Bound<'_, PyAny>, args: Option<Py<PyTuple>>, debug: bool) -> PyResult<String> {
    static FORMAT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let format = FORMAT.import(py, "asyncio.format_helpers", "_format_callback_source")?;
    let args = args.map_or_else(|| PyTuple::empty(py), |a| a.into_bound(py));
    if py.version_info() >= (3, 13) {
        let kwargs = PyDict::new(py);
        kwargs.set_item("debug", debug)?;
        return format.call((callback, args), Some(&kwargs))?.extract();
    }
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
        self.traverse_contents(&visit)
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self.inner.with(py, |i| {
            let ctx_untracked = std::mem::take(&mut i.context_untracked);
            Released(i.callback.take(), i.args.take(), i.context.take(), i.take_source_traceback(), ctx_untracked)
        });
        taken.drop_now(py);
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.get().cancel_with_repr(py, slf.as_any())
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context(py)
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
    fn _context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback(py)
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
        let debug = self.inner.with(py, |i| i.debug.is_some());
        if !debug {
            self.cancel_inner(py, None);
            return Ok(());
        }
        // asyncio marks the handle cancelled first, so the kept repr reads
        // "<Handle cancelled callback() ...>", callback included.
        if self.cancelled.replace(py, true) {
            return Ok(());
        }
        let repr = obj.repr().map(|r| r.to_string());
        self.release_callback(py, repr.as_ref().ok().cloned());
        repr.map(drop)
    }
}

/// What the loop's timer queue holds for one timer: the handle, only while it is
/// scheduled. Cancelling empties the slot, so a cancelled timer waiting to be
/// purged keeps this small Rust allocation alive, not the handle with its context
/// (garbage-collected objects: a million of them made every collection slow).
/// Slots are reused from timer to timer (`LoopState::recycle_slot`), so the loop's
/// count of cancelled timers is reached through the slot rather than cloned into
/// every handle.
pub struct TimerSlot {
    scheduled: GilFlag,
    handle: GilCell<Option<Py<Handle>>>,
    cancelled_timers: Arc<GilCounter>,
}

impl TimerSlot {
    #[inline]
    pub fn is_scheduled(&self) -> bool {
        self.scheduled.get()
    }

    /// Takes the handle out of the heap's reach (it fired, was cancelled, or the
    /// loop dropped it). Drop the result after any state borrow ends.
    pub fn unschedule(&self, py: Python<'_>) -> Option<Py<Handle>> {
        if !self.scheduled.replace(py, false) {
            return None;
        }
        self.handle.with(py, Option::take)
    }

    /// For the loop's `__traverse__`.
    pub fn handle_for_traverse(&self) -> Option<&Py<Handle>> {
        self.handle.get_for_traverse().and_then(Option::as_ref)
    }
}

/// A handle with a deadline. `cancel()` also tells the loop, through a counter its
/// slot shares with the loop's timer queue, so the queue knows when to purge.
#[pyclass(module = "ferroloop", extends = Handle, frozen)]
pub struct TimerHandle {
    when: f64,
    /// The deadline as `call_at` was given it when that was an int, which
    /// `when()` returns as asyncio does (`call_at(math.ceil(t))` in aiohttp);
    /// timers are ordered by `when`. (An int holds no references: not traversed.)
    given_int: Option<Py<PyInt>>,
    slot: GilRc<TimerSlot>,
}

impl TimerHandle {
    /// A timer and the slot for the heap, which `fill_slot` then points at it.
    /// `spare`: an empty slot nobody else holds, from the loop's reserve; a new
    /// slot reports cancellations to `cancelled_timers`.
    pub fn new(
        py: Python<'_>,
        when: f64,
        given_int: Option<Py<PyInt>>,
        spare: Option<GilRc<TimerSlot>>,
        cancelled_timers: &Arc<GilCounter>,
    ) -> (Self, GilRc<TimerSlot>) {
        let slot = match spare {
            Some(slot) => {
                slot.scheduled.set(py, true);
                slot
            }
            None => GilRc::new(TimerSlot {
                scheduled: GilFlag::new(true),
                handle: GilCell::new(None),
                cancelled_timers: cancelled_timers.clone(),
            }),
        };
        (TimerHandle { when, given_int, slot: slot.clone_ref(py) }, slot)
    }

    fn when_object(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.given_int {
            Some(int) => int.clone_ref(py).into_any(),
            None => PyFloat::new(py, self.when).into_any().unbind(),
        }
    }

    pub fn fill_slot(slf: &Bound<'_, Self>) {
        let handle = slf.as_super().clone().unbind();
        slf.get().slot.handle.with(slf.py(), |h| *h = Some(handle));
    }

    #[inline]
    pub fn is_scheduled(&self) -> bool {
        self.slot.is_scheduled()
    }

    /// `TimerHandle.cancel()`: out of the heap at once, callback and arguments dropped.
    pub fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let base = slf.as_super();
        if base.get().is_cancelled() {
            return Ok(());
        }
        let py = slf.py();
        let me = slf.get();
        let was_scheduled = me.slot.is_scheduled();
        let unscheduled = me.slot.unschedule(py);
        if let Some(h) = &unscheduled {
            Handle::track_again(h.bind(py)); // out of the heap, and the caller holds it
        }
        if was_scheduled {
            me.slot.cancelled_timers.add(py, 1);
        }
        let result = base.get().cancel_with_repr(py, slf.as_any());
        drop(unscheduled.map(|h| h.into_bound(py))); // a reference to ourselves, not the last one
        result
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    // `cancel()` is a raw no-argument C method (`fastcall::install`) calling the
    // inherent `TimerHandle::cancel`: `asyncio.timeout` and `wait_for` cancel a timer
    // every time.

    #[getter]
    fn _when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.is_scheduled()
    }

    /// `hash(when)`, as asyncio defines it (Python's hash, not the bits).
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.when_object(py).bind(py).hash()
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
        parts.push(format!("when={}", slf.get().when_object(py).bind(py).repr()?));
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
