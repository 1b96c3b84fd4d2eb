//! Raw vectorcall entry points for the loop's hottest methods: `call_soon`,
//! `call_soon_threadsafe`, `call_later` and `call_at`, `get_debug` (asked by every
//! C `Future` and `Task` made), `create_future` (every wait makes one),
//! `create_task` (every task), `TimerHandle.cancel` (`asyncio.timeout` and
//! `wait_for` schedule and cancel a timer every time), the transports' `write` and
//! `sendto` (every reply of every protocol), `sock_recv` and `sock_sendall`; and
//! the `am_await` and `am_send` slots of `SockOp`, through which
//! `PyIter_Send` steps a socket operation and gets its result without a
//! `StopIteration` being raised. On 3.10 and 3.11 that is how
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
//! `write` and `sendto` are methods of the Python transport classes themselves
//! (`install_transport_method`), which reach their Rust core through the `_core`
//! slot's offset: `transport.write(data)` is then a method CPython's specializing
//! interpreter caches (3.11's `LOAD_METHOD_WITH_VALUES`) and calls without a bound
//! method, where a core's bound method kept in a slot cost a generic attribute
//! lookup (~130 instructions) per call.
//!
//! No PyO3 trampoline runs, so PyO3 does not count this thread as attached: code
//! here must not drop a `Py<T>` on the success path (PyO3 would defer the decref to
//! its pool); values are held as `Bound`, whose drop decrefs directly.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicIsize, AtomicPtr, Ordering};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyNone, PyString, PyTuple, PyType};

use crate::event_loop::LoopCore;
use crate::handles::TimerHandle;
use crate::scheduling;
use crate::sock::{self, SockOp, Step};
use crate::transport::StreamTransportCore;
use crate::udp::DatagramTransportCore;

/// Installs the four scheduling methods, `sock_recv`, `sock_sendall`,
/// `get_debug`, `create_future` and `create_task` on `loop_type` (the `LoopCore`
/// type object), `cancel` on `timer_type` (`TimerHandle`) and `am_await` and
/// `am_send` on `sockop_type` (`SockOp`).
pub fn install(loop_type: &Bound<'_, PyType>, timer_type: &Bound<'_, PyType>, sockop_type: &Bound<'_, PyType>) -> PyResult<()> {
    install_async_slots(sockop_type)?;
    let methods: [(&'static CStr, ffi::PyCFunctionFastWithKeywords, &'static CStr); 6] = [
        (c"call_soon", call_soon, c"Arrange for a callback to be called as soon as possible."),
        (c"call_soon_threadsafe", call_soon_threadsafe, c"Like call_soon(), but thread-safe."),
        (c"call_later", call_later, c"Arrange for a callback to be called at a given time."),
        (c"call_at", call_at, c"Like call_later(), but uses an absolute time."),
        (c"sock_recv", sock_recv, c"Receive up to n bytes from sock (a coroutine)."),
        (c"sock_sendall", sock_sendall, c"Send all of data to sock (a coroutine)."),
    ];
    for (name, meth, doc) in methods {
        let meth = ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: meth };
        add_method(loop_type, name, meth, ffi::METH_FASTCALL | ffi::METH_KEYWORDS, doc)?;
    }
    let get_debug = ffi::PyMethodDefPointer { PyCFunction: loop_get_debug };
    add_method(loop_type, c"get_debug", get_debug, ffi::METH_NOARGS, c"Whether the loop is in debug mode.")?;
    let create_task = ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: loop_create_task };
    let create_task_doc = c"Schedule a coroutine object as a Task.";
    add_method(loop_type, c"create_task", create_task, ffi::METH_FASTCALL | ffi::METH_KEYWORDS, create_task_doc)?;
    let create_future = ffi::PyMethodDefPointer { PyCFunction: loop_create_future };
    add_method(loop_type, c"create_future", create_future, ffi::METH_NOARGS, c"Create a Future object attached to the loop.")?;
    add_method(timer_type, c"cancel", ffi::PyMethodDefPointer { PyCFunction: timer_cancel }, ffi::METH_NOARGS, c"Cancel the timer.")
}

/// Byte offset of the `_core` slot in a transport object (0 until the first
/// `install_transport_method`). Every transport class inherits the one slot of
/// `_CoreTransport`, so one offset serves them all.
static CORE_OFFSET: AtomicIsize = AtomicIsize::new(0);

