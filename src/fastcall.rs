//! Raw vectorcall entry points for the loop's hottest methods: `call_soon`,
//! `call_soon_threadsafe`, `call_later` and `call_at`, `get_debug` (asked by every
//! C `Future` and `Task` made), `TimerHandle.cancel`
//! (`asyncio.timeout` and `wait_for` schedule and cancel a timer every time), and
//! the stream transport's `write` (every reply of every protocol); and the `am_send`
//! slot of `SockOp`, through which `PyIter_Send` steps a socket operation and gets
//! its result without a `StopIteration` being raised. On 3.10 and 3.11 that is how
//! `await loop.sock_recv(...)` steps it; 3.12+ `await` calls `__next__`/`send`
//! instead, which keep working as before.
//!
//! C `Task` and `Future` call `call_soon` on every step and done-callback, so its
//! fixed cost is the loop's. PyO3's generic method wrapper (argument description
//! walk, `*args` tuple, a second type check, thread-local bookkeeping) cost about as
//! much as the rest of `call_soon` together, so these four methods are plain
//! `METH_FASTCALL | METH_KEYWORDS` C functions, installed on `LoopCore` when the
//! module is imported. Each parses its fixed signature `(leading..., *args,
//! context=None)` by hand, with the errors PyO3 gives for the same signature, and
//! calls the body in `scheduling`.
//!
//! No PyO3 trampoline runs, so PyO3 does not count this thread as attached: code
//! here must not drop a `Py<T>` on the success path (PyO3 would defer the decref to
//! its pool); values are held as `Bound`, whose drop decrefs directly.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyNone, PyString, PyTuple, PyType};

use crate::event_loop::LoopCore;
use crate::handles::TimerHandle;
use crate::scheduling;
use crate::sock::{SockOp, Step};
use crate::transport::StreamTransportCore;

/// Installs the four scheduling methods and `get_debug` on `loop_type` (the
/// `LoopCore` type object), `cancel` on `timer_type` (`TimerHandle`), `write` on
/// `stream_type` (`StreamTransportCore`) and `am_send` on `sockop_type` (`SockOp`).
pub fn install(
    loop_type: &Bound<'_, PyType>,
    timer_type: &Bound<'_, PyType>,
    stream_type: &Bound<'_, PyType>,
    sockop_type: &Bound<'_, PyType>,
) -> PyResult<()> {
    install_am_send(sockop_type)?;
    let methods: [(&'static CStr, ffi::PyCFunctionFastWithKeywords, &'static CStr); 4] = [
        (c"call_soon", call_soon, c"Arrange for a callback to be called as soon as possible."),
        (c"call_soon_threadsafe", call_soon_threadsafe, c"Like call_soon(), but thread-safe."),
        (c"call_later", call_later, c"Arrange for a callback to be called at a given time."),
        (c"call_at", call_at, c"Like call_later(), but uses an absolute time."),
    ];
    for (name, meth, doc) in methods {
        let meth = ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: meth };
        add_method(loop_type, name, meth, ffi::METH_FASTCALL | ffi::METH_KEYWORDS, doc)?;
    }
    let get_debug = ffi::PyMethodDefPointer { PyCFunction: loop_get_debug };
    add_method(loop_type, c"get_debug", get_debug, ffi::METH_NOARGS, c"Whether the loop is in debug mode.")?;
    add_method(timer_type, c"cancel", ffi::PyMethodDefPointer { PyCFunction: timer_cancel }, ffi::METH_NOARGS, c"Cancel the timer.")?;
    let write = ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: stream_write };
    add_method(stream_type, c"write", write, ffi::METH_FASTCALL | ffi::METH_KEYWORDS, c"Write some data bytes to the transport.")
}

/// Sets `am_send` on `sockop_type` (and on 3.10 the flag that announces it, removed
/// in 3.11), as a type spec's `Py_am_send` slot would have.
fn install_am_send(sockop_type: &Bound<'_, PyType>) -> PyResult<()> {
    const PY_TPFLAGS_HAVE_AM_SEND: std::ffi::c_ulong = 1 << 21;
    let before_3_11 = sockop_type.py().version_info() < (3, 11);
    // SAFETY: `sockop_type` is a live heap type made by PyO3 (`PyType_FromSpec`), so
    // `tp_as_async` points at the `PyAsyncMethods` inside its own type object, which
    // lives as long as the type; it has `__await__`, so the struct is in use. Both
    // are set at import, before any instance exists.
    unsafe {
        let ty = sockop_type.as_type_ptr();
        let async_methods = (*ty).tp_as_async;
        if async_methods.is_null() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("SockOp has no async methods table"));
        }
        (*async_methods).am_send = Some(sockop_send);
        if before_3_11 {
            // A cast, not `|=` on the field: free-threaded builds (3.13+, never
            // here) declare it atomic, with the same layout.
            *std::ptr::addr_of_mut!((*ty).tp_flags).cast::<std::ffi::c_ulong>() |= PY_TPFLAGS_HAVE_AM_SEND;
        }
    }
    Ok(())
}

