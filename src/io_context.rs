//! The `contextvars.Context` an fd owner's I/O runs in.
//!
//! asyncio reaches every protocol callback through a `Handle` that `add_reader` (or
//! `add_writer`) made, and a handle runs in a copy of the context current when it was
//! made: a transport's reads run in a copy of the context it was created in (its
//! reader is added by a handle queued then), taken anew when `resume_reading()`
//! adds the reader again (in the caller's context); a server accepts in a copy of
//! the context that started serving, and sets up each connection in a copy of that
//! (a task per connection). So a variable set in one connection's callbacks stays in
//! that connection. ferroloop's fd owners are called straight from dispatch, with no
//! `Handle`, so each keeps the copy such a handle would hold, and dispatch enters it
//! around the owner's work (`run_in`).

use pyo3::ffi;
use pyo3::prelude::*;

use crate::gil_cell::GilCell;

/// A copy of the current thread's context (`contextvars.copy_context()`).
pub fn copy_current(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held; a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }.map(Bound::unbind)
}

/// Makes an owner's context (the `Option` `slot` picks out of its state) a new copy
/// of the current one, as asyncio makes its reader handle anew (reading resumed, a
/// listener started); the old one is dropped after the borrow.
pub fn renew<T>(py: Python<'_>, state: &GilCell<T>, slot: impl FnOnce(&mut T) -> &mut Option<Py<PyAny>>) -> PyResult<()> {
    let ctx = copy_current(py)?;
    let old = state.with(py, |s| slot(s).replace(ctx));
    drop(old); // dropping may run Python code: not inside the cell
    Ok(())
}

/// A copy of `ctx` (`ctx.copy()`).
pub fn copy_of(py: Python<'_>, ctx: &Py<PyAny>) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held; `ctx` is a live `Context` (every context here was made
    // by `copy_current` or this function); a new reference or NULL with an exception.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_Copy(ctx.as_ptr())) }.map(Bound::unbind)
}

/// Runs `f` with `ctx` entered, as `ctx.run(f)` does; `f` alone without one (an
/// owner whose context the collector cleared).
#[inline(always)]
pub fn run_in<R>(py: Python<'_>, ctx: Option<Bound<'_, PyAny>>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    let Some(ctx) = ctx else { return f() };
    // SAFETY: the GIL is held and `ctx` is a live `Context` (every one here is made by
    // this module), held by us for the whole call: `f` may replace the owner's.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let result = f();
    // SAFETY: as above; entered on this thread just now.
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } != 0 {
        let exit_error = PyErr::fetch(py);
        return result.and(Err(exit_error)); // the callback's own error first
    }
    result
}

/// An owner's context, for `run_in`.
#[inline(always)]
pub fn bind<'py>(py: Python<'py>, ctx: &Option<Py<PyAny>>) -> Option<Bound<'py, PyAny>> {
    ctx.as_ref().map(|c| c.bind(py).clone())
}