/// `install_transport_method(cls, name)`: makes `cls.<name>` (`write` on the stream
/// transport class, `sendto` on the datagram one) a C method that calls the core
/// held in the instance's `_core` slot. `cls._core` must be a `__slots__` member.
#[pyfunction]
pub fn install_transport_method(cls: &Bound<'_, PyType>, name: &str) -> PyResult<()> {
    let (name, meth, doc): (&'static CStr, ffi::PyCFunctionFastWithKeywords, &'static CStr) = match name {
        "write" => (c"write", transport_write, c"Write some data bytes to the transport."),
        "sendto" => (c"sendto", transport_sendto, c"Send data to the transport."),
        other => return Err(pyo3::exceptions::PyValueError::new_err(format!("no raw transport method {other:?}"))),
    };
    let member = cls.getattr(pyo3::intern!(cls.py(), "_core"))?;
    // SAFETY: `member` is a live object; its type is checked before it is read as
    // a member descriptor, whose `d_member` points to the slot's static definition
    // (declared as `PyGetSetDef` before 3.11 by pyo3-ffi, but a `PyMemberDef`).
    let offset = unsafe {
        let is_member = ffi::Py_TYPE(member.as_ptr()) == std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type);
        let def = is_member.then(|| &*(*member.as_ptr().cast::<ffi::PyMemberDescrObject>()).d_member.cast::<ffi::PyMemberDef>());
        match def {
            Some(def) if def.type_code == ffi::Py_T_OBJECT_EX && def.offset > 0 => def.offset,
            _ => return Err(PyTypeError::new_err("the transport's _core must be a __slots__ member")),
        }
    };
    let known = CORE_OFFSET.swap(offset, Ordering::Relaxed);
    if known != 0 && known != offset {
        return Err(PyTypeError::new_err("every transport class must share _CoreTransport's _core slot"));
    }
    add_method(cls, name, ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: meth }, ffi::METH_FASTCALL | ffi::METH_KEYWORDS, doc)
}

