//! `TlsCore`: ferroloop's TLS layer, with the semantics of asyncio 3.11's
//! `sslproto.SSLProtocol` (the state machine UNWRAPPED → DO_HANDSHAKE → WRAPPED →
//! FLUSHING → SHUTDOWN → UNWRAPPED, close_notify, shutdown and handshake timeouts,
//! read and write backpressure on both sides).
//!
//! It sits between a raw stream transport and the application's protocol and plays
//! both roles: it is the raw transport's protocol (`connection_made`,
//! `data_received`, `eof_received`, `connection_lost`, `pause_writing`,
//! `resume_writing`), and its other methods are the application transport's
//! (`write`, `close`, `pause_reading`...), which the Python class
//! `ferroloop._tls._SSLTransport` (an `asyncio.Transport`) stores as bound builtins.
//!
//! TLS itself is the user's `ssl.SSLContext`, used as given: the Python glue makes
//! an `SSLObject` over two `ssl.MemoryBIO`s with `context.wrap_bio`, and this core
//! drives it (`do_handshake`, `read`, `write`, `unwrap`), feeding the incoming BIO
//! with what the raw transport receives and writing what the outgoing BIO holds to
//! the raw transport. Certificates, SNI callbacks, ALPN, sessions, keylog files and
//! verification errors are OpenSSL's and the ssl module's, unchanged.
//!
//! The raw transport is usually ferroloop's `StreamTransportCore` (its writes go
//! straight into it); any transport with asyncio's API works too, e.g. another TLS
//! transport for TLS over TLS.
//!
//! This file holds the state and the Python-facing methods; `machine.rs` the state
//! machine itself.
//!
//! References: the raw transport holds this core as its protocol; this core holds
//! the application transport and protocol until the connection is lost, then drops
//! them, so nothing outlives a connection through a cycle.

use std::collections::VecDeque;

use pyo3::exceptions::{PyConnectionAbortedError, PyConnectionResetError, PyException, PyOSError, PyRuntimeError, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple, PyType};

use crate::buffer::ReadBuf;
use crate::event_loop::LoopCore;
use crate::flow_control::{is_fatal, logger, tell_protocol_reporting, water_marks_default};
use crate::gil_cell::GilCell;
use crate::transport::StreamTransportCore;

mod machine;

/// asyncio's `SSLProtocol.max_size`: the most one `SSLObject.read` returns.
const MAX_SIZE: usize = 256 * 1024;
/// asyncio's `constants.FLOW_CONTROL_HIGH_WATER_SSL_READ` / `_WRITE`, in bytes.
const HIGH_WATER_READ: i64 = 256 * 1024;
const HIGH_WATER_WRITE: i64 = 512 * 1024;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Unwrapped => "UNWRAPPED",
            Phase::DoHandshake => "DO_HANDSHAKE",
            Phase::Wrapped => "WRAPPED",
            Phase::Flushing => "FLUSHING",
            Phase::Shutdown => "SHUTDOWN",
        }
    }
}

/// Where the application protocol is in its life (asyncio's `AppProtocolState`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppState {
    Init,
    ConMade,
    Eof,
    ConLost,
}

fn ssl_type<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyType>>, name: &str) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, "ssl", name)
}

/// `SSLWantReadError` or `SSLSyscallError`: asyncio's `SSLAgainErrors`, "try again
/// when more data has arrived".
fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    static WANT_READ: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static SYSCALL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    Ok(err.is_instance(py, ssl_type(py, &WANT_READ, "SSLWantReadError")?)
        || err.is_instance(py, ssl_type(py, &SYSCALL, "SSLSyscallError")?))
}

fn is_ssl_error(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    static SSL_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    Ok(err.is_instance(py, ssl_type(py, &SSL_ERROR, "SSLError")?))
}

fn is_cert_error(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    static CERT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    Ok(err.is_instance(py, ssl_type(py, &CERT_ERROR, "CertificateError")?))
}