fn add_method(ty: &Bound<'_, PyType>, name: &'static CStr, meth: ffi::PyMethodDefPointer, flags: i32, doc: &'static CStr) -> PyResult<()> {
    // CPython keeps a pointer to the definition for the life of the descriptor,
    // so it must live forever: leaked once per module initialisation.
    let def = Box::leak(Box::new(ffi::PyMethodDef { ml_name: name.as_ptr(), ml_meth: meth, ml_flags: flags, ml_doc: doc.as_ptr() }));
    // SAFETY: `ty` is a live type object and `def` a valid, 'static method
    // definition; a NULL result has an exception set.
    let descr = unsafe { Bound::from_owned_ptr_or_err(ty.py(), ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))? };
    // SAFETY: `name` is a NUL-terminated string.
    ty.setattr(unsafe { CStr::from_ptr(name.as_ptr() as *const c_char) }.to_str().expect("ascii name"), descr)
}

/// The arguments of one call, as the method's signature binds them.
struct Args<'py, const N: usize> {
    leading: [Bound<'py, PyAny>; N],
    /// Positional arguments after the named ones; None when there are none, so
    /// the common `call_soon(cb)` neither takes nor releases the empty tuple.
    rest: Option<Bound<'py, PyTuple>>,
    context: Option<Bound<'py, PyAny>>,
}

/// Binds `(names[0], ..., names[N-1], *args, context=None)`: the leading parameters
/// positionally or by keyword, the remaining positionals into a tuple.
///
/// SAFETY: `args` must point to `nargs + len(kwnames)` live object pointers and
/// `kwnames` be NULL or a tuple of strings, as CPython's vectorcall protocol passes them.
unsafe fn bind_args<'py, const N: usize>(
    py: Python<'py>,
    method: &str,
    names: [&str; N],
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Args<'py, N>> {
    let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
    if nargs >= N {
        // The shapes nearly every call has, `call_soon(cb, *args)` and C Task's
        // `call_soon(step, context=ctx)`: nothing to bind by name.
        let context = if kwnames.is_null() {
            None
        } else if ffi::PyTuple_GET_SIZE(kwnames) == 1 && is_context_name(py, ffi::PyTuple_GET_ITEM(kwnames, 0)) {
            Some(Bound::from_borrowed_ptr(py, *args.add(nargs))).filter(|c| !c.is_none())
        } else {
            return bind_by_name(py, method, names, args, nargs, kwnames);
        };
        let leading = std::array::from_fn(|i| Bound::from_borrowed_ptr(py, *args.add(i)));
        let rest = if nargs > N { Some(tuple_of(py, args.add(N), nargs - N)?) } else { None };
        return Ok(Args { leading, rest, context });
    }
    bind_by_name(py, method, names, args, nargs, kwnames)
}

/// Whether a keyword name is `context`. Python code passes the interned string;
/// 3.11's C Future and Task pass a string of their own (`Py_BuildValue("(s)",
/// "context")`, made once) with every callback they schedule: the first such
/// string whose text matches is remembered, so their calls skip the comparison
/// too (~50 instructions each). It is kept referenced for the process's life, so
/// its address cannot be reused by another object.
///
/// SAFETY: `key` is a live `str` object; the GIL is held.
#[inline]
unsafe fn is_context_name(py: Python<'_>, key: *mut ffi::PyObject) -> bool {
    static SEEN: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());
    if key == pyo3::intern!(py, "context").as_ptr() || key == SEEN.load(Ordering::Relaxed) {
        return true;
    }
    let matches = ffi::PyUnicode_CompareWithASCIIString(key, c"context".as_ptr()) == 0;
    if matches && SEEN.load(Ordering::Relaxed).is_null() {
        ffi::Py_INCREF(key);
        SEEN.store(key, Ordering::Relaxed); // under the GIL: no other writer
    }
    matches
}