/// Sets `am_send` on `sockop_type` (and on 3.10 the flag that announces it, removed
/// in 3.11), as a type spec's `Py_am_send` slot would have, and replaces PyO3's
/// `am_await` (`__await__`, a trampoline with a borrow check) with a raw one.
fn install_async_slots(sockop_type: &Bound<'_, PyType>) -> PyResult<()> {
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
        (*async_methods).am_await = Some(sockop_await);
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
unsafe fn enter<T>(
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

/// Defines a raw `METH_FASTCALL | METH_KEYWORDS` C function: `body` gets the
/// object and the call's vectorcall arguments, and runs in an `unsafe` block.
macro_rules! vectorcall_fn {
    ($name:ident, |$slf:ident, $args:ident, $nargsf:ident, $kwnames:ident| $body:expr) => {
        unsafe extern "C" fn $name(
            $slf: *mut ffi::PyObject,
            $args: *const *mut ffi::PyObject,
            $nargsf: ffi::Py_ssize_t,
            $kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls this with the GIL held and its vectorcall
            // arguments, passed on unchanged; the method descriptor checked that
            // `slf` is an instance of the type the method is installed on.
            unsafe { $body }
        }
    };
}

/// Defines a raw method of `LoopCore`: `body` gets the loop and the call's
/// vectorcall arguments.
macro_rules! loop_method {
    ($name:ident, |$slf:ident, $args:ident, $nargsf:ident, $kwnames:ident| $body:expr) => {
        vectorcall_fn!($name, |slf, $args, $nargsf, $kwnames| enter::<LoopCore>(slf, |$slf| $body));
    };
}

/// Defines one scheduling entry point: binds the call's arguments to `params`
/// (then `*args` and `context=`) and returns what `body` makes of them.
macro_rules! entry_point {
    ($name:ident, [$($param:literal),+], |$slf:ident, [$($arg:ident),+], $rest:ident, $context:ident| $body:expr) => {
        loop_method!($name, |$slf, args, nargsf, kwnames| {
            let bound = bind_args($slf.py(), stringify!($name), [$($param),+], args, nargsf, kwnames)?;
            let [$($arg),+] = bound.leading;
            let ($rest, $context) = (bound.rest, bound.context);
            Ok($body?.into_bound($slf.py()).into_any())
        });
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

/// Defines a socket operation's entry point `(sock, arg)`: two positional arguments
/// go straight to `body`; other calls are bound by name (`bind_args`), with PyO3's
/// errors for this signature, which has no `*args` and no `context`.
macro_rules! sock_entry_point {
    ($name:ident, [$sock:literal, $arg:literal], $body:path) => {
        loop_method!($name, |slf, args, nargsf, kwnames| {
            let py = slf.py();
            let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
            let [sock, arg] = if nargs == 2 && kwnames.is_null() {
                [Bound::from_borrowed_ptr(py, *args), Bound::from_borrowed_ptr(py, *args.add(1))]
            } else {
                bind_two(py, stringify!($name), [$sock, $arg], args, nargs, kwnames)?
            };
            Ok($body(slf, sock, arg)?.into_bound(py).into_any())
        });
    };
}

sock_entry_point!(sock_recv, ["sock", "n"], sock::recv);
sock_entry_point!(sock_sendall, ["sock", "data"], sock::sendall);

/// `bind_args` for a signature of exactly two parameters: the `*args` and
/// `context=` it accepts are errors here.
///
/// SAFETY: as `bind_args`'s, `nargs` being the call's positional count.
#[cold]
unsafe fn bind_two<'py>(
    py: Python<'py>,
    method: &str,
    names: [&str; 2],
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<[Bound<'py, PyAny>; 2]> {
    if nargs > 2 {
        return Err(PyTypeError::new_err(format!("LoopCore.{method}() takes 2 positional arguments but {nargs} were given")));
    }
    if !kwnames.is_null() {
        for k in 0..ffi::PyTuple_GET_SIZE(kwnames) {
            if is_context_name(py, ffi::PyTuple_GET_ITEM(kwnames, k)) {
                return Err(PyTypeError::new_err(format!("LoopCore.{method}() got an unexpected keyword argument 'context'")));
            }
        }
    }
    Ok(bind_args(py, method, names, args, nargs as ffi::Py_ssize_t, kwnames)?.leading)
}

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

/// asyncio's C `Future` and `Task` classes and the keyword names `create_future`
/// and `create_task` call them with, looked up once (as uvloop binds them at import).
struct AsyncioClasses {
    future: Py<PyAny>,
    task: Py<PyAny>,
    loop_keyword: Py<PyTuple>,
    loop_and_name: Py<PyTuple>,
}

fn asyncio_classes(py: Python<'_>) -> PyResult<&'static AsyncioClasses> {
    static CLASSES: PyOnceLock<AsyncioClasses> = PyOnceLock::new();
    CLASSES.get_or_try_init(py, || {
        Ok(AsyncioClasses {
            future: py.import("asyncio.futures")?.getattr("Future")?.unbind(),
            task: py.import("asyncio.tasks")?.getattr("Task")?.unbind(),
            loop_keyword: PyTuple::new(py, ["loop"])?.unbind(),
            loop_and_name: PyTuple::new(py, ["loop", "name"])?.unbind(),
        })
    })
}

/// `create_future()`: `asyncio.Future(loop=self)`. Every wait makes one (a
/// `sock_*` call or a stream read that finds nothing, `sleep`, locks, queues), and
/// as a Python method it cost a frame and a keyword call, ~2,100 instructions.
/// The loop is always passed: a plain `Future()` would find the running loop by
/// itself, but on 3.11 that lookup is a `getpid()` system call.
unsafe extern "C" fn loop_create_future(slf: *mut ffi::PyObject, _unused: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held; the descriptor checked `slf`'s
    // type. The vectorcall gets `slf` as the value of its one keyword, `loop`.
    unsafe {
        enter::<PyAny>(slf, |event_loop| {
            let py = event_loop.py();
            let classes = asyncio_classes(py)?;
            let args = [slf];
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyObject_Vectorcall(classes.future.as_ptr(), args.as_ptr(), 0, classes.loop_keyword.as_ptr()),
            )
        })
    }
}

// `create_task(coro, *, name=None, context=None, **kwargs)`. Every task starts here
// (gather, TaskGroup, a server's task per request); the common one, with no task
// factory, no context or other keyword and debug mode off, is
// `Task(coro, loop=self, name=name)` made here. Anything else goes to the Python
// side's `_create_task_general`, with its binding and errors. Each array passed on
// is as long as its count and names say.
loop_method!(loop_create_task, |event_loop, args, nargsf, kwnames| {
    let py = event_loop.py();
    let slf = event_loop.as_ptr();
    let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
    let nkw = if kwnames.is_null() { 0 } else { ffi::PyTuple_GET_SIZE(kwnames) as usize };
    let name_only = nkw == 0 || (nkw == 1 && is_name_keyword(py, ffi::PyTuple_GET_ITEM(kwnames, 0)));
    let plain = nargs == 1 && name_only && event_loop.get().state.with(py, |s| !s.debug && !s.closed && s.task_factory.is_none());
    if !plain {
        let mut with_self = Vec::with_capacity(1 + nargs + nkw);
        with_self.push(slf);
        with_self.extend_from_slice(std::slice::from_raw_parts(args, nargs + nkw));
        let method = pyo3::intern!(py, "_create_task_general");
        return Bound::from_owned_ptr_or_err(py, ffi::PyObject_VectorcallMethod(method.as_ptr(), with_self.as_ptr(), 1 + nargs, kwnames));
    }
    let classes = asyncio_classes(py)?;
    let coro = *args;
    let result = if nkw == 0 {
        let call = [coro, slf];
        ffi::PyObject_Vectorcall(classes.task.as_ptr(), call.as_ptr(), 1, classes.loop_keyword.as_ptr())
    } else {
        let call = [coro, slf, *args.add(1)];
        ffi::PyObject_Vectorcall(classes.task.as_ptr(), call.as_ptr(), 1, classes.loop_and_name.as_ptr())
    };
    Bound::from_owned_ptr_or_err(py, result)
});

/// Whether a keyword name is `name` (interned by Python code; compared otherwise).
///
/// SAFETY: `key` is a live `str` object; the GIL is held.
#[inline]
unsafe fn is_name_keyword(py: Python<'_>, key: *mut ffi::PyObject) -> bool {
    key == pyo3::intern!(py, "name").as_ptr() || ffi::PyUnicode_CompareWithASCIIString(key, c"name".as_ptr()) == 0
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

/// The core in the `_core` slot of `transport` when it is a `T`; None when the slot
/// is empty or holds something else (a test's stand-in).
///
/// SAFETY: the GIL is held; `transport` is an instance of a class
/// `install_transport_method` was given (the method descriptor checked its type),
/// so `CORE_OFFSET` is the offset of its `_core` slot.
#[inline]
unsafe fn core_of<'py, T: pyo3::PyClass>(py: Python<'py>, transport: *mut ffi::PyObject) -> Option<Bound<'py, T>> {
    let core = *transport.cast::<u8>().offset(CORE_OFFSET.load(Ordering::Relaxed)).cast::<*mut ffi::PyObject>();
    (!core.is_null()).then(|| Bound::from_borrowed_ptr(py, core)).and_then(|c| c.cast_into::<T>().ok())
}

/// Calls `transport._core.<name>(*args, **kwargs)` the generic way: its binding, its
/// errors (the `AttributeError` of an unset slot included).
///
/// SAFETY: as `call_core`'s.
#[cold]
unsafe fn forward_to_core(
    transport: *mut ffi::PyObject,
    name: &'static str,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    enter::<PyAny>(transport, |transport| {
        let method = transport.getattr(pyo3::intern!(transport.py(), "_core"))?.getattr(name)?;
        Bound::from_owned_ptr_or_err(transport.py(), ffi::PyObject_Vectorcall(method.as_ptr(), args, nargsf as usize, kwnames))
    })
}

/// A transport method's call: `body` runs on the core when the slot holds a `T`,
/// there are no keywords and `accepts` the positional count; anything else goes to
/// the core's PyO3-bound method `name`, for its binding and its errors.
///
/// SAFETY: as `core_of`'s; `args` and `kwnames` are the call's vectorcall arguments.
#[inline(always)]
unsafe fn call_core<T: pyo3::PyClass>(
    transport: *mut ffi::PyObject,
    name: &'static str,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    accepts: impl Fn(usize) -> bool,
    body: impl for<'py> FnOnce(&Bound<'py, T>, usize) -> PyResult<()>,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
    match core_of::<T>(py, transport) {
        Some(core) if accepts(nargs) && kwnames.is_null() => enter(core.as_ptr(), |core| {
            body(core, nargs)?;
            Ok(PyNone::get(core.py()).to_owned().into_any())
        }),
        _ => forward_to_core(transport, name, args, nargsf, kwnames),
    }
}