fn is_cancelled_error(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    static CANCELLED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    Ok(err.is_instance(py, CANCELLED.import(py, "asyncio.exceptions", "CancelledError")?))
}

fn buffered_protocol_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static T: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    T.import(py, "asyncio.protocols", "BufferedProtocol")
}

/// The buffer records are decrypted into (see `do_read_copied`), one per process,
/// and a memoryview of it for `SSLObject.read(n, buffer)`.
fn read_scratch(py: Python<'_>) -> PyResult<(&Bound<'_, PyByteArray>, &Bound<'_, PyMemoryView>)> {
    static SCRATCH: PyOnceLock<(Py<PyByteArray>, Py<PyMemoryView>)> = PyOnceLock::new();
    let (array, view) = SCRATCH.get_or_try_init(py, || {
        let array = PyByteArray::new(py, &vec![0u8; MAX_SIZE]);
        let view = PyMemoryView::from(&array)?;
        Ok::<_, PyErr>((array.unbind(), view.unbind()))
    })?;
    Ok((array.bind(py), view.bind(py)))
}

/// asyncio's `add_flowcontrol_defaults(high, low, kb)`.
fn limits(high: Option<i64>, low: Option<i64>, default_high: i64) -> PyResult<(usize, usize)> {
    water_marks_default(high, low, default_high)
}

struct TlsState {
    phase: Phase,
    app_state: AppState,
    app_protocol: Option<Py<PyAny>>,
    /// The application protocol is an `asyncio.BufferedProtocol`.
    app_buffered: bool,
    /// The `asyncio.Transport` the application sees; dropped at connection lost.
    app_transport: Option<Py<PyAny>>,
    /// The application transport's `_closed`: `close()` or `abort()` was called.
    closed: bool,
    /// The raw transport (set by `connection_made`), and its Rust core when it is a
    /// ferroloop stream transport (writes then skip the Python call).
    transport: Option<Py<PyAny>>,
    raw_core: Option<Py<StreamTransportCore>>,
    waiter: Option<Py<PyAny>>,
    extra: Py<PyDict>,
    /// Application writes not yet taken by the `SSLObject` (before the handshake
    /// completes, or while OpenSSL wants to read first), and their total size.
    backlog: VecDeque<Py<PyAny>>,
    backlog_size: usize,
    conn_lost: u32,
    eof_received: bool,
    /// The raw transport asked us to stop writing (its buffer is full).
    ssl_writing_paused: bool,
    app_reading_paused: bool,
    /// We paused the raw transport's reading (the incoming BIO is full).
    ssl_reading_paused: bool,
    app_writing_paused: bool,
    incoming_high: usize,
    incoming_low: usize,
    outgoing_high: usize,
    outgoing_low: usize,
    handshake_timer: Option<Py<PyAny>>,
    shutdown_timer: Option<Py<PyAny>>,
    handshake_start: Option<f64>,
}

#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct TlsCore {
    event_loop: Py<LoopCore>,
    sslobj: Py<PyAny>,
    /// What `read`/`write`/`do_handshake` are called on: the `_ssl` object inside a
    /// plain `ssl.SSLObject` (its Python methods only forward to it, one frame per
    /// call saved), or the `SSLObject` itself when the context's `sslobject_class`
    /// is a subclass, whose overrides must run.
    engine: Py<PyAny>,
    /// `engine` is the `_ssl` object: its `unwrap()` is `shutdown()`.
    engine_is_c: bool,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    handshake_timeout: Py<PyAny>,
    shutdown_timeout: Py<PyAny>,
    state: GilCell<TlsState>,
}

/// What the application callbacks raise: `Exception`s are handled like asyncio's
/// `except Exception`, anything else leaves.
fn is_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyException>(py)
}

fn is_bytes_like(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>()
}