/// `bind_args` for calls that pass leading parameters by keyword, unknown keywords,
/// or too few arguments (PyO3's errors for each).
///
/// SAFETY: as `bind_args`'s.
#[cold]
unsafe fn bind_by_name<'py, const N: usize>(
    py: Python<'py>,
    method: &str,
    names: [&str; N],
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Args<'py, N>> {
    let mut leading: [Option<Bound<'py, PyAny>>; N] =
        std::array::from_fn(|i| (i < nargs).then(|| Bound::from_borrowed_ptr(py, *args.add(i))));
    let rest = if nargs > N { Some(tuple_of(py, args.add(N), nargs - N)?) } else { None };
    let mut context = None;
    if !kwnames.is_null() {
        let context_name = pyo3::intern!(py, "context");
        for k in 0..ffi::PyTuple_GET_SIZE(kwnames) as usize {
            let key = Bound::from_borrowed_ptr(py, ffi::PyTuple_GET_ITEM(kwnames, k as ffi::Py_ssize_t)).cast_into_unchecked::<PyString>();
            let value = Bound::from_borrowed_ptr(py, *args.add(nargs + k));
            if key.is(context_name) || key == "context" {
                context = Some(value);
                continue;
            }
            let slot = names.iter().position(|n| key == *n).map(|i| &mut leading[i]);
            match slot {
                Some(Some(_)) => return Err(PyTypeError::new_err(format!("LoopCore.{method}() got multiple values for argument '{key}'"))),
                Some(slot) => *slot = Some(value),
                None => return Err(PyTypeError::new_err(format!("LoopCore.{method}() got an unexpected keyword argument '{key}'"))),
            }
        }
    }
    if leading.iter().any(Option::is_none) {
        let missing: Vec<&str> = names.iter().zip(&leading).filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
        return Err(missing_arguments(method, &missing));
    }
    Ok(Args { leading: leading.map(|v| v.expect("checked above")), rest, context: context.filter(|c| !c.is_none()) })
}

/// A new tuple of `n` objects from `items`.
///
/// SAFETY: `items` must point to `n` live object pointers.
unsafe fn tuple_of<'py>(py: Python<'py>, items: *const *mut ffi::PyObject, n: usize) -> PyResult<Bound<'py, PyTuple>> {
    let tuple = Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(n as ffi::Py_ssize_t))?;
    for i in 0..n {
        let item = *items.add(i);
        ffi::Py_INCREF(item);
        ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t, item);
    }
    Ok(tuple.cast_into_unchecked())
}

/// PyO3's wording: "LoopCore.call_later() missing 2 required positional arguments: 'delay' and 'callback'".
#[cold]
fn missing_arguments(method: &str, missing: &[&str]) -> PyErr {
    let quoted: Vec<String> = missing.iter().map(|n| format!("'{n}'")).collect();
    let list = match quoted.as_slice() {
        [one] => one.clone(),
        [init @ .., last] => format!("{}{} and {last}", init.join(", "), if init.len() > 1 { "," } else { "" }),
        [] => String::new(),
    };
    let plural = if missing.len() == 1 { "argument" } else { "arguments" };
    PyTypeError::new_err(format!("LoopCore.{method}() missing {} required positional {plural}: {list}", missing.len()))
}

/// Runs `body` as a method call from C: the error (or a panic, as PyO3's
/// `PanicException`) is raised in Python and NULL returned.
///
/// SAFETY: called by CPython with the GIL held; `slf` is an instance of `T` (the
/// method descriptor checked its type before calling).
#[inline]
unsafe fn enter<T: pyo3::PyClass>(
    slf: *mut ffi::PyObject,
    body: impl for<'py> FnOnce(&Bound<'py, T>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<T>();
    match catch_unwind(AssertUnwindSafe(|| body(&slf))) {
        Ok(Ok(value)) => value.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(payload) => {
            panic_error(payload).restore(py);
            std::ptr::null_mut()
        }
    }
}

/// A panic caught at a C entry point, as PyO3's `PanicException`.
#[cold]
fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic in ferroloop".to_string());
    PanicException::new_err(msg)
}