// The stream transport's `write(data)`: one positional argument, the call every
// protocol makes.
vectorcall_fn!(transport_write, |slf, args, nargsf, kwnames| call_core::<StreamTransportCore>(
    slf,
    "write",
    args,
    nargsf,
    kwnames,
    |n| n == 1,
    |core, _| StreamTransportCore::write(core, Bound::from_borrowed_ptr(core.py(), *args))
));

// The datagram transport's `sendto(data, addr=None)`, positional arguments only
// (what protocols pass).
vectorcall_fn!(transport_sendto, |slf, args, nargsf, kwnames| call_core::<DatagramTransportCore>(
    slf,
    "sendto",
    args,
    nargsf,
    kwnames,
    |n| (1..=2).contains(&n),
    |core, nargs| {
        let addr = (nargs == 2).then(|| Bound::from_borrowed_ptr(core.py(), *args.add(1)));
        DatagramTransportCore::sendto(core, Bound::from_borrowed_ptr(core.py(), *args), addr)
    }
));

/// `SockOp`'s `am_await` (`await op`, every `await loop.sock_*(...)`): the
/// operation is its own iterator.
unsafe extern "C" fn sockop_await(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held and `slf` a live instance; the
    // new reference returned is the one the caller owns.
    unsafe { ffi::Py_INCREF(slf) };
    slf
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