#[pymethods]
impl TlsCore {
    #[new]
    #[pyo3(signature = (event_loop, app_protocol, sslcontext, sslobj, engine, incoming, outgoing, waiter, handshake_timeout, shutdown_timeout, call_connection_made))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, LoopCore>,
        app_protocol: Bound<'_, PyAny>,
        sslcontext: Bound<'_, PyAny>,
        sslobj: Bound<'_, PyAny>,
        engine: Bound<'_, PyAny>,
        incoming: Bound<'_, PyAny>,
        outgoing: Bound<'_, PyAny>,
        waiter: Option<Bound<'_, PyAny>>,
        handshake_timeout: Bound<'_, PyAny>,
        shutdown_timeout: Bound<'_, PyAny>,
        call_connection_made: bool,
    ) -> PyResult<Self> {
        let app_buffered = app_protocol.is_instance(buffered_protocol_type(py)?)?;
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", sslcontext)?;
        let (in_high, in_low) = limits(None, None, HIGH_WATER_READ)?;
        let (out_high, out_low) = limits(None, None, HIGH_WATER_WRITE)?;
        Ok(TlsCore {
            event_loop: event_loop.unbind(),
            engine_is_c: !engine.is(&sslobj),
            engine: engine.unbind(),
            sslobj: sslobj.unbind(),
            incoming: incoming.unbind(),
            outgoing: outgoing.unbind(),
            handshake_timeout: handshake_timeout.unbind(),
            shutdown_timeout: shutdown_timeout.unbind(),
            state: GilCell::new(TlsState {
                phase: Phase::Unwrapped,
                app_state: if call_connection_made { AppState::Init } else { AppState::ConMade },
                app_protocol: Some(app_protocol.unbind()),
                app_buffered,
                app_transport: None,
                closed: false,
                transport: None,
                raw_core: None,
                waiter: waiter.filter(|w| !w.is_none()).map(Bound::unbind),
                extra: extra.unbind(),
                backlog: VecDeque::new(),
                backlog_size: 0,
                conn_lost: 0,
                eof_received: false,
                ssl_writing_paused: false,
                app_reading_paused: false,
                ssl_reading_paused: false,
                app_writing_paused: false,
                incoming_high: in_high,
                incoming_low: in_low,
                outgoing_high: out_high,
                outgoing_low: out_low,
                handshake_timer: None,
                shutdown_timer: None,
                handshake_start: None,
            }),
        })
    }

    fn _set_app_transport(&self, py: Python<'_>, transport: Bound<'_, PyAny>) {
        let old = self.state.with(py, |s| s.app_transport.replace(transport.unbind()));
        drop(old);
    }

    #[getter]
    fn _app_transport(&self, py: Python<'_>) -> Py<PyAny> {
        self.app_transport(py)
    }

    #[getter]
    fn _closed(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.closed)
    }

    #[getter]
    fn _state(&self, py: Python<'_>) -> &'static str {
        self.phase(py).name()
    }

    /// asyncio's `SSLProtocol._sslcontext` and `_sslobj`, which code reaches through
    /// `transport._ssl_protocol` (aiohttp's connector tests).
    #[getter]
    fn _sslcontext<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let extra = self.state.with(py, |s| s.extra.clone_ref(py)).into_bound(py);
        extra.get_item("sslcontext")
    }

    #[getter]
    fn _sslobj(&self, py: Python<'_>) -> Py<PyAny> {
        self.sslobj.clone_ref(py)
    }

    // ----- the raw transport's protocol ---------------------------------------------

    fn connection_made(slf: &Bound<'_, Self>, transport: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let core = transport.getattr(intern!(py, "_core")).ok().and_then(|c| c.cast_into::<StreamTransportCore>().ok()).map(Bound::unbind);
        let old = slf.get().state.with(py, |s| (s.transport.replace(transport.unbind()), std::mem::replace(&mut s.raw_core, core)));
        drop(old);
        Self::start_handshake(slf)
    }

    fn connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let backlog = me.state.with(py, |s| {
            s.backlog_size = 0;
            s.conn_lost += 1;
            s.closed = true;
            std::mem::take(&mut s.backlog)
        });
        drop(backlog);
        me.outgoing.bind(py).call_method0(intern!(py, "read"))?;
        let notify = me.state.with(py, |s| {
            let notify = s.phase != Phase::DoHandshake && matches!(s.app_state, AppState::ConMade | AppState::Eof);
            if notify {
                s.app_state = AppState::ConLost;
            }
            notify
        });
        if notify {
            if let Some(protocol) = me.app_protocol(py) {
                me.call_soon(py, protocol.bind(py).getattr(intern!(py, "connection_lost"))?, PyTuple::new(py, [&exc])?)?;
            }
        }
        me.set_phase(py, Phase::Unwrapped)?;
        let dropped = me.state.with(py, |s| (s.transport.take(), s.raw_core.take(), s.app_transport.take(), s.app_protocol.take()));
        drop(dropped);
        me.wakeup_waiter(py, Some(exc))?;
        let timers = me.state.with(py, |s| (s.shutdown_timer.take(), s.handshake_timer.take()));
        Self::cancel_timer(py, timers.0)?;
        Self::cancel_timer(py, timers.1)
    }

    fn data_received(slf: &Bound<'_, Self>, data: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        slf.get().incoming.bind(py).call_method1(intern!(py, "write"), (data,))?;
        if slf.get().phase(py) == Phase::Unwrapped {
            return Ok(());
        }
        Self::advance(slf)
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let me = slf.get();
        me.state.with(py, |s| s.eof_received = true);
        let result = (|| {
            if me.debug(py) {
                logger(py)?.call_method1("debug", ("%r received EOF", slf))?;
            }
            match me.phase(py) {
                Phase::DoHandshake => {
                    let exc = PyConnectionResetError::new_err(()).into_value(py).into_bound(py).into_any();
                    Self::on_handshake_complete(slf, Some(exc))?;
                }
                Phase::Wrapped => {
                    me.set_phase(py, Phase::Flushing)?;
                    if me.state.with(py, |s| s.app_reading_paused) {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                Phase::Flushing => {
                    Self::do_write(slf)?;
                    me.set_phase(py, Phase::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                Phase::Shutdown => Self::do_shutdown(slf)?,
                Phase::Unwrapped => {}
            }
            Ok(None)
        })();
        if let Err(e) = &result {
            if is_exception(py, e) {
                me.raw_call(py, intern!(py, "close"))?;
            }
        }
        result
    }

    fn pause_writing(&self, py: Python<'_>) {
        self.state.with(py, |s| s.ssl_writing_paused = true);
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().state.with(slf.py(), |s| s.ssl_writing_paused = false);
        Self::process_outgoing(slf)
    }

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().phase(py) != Phase::DoHandshake {
            return Ok(());
        }
        let timeout = slf.get().handshake_timeout.bind(py).str()?;
        let msg = format!("SSL handshake is taking longer than {timeout} seconds: aborting the connection");
        let exc = PyConnectionAbortedError::new_err(msg).into_value(py).into_bound(py).into_any();
        Self::fatal_error(slf, exc, "Fatal error on transport")
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if matches!(slf.get().phase(py), Phase::Flushing | Phase::Shutdown) {
            let exc = pyo3::exceptions::PyTimeoutError::new_err("SSL shutdown timed out").into_value(py).into_bound(py).into_any();
            slf.get().raw_force_close(py, exc)?;
        }
        Ok(())
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    /// `resume_reading()`'s deferred part.
    fn _resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::Wrapped | Phase::Flushing | Phase::Shutdown => Self::advance(slf),
            _ => Ok(()),
        }
    }

    // ----- the application transport -----------------------------------------------

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(&self, py: Python<'_>, name: Bound<'_, PyAny>, default: Option<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let extra = self.state.with(py, |s| s.extra.clone_ref(py));
        if let Some(v) = extra.bind(py).get_item(&name)? {
            return Ok(v.unbind());
        }
        let default = default.map_or_else(|| py.None(), Bound::unbind);
        match self.transport(py) {
            Some(raw) => Ok(raw.bind(py).call_method1(intern!(py, "get_extra_info"), (name, default))?.unbind()),
            None => Ok(default),
        }
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = protocol.hasattr(intern!(py, "get_buffer"))? && protocol.is_instance(buffered_protocol_type(py)?)?;
        let old = self.state.with(py, |s| {
            s.app_buffered = buffered;
            s.app_protocol.replace(protocol.unbind())
        });
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.app_protocol(py).unwrap_or_else(|| py.None())
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.closed)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().state.with(py, |s| std::mem::replace(&mut s.closed, true)) {
            return Ok(());
        }
        Self::start_shutdown(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().state.with(slf.py(), |s| s.closed = true);
        Self::abort_connection(slf)
    }

    #[pyo3(signature = (exc=None))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let _ = exc; // asyncio's transport loses it too: the raw transport reports its own
        Self::abort(slf)
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| !s.app_reading_paused)
    }

    fn pause_reading(&self, py: Python<'_>) {
        self.state.with(py, |s| s.app_reading_paused = true);
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().state.with(py, |s| std::mem::replace(&mut s.app_reading_paused, false)) {
            slf.get().call_soon(py, slf.getattr(intern!(py, "_resume"))?, PyTuple::empty(py))?;
        }
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let (high, low) = limits(high, low, HIGH_WATER_WRITE)?;
        slf.get().state.with(slf.py(), |s| {
            s.outgoing_high = high;
            s.outgoing_low = low;
        });
        Self::control_app_writing(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.state.with(py, |s| (s.outgoing_low, s.outgoing_high))
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.write_buffer_size(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_read_buffer_limits(slf: &Bound<'_, Self>, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let (high, low) = limits(high, low, HIGH_WATER_READ)?;
        slf.get().state.with(slf.py(), |s| {
            s.incoming_high = high;
            s.incoming_low = low;
        });
        Self::control_ssl_reading(slf)
    }

    fn get_read_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.state.with(py, |s| (s.incoming_low, s.incoming_high))
    }

    fn get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        Self::pending(py, &self.incoming)
    }

    #[getter]
    fn _app_writing_paused(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.app_writing_paused)
    }

    fn write(slf: &Bound<'_, Self>, data: Bound<'_, PyAny>) -> PyResult<()> {
        if !is_bytes_like(&data) {
            return Err(PyTypeError::new_err(format!("data: expecting a bytes-like instance, got {}", data.get_type().name()?)));
        }
        if ReadBuf::get(&data)?.len() == 0 {
            return Ok(());
        }
        Self::write_appdata(slf, vec![data])
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: Bound<'_, PyAny>) -> PyResult<()> {
        let items = list_of_data.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        Self::write_appdata(slf, items)
    }

    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(&self, py: Python<'_>, data: Bound<'_, PyAny>) -> PyResult<()> {
        let len = ReadBuf::get(&data)?.len();
        self.state.with(py, |s| {
            s.backlog.push_back(data.unbind());
            s.backlog_size += len;
        });
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sslobj)?;
        visit.call(&self.engine)?;
        visit.call(&self.incoming)?;
        visit.call(&self.outgoing)?;
        visit.call(&self.handshake_timeout)?;
        visit.call(&self.shutdown_timeout)?;
        if let Some(s) = self.state.get_for_traverse() {
            visit.call(&s.app_protocol)?;
            visit.call(&s.app_transport)?;
            visit.call(&s.transport)?;
            visit.call(&s.raw_core)?;
            visit.call(&s.waiter)?;
            visit.call(&s.extra)?;
            visit.call(&s.handshake_timer)?;
            visit.call(&s.shutdown_timer)?;
            for d in &s.backlog {
                visit.call(d)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let taken = self.state.with(py, |s| {
            (
                s.app_protocol.take(),
                s.app_transport.take(),
                s.transport.take(),
                s.raw_core.take(),
                s.waiter.take(),
                s.handshake_timer.take(),
                s.shutdown_timer.take(),
                std::mem::take(&mut s.backlog),
            )
        });
        drop(taken);
    }
}
