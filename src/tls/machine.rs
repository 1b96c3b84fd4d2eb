//! The TLS state machine of `TlsCore` (asyncio 3.11's `sslproto.SSLProtocol`
//! methods): the handshake, the shutdown, application data in both directions, and
//! the flow control between the application, the `SSLObject` and the raw transport.
//! Every call into Python (the `SSLObject`, the protocols, the raw transport) is
//! made outside the state's `GilCell` borrow, since any of them may call back.

use super::*;

impl TlsCore {
    pub(super) fn loop_any<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.event_loop.bind(py).clone().into_any()
    }

    pub(super) fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop.get().state.with(py, |s| s.debug)
    }

    pub(super) fn phase(&self, py: Python<'_>) -> Phase {
        self.state.with(py, |s| s.phase)
    }

    /// asyncio's `_set_state`: only the state machine's own transitions.
    pub(super) fn set_phase(&self, py: Python<'_>, new: Phase) -> PyResult<()> {
        self.state.with(py, |s| {
            let allowed = matches!(
                (s.phase, new),
                (_, Phase::Unwrapped)
                    | (Phase::Unwrapped, Phase::DoHandshake)
                    | (Phase::DoHandshake, Phase::Wrapped)
                    | (Phase::Wrapped, Phase::Flushing)
                    | (Phase::Flushing, Phase::Shutdown)
            );
            if !allowed {
                return Err(PyRuntimeError::new_err(format!(
                    "cannot switch state from SSLProtocolState.{} to SSLProtocolState.{}",
                    s.phase.name(),
                    new.name()
                )));
            }
            s.phase = new;
            Ok(())
        })
    }

    pub(super) fn app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.app_protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    pub(super) fn app_transport(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.with(py, |s| s.app_transport.as_ref().map(|p| p.clone_ref(py))).unwrap_or_else(|| py.None())
    }

    pub(super) fn transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.transport.as_ref().map(|p| p.clone_ref(py)))
    }

    pub(super) fn call_soon(&self, py: Python<'_>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        crate::scheduling::call_soon(self.event_loop.bind(py), callback, Some(args), None, "call_soon").map(drop)
    }

    pub(super) fn call_later(slf: &Bound<'_, Self>, delay: &Py<PyAny>, method: &Bound<'_, pyo3::types::PyString>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let callback = slf.getattr(method)?;
        let handle = crate::scheduling::call_later(slf.get().event_loop.bind(py), delay.bind(py).clone(), callback, None, None)?;
        Ok(handle.into_any())
    }

    pub(super) fn cancel_timer(py: Python<'_>, timer: Option<Py<PyAny>>) -> PyResult<()> {
        if let Some(t) = timer {
            t.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    /// `SSLObject.unwrap()`: send our close_notify, complete once the peer's came.
    pub(super) fn unwrap(&self, py: Python<'_>) -> PyResult<()> {
        let method = if self.engine_is_c { intern!(py, "shutdown") } else { intern!(py, "unwrap") };
        self.engine.bind(py).call_method0(method).map(drop)
    }

    pub(super) fn pending(py: Python<'_>, bio: &Py<PyAny>) -> PyResult<usize> {
        bio.bind(py).getattr(intern!(py, "pending"))?.extract()
    }

    pub(super) fn write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(Self::pending(py, &self.outgoing)? + self.state.with(py, |s| s.backlog_size))
    }

    // ----- raw transport ------------------------------------------------------------

    pub(super) fn raw_write(&self, py: Python<'_>, data: Bound<'_, PyBytes>) -> PyResult<()> {
        let (raw, core) =
            self.state.with(py, |s| (s.transport.as_ref().map(|t| t.clone_ref(py)), s.raw_core.as_ref().map(|c| c.clone_ref(py))));
        match (core, raw) {
            (Some(core), _) => StreamTransportCore::write(core.bind(py), data.into_any()),
            (None, Some(raw)) => raw.bind(py).call_method1(intern!(py, "write"), (data,)).map(drop),
            (None, None) => Ok(()),
        }
    }

    pub(super) fn raw_call(&self, py: Python<'_>, method: &Bound<'_, pyo3::types::PyString>) -> PyResult<()> {
        if let Some(raw) = self.transport(py) {
            raw.bind(py).call_method0(method)?;
        }
        Ok(())
    }

    pub(super) fn raw_force_close(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(raw) = self.transport(py) {
            raw.bind(py).call_method1(intern!(py, "_force_close"), (exc,))?;
        }
        Ok(())
    }

    // ----- errors -------------------------------------------------------------------

    /// asyncio's `_fatal_error`: close the raw transport at once; OSErrors are only
    /// logged in debug mode, anything but a cancellation goes to the handler.
    pub(super) fn fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        me.raw_force_close(py, exc.clone())?;
        let err = PyErr::from_value(exc.clone());
        if exc.is_instance_of::<PyOSError>() {
            if me.debug(py) {
                let kwargs = PyDict::new(py);
                kwargs.set_item("exc_info", &exc)?;
                logger(py)?.call_method("debug", ("%r: %s", slf, message), Some(&kwargs))?;
            }
        } else if !is_cancelled_error(py, &err)? {
            let ctx = PyDict::new(py);
            ctx.set_item("message", message)?;
            ctx.set_item("exception", &exc)?;
            ctx.set_item("transport", me.transport(py))?;
            ctx.set_item("protocol", slf)?;
            me.loop_any(py).call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        }
        Ok(())
    }

    /// Runs `f`; an `Exception` it raises becomes a fatal error with `message`.
    pub(super) fn guarded(slf: &Bound<'_, Self>, message: &str, f: impl FnOnce() -> PyResult<()>) -> PyResult<()> {
        match f() {
            Err(e) if is_exception(slf.py(), &e) => Self::fatal_error(slf, e.into_value(slf.py()).into_bound(slf.py()).into_any(), message),
            other => other,
        }
    }

    pub(super) fn wakeup_waiter(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(waiter) = self.state.with(py, |s| s.waiter.take()) else { return Ok(()) };
        let waiter = waiter.bind(py);
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            match exc {
                Some(e) if !e.is_none() => waiter.call_method1(intern!(py, "set_exception"), (e,))?,
                _ => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
            };
        }
        Ok(())
    }

    // ----- handshake ----------------------------------------------------------------

    pub(super) fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let start = if me.debug(py) {
            logger(py)?.call_method1("debug", ("%r starts SSL handshake", slf))?;
            Some(me.event_loop.get().state.with(py, |s| s.now()))
        } else {
            None
        };
        me.state.with(py, |s| s.handshake_start = start);
        me.set_phase(py, Phase::DoHandshake)?;
        let timer = Self::call_later(slf, &me.handshake_timeout, intern!(py, "_check_handshake_timeout"))?;
        let old = me.state.with(py, |s| s.handshake_timer.replace(timer));
        Self::cancel_timer(py, old)?;
        Self::do_handshake(slf)
    }

    pub(super) fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        match slf.get().engine.bind(py).call_method0(intern!(py, "do_handshake")) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => Self::on_handshake_complete(slf, Some(e.into_value(py).into_bound(py).into_any())),
            Err(e) => Err(e),
        }
    }

    pub(super) fn on_handshake_complete(slf: &Bound<'_, Self>, handshake_exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let timer = me.state.with(py, |s| s.handshake_timer.take());
        Self::cancel_timer(py, timer)?;
        let sslobj = me.sslobj.bind(py);
        let peercert = match handshake_exc {
            Some(e) => Err(PyErr::from_value(e)),
            None => me.set_phase(py, Phase::Wrapped).and_then(|_| sslobj.call_method0(intern!(py, "getpeercert"))),
        };
        let peercert = match peercert {
            Ok(p) => p,
            Err(e) if is_exception(py, &e) => {
                me.set_phase(py, Phase::Unwrapped)?;
                let msg = if is_cert_error(py, &e)? { "SSL handshake failed on verifying the certificate" } else { "SSL handshake failed" };
                let exc = e.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, exc.clone(), msg)?;
                return me.wakeup_waiter(py, Some(exc));
            }
            Err(e) => return Err(e),
        };
        if let Some(start) = me.state.with(py, |s| s.handshake_start) {
            let dt = me.event_loop.get().state.with(py, |s| s.now()) - start;
            logger(py)?.call_method1("debug", ("%r: SSL handshake took %.1f ms", slf, dt * 1e3))?;
        }
        let extra = me.state.with(py, |s| s.extra.clone_ref(py));
        let extra = extra.bind(py);
        extra.set_item("peercert", peercert)?;
        extra.set_item("cipher", sslobj.call_method0(intern!(py, "cipher"))?)?;
        extra.set_item("compression", sslobj.call_method0(intern!(py, "compression"))?)?;
        extra.set_item("ssl_object", sslobj)?;
        let made = me.state.with(py, |s| {
            if s.app_state == AppState::Init {
                s.app_state = AppState::ConMade;
                true
            } else {
                false
            }
        });
        if made {
            if let Some(protocol) = me.app_protocol(py) {
                protocol.bind(py).call_method1(intern!(py, "connection_made"), (me.app_transport(py),))?;
            }
        }
        me.wakeup_waiter(py, None)?;
        Self::do_read(slf)
    }

    // ----- shutdown -----------------------------------------------------------------

    pub(super) fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let phase = me.phase(py);
        if matches!(phase, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped) {
            return Ok(());
        }
        me.state.with(py, |s| s.closed = true);
        if phase == Phase::DoHandshake {
            return Self::abort_connection(slf);
        }
        me.set_phase(py, Phase::Flushing)?;
        let timer = Self::call_later(slf, &me.shutdown_timeout, intern!(py, "_check_shutdown_timeout"))?;
        let old = me.state.with(py, |s| s.shutdown_timer.replace(timer));
        Self::cancel_timer(py, old)?;
        Self::do_flush(slf)
    }

    pub(super) fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        slf.get().set_phase(slf.py(), Phase::Shutdown)?;
        Self::do_shutdown(slf)
    }

    pub(super) fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let result = if me.state.with(py, |s| s.eof_received) { Ok(()) } else { me.unwrap(py) };
        match result {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => Self::on_shutdown_complete(slf, Some(e.into_value(py).into_bound(py).into_any())),
            Err(e) => Err(e),
        }
    }

    pub(super) fn on_shutdown_complete(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let timer = me.state.with(py, |s| s.shutdown_timer.take());
        Self::cancel_timer(py, timer)?;
        match exc {
            Some(e) => Self::fatal_error(slf, e, "Fatal error on transport"),
            None => match me.transport(py) {
                Some(raw) => me.call_soon(py, raw.bind(py).getattr(intern!(py, "close"))?, PyTuple::empty(py)),
                None => Ok(()),
            },
        }
    }

    pub(super) fn abort_connection(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.get().set_phase(py, Phase::Unwrapped)?;
        slf.get().raw_call(py, intern!(py, "abort"))
    }

    // ----- outgoing -----------------------------------------------------------------

    pub(super) fn write_appdata(slf: &Bound<'_, Self>, items: Vec<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let phase = me.phase(py);
        if matches!(phase, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped) {
            if me.state.with(py, |s| s.conn_lost) >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1("warning", ("SSL connection is closed",))?;
            }
            me.state.with(py, |s| s.conn_lost += 1);
            return Ok(());
        }
        if phase == Phase::Wrapped && items.len() == 1 && me.state.with(py, |s| s.backlog.is_empty()) {
            // The common case: the SSLObject takes the data at once, nothing is queued.
            let item = &items[0];
            let view = ReadBuf::get(item)?;
            match me.engine.bind(py).call_method1(intern!(py, "write"), (item,)) {
                Ok(n) => {
                    let n: usize = n.extract()?;
                    if n < view.len() {
                        let rest = PyBytes::new(py, &view.as_slice()[n..]).into_any().unbind();
                        me.state.with(py, |s| {
                            s.backlog_size += rest.bind(py).len().unwrap_or(0);
                            s.backlog.push_back(rest);
                        });
                        return Self::guarded(slf, "Fatal error on SSL protocol", || Self::do_write(slf));
                    }
                    return Self::guarded(slf, "Fatal error on SSL protocol", || Self::process_outgoing(slf));
                }
                Err(e) if is_again(py, &e)? => {} // queued below, written when OpenSSL can
                Err(e) => return Self::guarded(slf, "Fatal error on SSL protocol", || Err(e)),
            }
        }
        for item in items {
            let len = ReadBuf::get(&item)?.len();
            if len > 0 {
                me.state.with(py, |s| {
                    s.backlog.push_back(item.unbind());
                    s.backlog_size += len;
                });
            }
        }
        if phase == Phase::Wrapped {
            Self::guarded(slf, "Fatal error on SSL protocol", || Self::do_write(slf))?;
        }
        Ok(())
    }

    pub(super) fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let sslobj = me.engine.bind(py);
        while let Some(data) = me.state.with(py, |s| s.backlog.front().map(|d| d.clone_ref(py))) {
            let count: usize = match sslobj.call_method1(intern!(py, "write"), (&data,)) {
                Ok(n) => n.extract()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            let view = ReadBuf::get(data.bind(py))?;
            let rest = (count < view.len()).then(|| PyBytes::new(py, &view.as_slice()[count..]).into_any().unbind());
            let taken = count.min(view.len());
            drop(view);
            let old = me.state.with(py, |s| {
                s.backlog_size -= taken;
                match rest {
                    Some(rest) => s.backlog.front_mut().map(|f| std::mem::replace(f, rest)),
                    None => s.backlog.pop_front(),
                }
            });
            drop(old);
        }
        Self::process_outgoing(slf)
    }

    /// Sends what the `SSLObject` produced, unless the raw transport is full.
    pub(super) fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if !me.state.with(py, |s| s.ssl_writing_paused) {
            let data = me.outgoing.bind(py).call_method0(intern!(py, "read"))?.cast_into::<PyBytes>()?;
            if !data.as_bytes().is_empty() {
                me.raw_write(py, data)?;
            }
        }
        Self::control_app_writing(slf)
    }

    pub(super) fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let size = me.write_buffer_size(py)?;
        let method = me.state.with(py, |s| {
            if size >= s.outgoing_high && !s.app_writing_paused {
                s.app_writing_paused = true;
                Some(intern!(py, "pause_writing"))
            } else if size <= s.outgoing_low && s.app_writing_paused {
                s.app_writing_paused = false;
                Some(intern!(py, "resume_writing"))
            } else {
                None
            }
        });
        let (Some(method), Some(protocol)) = (method, me.app_protocol(py)) else { return Ok(()) };
        let reported = slf.clone().into_any().unbind();
        tell_protocol_reporting(py, &me.loop_any(py), me.app_transport(py), protocol, reported, method)
    }

    // ----- incoming -----------------------------------------------------------------

    pub(super) fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if !matches!(me.phase(py), Phase::Wrapped | Phase::Flushing) {
            return Ok(());
        }
        Self::guarded(slf, "Fatal error on SSL protocol", || {
            let (paused, buffered) = me.state.with(py, |s| (s.app_reading_paused, s.app_buffered));
            if !paused {
                if buffered {
                    Self::do_read_buffered(slf)?;
                } else {
                    Self::do_read_copied(slf)?;
                }
                if me.state.with(py, |s| !s.backlog.is_empty()) {
                    Self::do_write(slf)?;
                } else {
                    Self::process_outgoing(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })
    }

    /// Reads all the plaintext there is, delivers it in one `data_received()`, then
    /// handles a close_notify that followed it. Records are decrypted one after the
    /// other into a shared scratch buffer and copied out once, at their total size
    /// (no 256 KiB allocation per read, no join). Reading stops without the
    /// `SSLWantReadError` that would end it when nothing is left to decrypt:
    /// OpenSSL reads one record at a time from the BIO, so an empty BIO and no
    /// plaintext pending in the `SSLObject` mean the next read can only want more.
    pub(super) fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let engine = me.engine.bind(py);
        let (scratch, view) = read_scratch(py)?;
        let mut filled = 0usize;
        let mut close_notify = false;
        while filled < MAX_SIZE {
            let result = if filled == 0 {
                engine.call_method1(intern!(py, "read"), (MAX_SIZE, view))
            } else {
                let rest = view.get_item(pyo3::types::PySlice::new(py, filled as isize, MAX_SIZE as isize, 1))?;
                engine.call_method1(intern!(py, "read"), (MAX_SIZE - filled, rest))
            };
            let got: usize = match result {
                Ok(n) => n.extract()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            if got == 0 {
                close_notify = true;
                break;
            }
            filled += got;
            if Self::pending(py, &me.incoming)? == 0 && engine.call_method0(intern!(py, "pending"))?.extract::<usize>()? == 0 {
                break;
            }
        }
        if filled > 0 {
            // SAFETY: the scratch bytearray is only used here, under the GIL, and no
            // Python code ran since the reads that filled it.
            let data = PyBytes::new(py, unsafe { &scratch.as_bytes()[..filled] });
            if let Some(protocol) = me.app_protocol(py) {
                protocol.bind(py).call_method1(intern!(py, "data_received"), (data,))?;
            }
            if filled == MAX_SIZE {
                // Full: there may be more, read it next time round (asyncio's
                // buffered path does the same).
                me.call_soon(py, slf.getattr(intern!(py, "_do_read"))?, PyTuple::empty(py))?;
            }
        }
        if close_notify {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    pub(super) fn do_read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(protocol) = me.app_protocol(py) else { return Ok(()) };
        let protocol = protocol.bind(py);
        let hint = Self::pending(py, &me.incoming)?;
        let buf = protocol.call_method1(intern!(py, "get_buffer"), (hint,))?;
        let view = PyMemoryView::from(&buf)?;
        let wants = view.len()?;
        let sslobj = me.engine.bind(py);
        let mut offset = 0usize;
        let mut count = 1usize;
        match sslobj.call_method1(intern!(py, "read"), (wants, &view)) {
            Ok(n) => {
                count = n.extract()?;
                if count > 0 {
                    offset = count;
                    let mut filled = true;
                    while offset < wants {
                        let rest = view.get_item(pyo3::types::PySlice::new(py, offset as isize, wants as isize, 1))?;
                        match sslobj.call_method1(intern!(py, "read"), (wants - offset, rest)) {
                            Ok(n) => {
                                count = n.extract()?;
                                if count > 0 {
                                    offset += count;
                                } else {
                                    filled = false;
                                    break;
                                }
                            }
                            Err(e) if is_again(py, &e)? => {
                                filled = false;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    if filled {
                        // The buffer is full: there may be more to read.
                        me.call_soon(py, slf.getattr(intern!(py, "_do_read"))?, PyTuple::empty(py))?;
                    }
                }
            }
            Err(e) if is_again(py, &e)? => {}
            Err(e) => return Err(e),
        }
        view.call_method0(intern!(py, "release"))?;
        if offset > 0 {
            protocol.call_method1(intern!(py, "buffer_updated"), (offset,))?;
        }
        if count == 0 {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    pub(super) fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let go = me.state.with(py, |s| {
            let go = s.app_state == AppState::ConMade;
            if go {
                s.app_state = AppState::Eof;
            }
            go
        });
        let Some(protocol) = me.app_protocol(py).filter(|_| go) else { return Ok(()) };
        match protocol.bind(py).call_method0(intern!(py, "eof_received")) {
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    logger(py)?.call_method1("warning", ("returning true from eof_received() has no effect when using ssl",))?;
                }
                Ok(())
            }
            Err(e) if is_fatal(py, &e) => Err(e),
            Err(e) => Self::fatal_error(slf, e.into_value(py).into_bound(py).into_any(), "Error calling eof_received()"),
        }
    }

    pub(super) fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let size = Self::pending(py, &me.incoming)?;
        let method = me.state.with(py, |s| {
            if size >= s.incoming_high && !s.ssl_reading_paused {
                s.ssl_reading_paused = true;
                Some(intern!(py, "pause_reading"))
            } else if size <= s.incoming_low && s.ssl_reading_paused {
                s.ssl_reading_paused = false;
                Some(intern!(py, "resume_reading"))
            } else {
                None
            }
        });
        match method {
            Some(m) => me.raw_call(py, m),
            None => Ok(()),
        }
    }

    /// Continues whatever the phase asks for once more data is there (or reading
    /// was resumed).
    pub(super) fn advance(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::DoHandshake => Self::do_handshake(slf),
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            Phase::Unwrapped => Ok(()),
        }
    }
}