/// Defines one entry point: binds the call's arguments to `params` (then `*args`
/// and `context=`) and returns what `body` makes of them.
macro_rules! entry_point {
    ($name:ident, [$($param:literal),+], |$slf:ident, [$($arg:ident),+], $rest:ident, $context:ident| $body:expr) => {
        unsafe extern "C" fn $name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargsf: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls this with the GIL held and its vectorcall
            // arguments, passed on unchanged; the descriptor checked `slf`'s type.
            unsafe {
                enter::<LoopCore>(slf, |$slf| {
                    let bound = bind_args($slf.py(), stringify!($name), [$($param),+], args, nargsf, kwnames)?;
                    let [$($arg),+] = bound.leading;
                    let ($rest, $context) = (bound.rest, bound.context);
                    Ok($body?.into_bound($slf.py()).into_any())
                })
            }
        }
    };
}

entry_point!(call_soon, ["callback"], |slf, [callback], rest, context| scheduling::call_soon(slf, callback, rest, context, "call_soon"));
entry_point!(call_soon_threadsafe, ["callback"], |slf, [callback], rest, context| scheduling::call_soon_threadsafe(
    slf, callback, rest, context
));
entry_point!(call_later, ["delay", "callback"], |slf, [delay, callback], rest, context| scheduling::call_later(
    slf, delay, callback, rest, context
));
entry_point!(call_at, ["when", "callback"], |slf, [when, callback], rest, context| scheduling::call_at(slf, when, callback, rest, context));

/// `get_debug()`: C `Future` and `Task` ask it of their loop every time one is made.
unsafe extern "C" fn loop_get_debug(slf: *mut ffi::PyObject, _unused: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held; the descriptor checked `slf`'s type.
    unsafe {
        enter::<LoopCore>(slf, |core| {
            let debug = core.get().state.with(core.py(), |s| s.debug);
            Ok(pyo3::types::PyBool::new(core.py(), debug).to_owned().into_any())
        })
    }
}

/// `TimerHandle.cancel()`.
unsafe extern "C" fn timer_cancel(slf: *mut ffi::PyObject, _unused: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held; the descriptor checked `slf`'s type.
    unsafe {
        enter::<TimerHandle>(slf, |timer| {
            TimerHandle::cancel(timer)?;
            Ok(PyNone::get(timer.py()).to_owned().into_any())
        })
    }
}

/// `StreamTransportCore.write(data)`. One positional argument is the call every
/// protocol makes; anything else goes to the PyO3-bound `_write`, for its binding
/// and its errors.
unsafe extern "C" fn stream_write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held and its vectorcall arguments,
    // passed on unchanged; the descriptor checked `slf`'s type.
    unsafe {
        enter::<StreamTransportCore>(slf, |core| {
            let py = core.py();
            if ffi::PyVectorcall_NARGS(nargsf as usize) == 1 && kwnames.is_null() {
                StreamTransportCore::write(core, Bound::from_borrowed_ptr(py, *args))?;
                return Ok(PyNone::get(py).to_owned().into_any());
            }
            let bound = core.getattr(pyo3::intern!(py, "_write"))?;
            Bound::from_owned_ptr_or_err(py, ffi::PyObject_Vectorcall(bound.as_ptr(), args, nargsf as usize, kwnames))
        })
    }
}

/// `SockOp`'s `am_send` (`PyIter_Send`): the step's value comes back in `result`
/// with `PYGEN_RETURN` instead of as a raised `StopIteration(value)`, which cost
/// more than the rest of a `sock_recv` that found its data.
unsafe extern "C" fn sockop_send(slf: *mut ffi::PyObject, arg: *mut ffi::PyObject, result: *mut *mut ffi::PyObject) -> ffi::PySendResult {
    // SAFETY: CPython calls this with the GIL held, `slf` an instance of the type
    // the slot is on, `arg` a live object and `result` writable.
    unsafe {
        let py = Python::assume_attached();
        let op = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<SockOp>();
        let arg = Bound::from_borrowed_ptr(py, arg);
        let value = if arg.is_none() { None } else { Some(&arg) };
        let outcome = catch_unwind(AssertUnwindSafe(|| SockOp::step(&op, value)));
        let (status, object) = match outcome {
            Ok(Ok(Step::Yield(y))) => (ffi::PySendResult::PYGEN_NEXT, y.into_ptr()),
            Ok(Ok(Step::Return(v))) => (ffi::PySendResult::PYGEN_RETURN, v.into_ptr()),
            Ok(Err(err)) => {
                err.restore(py);
                (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
            }
            Err(payload) => {
                panic_error(payload).restore(py);
                (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
            }
        };
        *result = object;
        status
    }
}
