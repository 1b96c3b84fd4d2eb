//! One loop iteration, as one linear function (`run_once`): purge cancelled timers,
//! compute the poll timeout, poll with the GIL released, queue the callbacks of ready
//! fds, queue due timers, run the batch that was ready when the run started.
//!
//! The batch loop is also where a tracing hook will sit: `run_handle` is the single
//! place every callback passes through, and debug-only work there is behind one
//! boolean read once per iteration.

use std::time::Duration;

use ferroloop_core::{clock, sockio};
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::event_loop::{IoOwner, LoopCore, LoopState, Ready, SPARE_TRIM_PERIOD};
use crate::handles::{format_callback_source, Handle};
use crate::io_context;
use crate::listener::Listener;
use crate::pipes::PipeTransportCore;
use crate::subprocess::ChildWatch;
use crate::transport::StreamTransportCore;
use crate::udp::DatagramTransportCore;

/// asyncio caps one poll at a day, so a far-off or infinite deadline is still fine.
const MAX_POLL_TIMEOUT: f64 = 24.0 * 3600.0;

/// The loop runs on this thread from now on (`run_forever`'s setup), or no longer
/// (its cleanup, which also forgets a `stop()` not acted on).
pub fn set_running(core: &LoopCore, py: Python<'_>, running: bool) {
    core.state.with(py, |s| {
        s.running = running;
        s.thread_id = running.then(crate::scheduling::current_thread_id);
        if !running {
            s.stopping = false;
        }
    });
}

/// Runs iterations until `stop()`; or, `once`, one iteration that polls first
/// (asyncio's `_run_once`, for code that drives the loop itself between 3.13's
/// `_run_forever_setup` and `_run_forever_cleanup`). The one call of `run_once`
/// is here, so that it is inlined: out of line, each iteration cost ~50
/// instructions more (callgrind, call_soon_chain).
pub fn run_iterations(slf: &Bound<'_, LoopCore>, once: bool) -> PyResult<()> {
    let py = slf.py();
    let core = slf.get();
    if once {
        core.check_closed(py)?;
    }
    let mut after_io = false;
    loop {
        after_io = run_once(slf, core, py, after_io)?;
        if once || core.state.with(py, |s| s.stopping) {
            return Ok(());
        }
    }
}

/// One iteration. `after_io`: the previous one was a batch of the loop's own I/O
/// handling alone that sent nothing; returns whether this one was.
fn run_once(slf: &Bound<'_, LoopCore>, core: &LoopCore, py: Python<'_>, after_io: bool) -> PyResult<bool> {
    core.iteration.add(py, 1);
    let cancelled = core.cancelled_timers.take(py);
    // Objects leaving the loop are dropped after the state borrows end: dropping
    // may run Python code (see gil_cell).
    let mut dead_handles = Vec::new();
    let (timeout, skip_poll, mut fds) = core.state.with(py, |s| {
        s.timers.note_cancelled(cancelled);
        if s.spare_handles.above_keep() {
            trim_spare_handles(s, &mut dead_handles);
        }
        // Cancelled slots are empty: recycling them here drops no Python object.
        for entry in s.timers.purge_cancelled() {
            s.recycle_slot(py, entry.0, false);
        }
        for slot in std::mem::take(&mut s.retired_slots) {
            s.recycle_slot(py, slot, false);
        }
        // Virtual time never sleeps: the clock moves only when told. Writes left
        // queued when the last batch was cut short (SystemExit, KeyboardInterrupt)
        // are flushed at the end of this one, so do not sleep before it either.
        let timeout =
            if !s.ready.is_empty() || !s.io_attempts.is_empty() || !s.deferred_flush.is_empty() || s.stopping || s.virtual_now.is_some() {
                Some(Duration::ZERO)
            } else if let Some(when) = s.timers.next_deadline() {
                let secs = (when - s.now()).clamp(0.0, MAX_POLL_TIMEOUT);
                Some(Duration::from_secs_f64(secs))
            } else {
                None
            };
        if timeout != Some(Duration::ZERO) {
            if let Some(w) = &s.waker {
                w.arm();
            }
        }
        // With work queued and no fd to watch, polling could only find the signal
        // socket, and pending signals are checked below anyway: skip the syscall.
        // (Unless signal handlers are installed: their numbers arrive on that socket.)
        //
        // After a batch that only handled I/O for the loop's own transports and
        // `sock_*` receives and sent nothing (`after_io`), the callbacks it
        // scheduled (a task woken by `data_received`) run before the next poll, as
        // uvloop runs them: a server's request then costs one poll, not a blocking
        // one and then a zero-timeout one. Skipping it changes nothing a callback
        // can see, except I/O arriving from outside during that very batch, which
        // is seen an iteration later. The loop still polls at least every other
        // iteration, and always when stopping (`stop()` before `run_forever()`
        // polls once).
        let skip_poll = timeout == Some(Duration::ZERO)
            && !s.stopping
            && (after_io || (s.signal_handlers.is_empty() && s.registrar.as_ref().is_none_or(|r| r.watched_count() == 0)));
        (timeout, skip_poll, std::mem::take(&mut s.ready_fds))
    });
    // Trimmed spares go now, not after a poll that may sleep for long.
    if !dead_handles.is_empty() {
        dead_handles.clear();
    }

    let polled = if skip_poll {
        Ok(())
    } else if timeout == Some(Duration::ZERO) {
        poll(core, timeout, &mut fds) // no sleep: not worth releasing the GIL
    } else {
        py.detach(|| poll(core, timeout, &mut fds))
    };
    match polled {
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
        other => other?,
    }

    let (ntodo, io_only) = core.state.with(py, |s| {
        if let Some(w) = &s.waker {
            w.disarm();
        }
        // A batch of the loop's own I/O handling alone (see `after_io`): nothing
        // queued before the poll, no user fd callback, no timer.
        let io_arrived = !fds.is_empty() || !s.io_attempts.is_empty();
        let mut io_only = !skip_poll && io_arrived && s.ready.is_empty();
        for r in fds.drain(..) {
            if Some(r.fd) == s.signal_fd {
                crate::signals::queue_arrived(s, py, r.fd);
                io_only = false;
                continue;
            }
            if let Some(held) = s.io.get(&r.fd) {
                // Edge-triggered and Rust-owned: queue the event itself, no re-arm.
                // (An idle transport that is gone has nothing to do.)
                if let Some(owner) = held.owner(py) {
                    s.ready.push_back(Ready::Io { owner, readable: r.readable, writable: r.writable, clean: !r.hup });
                }
                continue;
            }
            let mut level = false;
            for (wanted, table) in [(r.readable, &mut s.readers), (r.writable, &mut s.writers)] {
                match table.get(&r.fd) {
                    Some(h) if wanted && h.get().is_cancelled() => dead_handles.extend(table.remove(&r.fd)),
                    Some(h) if wanted => {
                        // Only the loop's own receive operations need no re-arm.
                        let user_callback = crate::fd_callbacks::needs_rearm(py, h);
                        level |= user_callback;
                        io_only &= !user_callback;
                        s.ready.push_back(Ready::Handle(h.clone_ref(py)));
                    }
                    _ => {}
                }
            }
            // Re-registering re-arms the fd (level-triggered, see poller), and drops
            // interest in a direction whose callback was cancelled.
            let (reading, writing) = (s.readers.contains_key(&r.fd), s.writers.contains_key(&r.fd));
            if let Some(reg) = s.registrar.as_mut() {
                let _ = reg.rearm_interest(r.fd, reading, writing, level);
            }
        }
        s.ready_fds = std::mem::take(&mut fds);
        // Attempts the owners asked for, with the poll's events (`queue_attempt`).
        if !s.io_attempts.is_empty() {
            s.ready.extend(s.io_attempts.drain(..));
        }

        let end_time = if s.timers.is_empty() { f64::NEG_INFINITY } else { s.now() + clock::resolution() };
        while let Some(entry) = s.timers.pop_due(end_time) {
            // A cancelled timer's slot is already empty.
            if let Some(handle) = entry.0.unschedule(py) {
                s.ready.push_back(Ready::Handle(handle));
                io_only = false;
            }
            s.recycle_slot(py, entry.0, true);
        }
        (s.ready.len(), io_only)
    });
    drop(dead_handles);
    // Python-level signal handlers (KeyboardInterrupt) run here, after the poll's
    // events and the signals' handlers are queued: raising before would lose them.
    py.check_signals()?;

    let (debug, virtual_time) = core.state.with(py, |s| (s.debug, s.virtual_now.is_some()));
    let sends_before = io_only.then(sockio::sends);
    for _ in 0..ntodo {
        let Some(item) = core.state.with(py, |s| {
            let item = s.ready.pop_front();
            // The next handle's first read (its cancelled flag) stalled on memory:
            // start that load while this one runs.
            if let Some(Ready::Handle(next)) = s.ready.front() {
                prefetch_object(next.as_ptr());
            }
            item
        }) else {
            break;
        };
        let cancelled = matches!(&item, Ready::Handle(h) if h.get().is_cancelled());
        let result = if cancelled { Ok(()) } else { run_handle(slf, py, &item, debug) };
        release(core, py, item);
        if let Err(e) = result {
            // Leaving the loop (SystemExit, KeyboardInterrupt): what was written
            // during the batch is still sent, as the stdlib sent it at once.
            let _ = flush_deferred_writes(slf, py, debug);
            return Err(e);
        }
    }
    flush_deferred_writes(slf, py, debug)?;
    if virtual_time {
        // Test support: the Python side feeds its time generator (see `_enable_virtual_time`).
        slf.call_method0(pyo3::intern!(py, "_after_virtual_iteration"))?;
    }
    // Whatever the batch sent, a peer in this loop may read at once: poll first.
    Ok(sends_before.is_some_and(|n| sockio::sends() == n))
}

/// Moves the spare handles that went unused for a whole `SPARE_TRIM_PERIOD` to
/// `freed`, to be dropped after the state borrow. Called only while the pool holds
/// more than it always keeps (after a burst), so the clock is read only then.
#[cold]
#[inline(never)]
fn trim_spare_handles(s: &mut LoopState, freed: &mut Vec<Py<Handle>>) {
    let now = s.now();
    if now - s.spares_trimmed_at >= SPARE_TRIM_PERIOD {
        s.spares_trimmed_at = now;
        freed.append(&mut s.spare_handles.trim());
    }
}

/// Drops a ready entry the loop is done with. A `call_soon` handle nobody else
/// holds is emptied and kept for the next `call_soon` instead (see
/// `Handle::take_for_reuse`); what it held is dropped after the state borrow.
#[inline]
fn release(core: &LoopCore, py: Python<'_>, item: Ready) {
    let handle = match item {
        Ready::Handle(handle) => handle.into_bound(py), // a Bound decrefs without a thread-local lookup
        other => return release_io(py, other),
    };
    let Some(released) = Handle::take_for_reuse(&handle) else {
        Handle::track_again(&handle); // someone else holds it
        return;
    };
    let unkept = core.state.with(py, |s| s.spare_handles.give(handle.unbind()));
    released.drop_now(py);
    drop(unkept);
}

/// `release` for I/O entries, kept out of line so the handle path stays inlined in
/// the batch loop. Dropped as `Bound`s, which decref without a thread-local lookup.
#[inline(never)]
fn release_io(py: Python<'_>, item: Ready) {
    match item {
        Ready::Handle(h) => drop(h.into_bound(py)),
        Ready::Io { owner, .. } => drop(owner.into_any().into_bound(py)),
        Ready::Flush(t) => drop(t.into_bound(py)),
    }
}

/// Sends the writes transports collected during the batch: one `sendmsg` per
/// transport per iteration however many `write()` calls it got. A transport queued
/// while these run (a protocol callback writing elsewhere) is sent in this pass too.
fn flush_deferred_writes(slf: &Bound<'_, LoopCore>, py: Python<'_>, debug: bool) -> PyResult<()> {
    while let Some(t) = slf.get().state.with(py, |s| s.deferred_flush.pop_front()) {
        let item = Ready::Flush(t);
        let result = run_handle(slf, py, &item, debug);
        release(slf.get(), py, item);
        // Leaving the loop: the transports not flushed yet stay queued (their
        // `deferred` flag is still set, so nothing else would queue them).
        result?;
    }
    Ok(())
}

fn poll(core: &LoopCore, timeout: Option<Duration>, fds: &mut Vec<ferroloop_core::poller::Readiness>) -> std::io::Result<()> {
    let mut guard = core.poller.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_mut() {
        Some(poller) => poller.poll(timeout, fds),
        None => Ok(()),
    }
}

/// Runs one ready entry: a callback, or an fd owner's I/O. `SystemExit` and
/// `KeyboardInterrupt` propagate out of the loop (as in asyncio); anything else goes
/// to the exception handler. Every callback of the loop passes through here.
#[inline(always)]
fn run_handle(slf: &Bound<'_, LoopCore>, py: Python<'_>, item: &Ready, debug: bool) -> PyResult<()> {
    if debug {
        return run_handle_debug(slf, py, item);
    }
    match run_item(py, item) {
        Ok(()) => Ok(()),
        Err(err) => item_error(slf, py, item, err),
    }
}

/// `run_handle` in debug mode, as asyncio: a handle is the loop's `_current_handle`
/// while it runs (the default exception handler shows where it was created), errors
/// are reported first, and the time taken includes that report.
#[inline(never)]
fn run_handle_debug(slf: &Bound<'_, LoopCore>, py: Python<'_>, item: &Ready) -> PyResult<()> {
    let core = slf.get();
    if let Ready::Handle(handle) = item {
        let previous = core.state.with(py, |s| s.current_handle.replace(handle.clone_ref(py)));
        drop(previous); // outside the cell: dropping may run Python code
    }
    let t0 = core.state.with(py, |s| s.now());
    let result = run_item(py, item).or_else(|err| item_error(slf, py, item, err));
    let took = core.state.with(py, |s| s.now()) - t0;
    let previous = core.state.with(py, |s| s.current_handle.take());
    drop(previous);
    result?;
    let slow = core.state.with(py, |s| s.slow_callback_duration);
    if took >= slow {
        log_slow_callback(py, item, took)?;
    }
    Ok(())
}

#[inline(always)]
fn run_item(py: Python<'_>, item: &Ready) -> PyResult<()> {
    match item {
        Ready::Handle(handle) => handle.get().run(py),
        Ready::Io { owner, readable, writable, clean } => run_io(py, owner, *readable, *writable, *clean),
        Ready::Flush(t) => StreamTransportCore::flush_from_loop(t.bind(py)),
    }
}

/// An fd owner's I/O, in its context (`io_context`); kept out of line so the
/// handle path stays inlined in the batch loop.
#[inline(never)]
fn run_io(py: Python<'_>, owner: &IoOwner, readable: bool, writable: bool, clean: bool) -> PyResult<()> {
    match owner {
        IoOwner::Stream(t) => {
            let t = t.bind(py);
            io_context::run_in(py, t.get().io_context(py), || StreamTransportCore::on_io(t, readable, writable, clean))
        }
        IoOwner::Listener(l) => io_context::run_in(py, l.get().io_context(py), || Listener::on_io(l.bind(py), readable)),
        IoOwner::Datagram(t) => {
            io_context::run_in(py, t.get().io_context(py), || DatagramTransportCore::on_io(t.bind(py), readable, writable))
        }
        IoOwner::Pipe(t) => io_context::run_in(py, t.get().io_context(py), || PipeTransportCore::on_io(t.bind(py), readable, writable)),
        IoOwner::Child(c) => io_context::run_in(py, c.get().io_context(py), || ChildWatch::on_exit(c.bind(py))),
    }
}

/// A callback's error: `SystemExit` and `KeyboardInterrupt` propagate, anything
/// else goes to the exception handler.
#[cold]
#[inline(never)]
fn item_error(slf: &Bound<'_, LoopCore>, py: Python<'_>, item: &Ready, err: PyErr) -> PyResult<()> {
    if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
        return Err(err);
    }
    match item {
        Ready::Handle(handle) => report_callback_error(py, Some(slf.as_any()), handle.bind(py), err),
        Ready::Io { owner, .. } => report_io_error(py, slf.as_any(), owner.describe(py).bind(py), err),
        Ready::Flush(t) => report_io_error(py, slf.as_any(), t.get().owner(py).bind(py), err),
    }
}

/// An error escaping an fd owner's I/O handling (protocol errors are handled by the
/// transport itself; this is the safety net).
fn report_io_error(py: Python<'_>, event_loop: &Bound<'_, PyAny>, owner: &Bound<'_, PyAny>, err: PyErr) -> PyResult<()> {
    let ctx = PyDict::new(py);
    ctx.set_item("message", format!("Exception in I/O callback of {}", owner.repr()?))?;
    ctx.set_item("exception", err.value(py))?;
    event_loop.call_method1("call_exception_handler", (ctx,))?;
    Ok(())
}

/// "Executing <Task ...> took 0.123 seconds", naming the task rather than its step
/// method, through asyncio's own formatter.
/// The logger is looked up on `asyncio.base_events` at each call, where asyncio's
/// loop finds it, so code patching `asyncio.base_events.logger` sees the report.
fn log_slow_callback(py: Python<'_>, item: &Ready, took: f64) -> PyResult<()> {
    static FORMAT_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let format = FORMAT_HANDLE.import(py, "asyncio.base_events", "_format_handle")?;
    let logger = py.import("asyncio.base_events")?.getattr("logger")?;
    let name = match item {
        Ready::Handle(handle) => format.call1((handle.bind(py),))?,
        Ready::Io { owner, .. } => owner.describe(py).bind(py).repr()?.into_any(),
        Ready::Flush(t) => t.get().owner(py).bind(py).repr()?.into_any(),
    };
    logger.call_method1("warning", ("Executing %s took %.3f seconds", name, took))?;
    Ok(())
}

/// Sends a callback's exception to the loop's exception handler with asyncio's
/// context keys. Without a loop (a handle run by hand), the running loop is used.
pub fn report_callback_error(
    py: Python<'_>,
    event_loop: Option<&Bound<'_, PyAny>>,
    handle: &Bound<'_, Handle>,
    err: PyErr,
) -> PyResult<()> {
    let event_loop = match event_loop {
        Some(l) => l.clone(),
        None => py.import("asyncio")?.call_method0("get_event_loop")?,
    };
    let ctx = PyDict::new(py);
    let (callback, args) = (handle.get().callback(py), handle.getattr("_args")?);
    let source = match callback {
        Some(cb) => format_callback_source(py, cb.bind(py), args.extract().ok(), event_loop.call_method0("get_debug")?.is_truthy()?)?,
        None => String::new(),
    };
    ctx.set_item("message", format!("Exception in callback {source}"))?;
    // into_value attaches the traceback (on 3.11 a PyErr keeps it apart), so the
    // handler and the log see the frames of the failing callback.
    ctx.set_item("exception", err.into_value(py))?;
    ctx.set_item("handle", handle)?;
    let tb = handle.getattr("_source_traceback")?;
    if !tb.is_none() {
        ctx.set_item("source_traceback", tb)?;
    }
    event_loop.call_method1("call_exception_handler", (ctx,))?;
    Ok(())
}

/// Drops every queued callback: ready handles, timers, fd callbacks. Objects are
/// moved out of the state first and dropped after, since dropping them may run
/// Python code.
pub fn drop_queued(core: &LoopCore, py: Python<'_>) {
    let dropped = core.state.with(py, |s| {
        (
            std::mem::take(&mut s.ready),
            s.timers.drain(),
            std::mem::take(&mut s.spare_slots),
            std::mem::take(&mut s.retired_slots),
            std::mem::take(&mut s.readers),
            std::mem::take(&mut s.writers),
            std::mem::take(&mut s.signal_handlers),
            s.current_handle.take(),
            std::mem::take(&mut s.io),
            std::mem::take(&mut s.deferred_flush),
            s.spare_handles.drain(),
            std::mem::take(&mut s.io_attempts),
            std::mem::take(&mut s.fileobjs),
            std::mem::take(&mut s.sock_lingering),
        )
    });
    for r in &dropped.0 {
        if let Ready::Handle(h) = r {
            Handle::track_again(h.bind(py)); // before dropping: the caller may hold it
        }
    }
    let timer_handles: Vec<_> = dropped.1.iter().filter_map(|entry| entry.0.unschedule(py)).collect();
    for h in &timer_handles {
        Handle::track_again(h.bind(py));
    }
    drop((dropped, timer_handles));
}

/// Closing: drop every queued callback and close the poller, the waker's eventfd and
/// the signal socket registration.
pub fn close(core: &LoopCore, py: Python<'_>) {
    // Writes collected in an iteration that never finished still go out.
    let pending = core.state.with(py, |s| std::mem::take(&mut s.deferred_flush));
    for t in &pending {
        t.get().flush_raw(py);
    }
    drop(pending);
    core.state.with(py, |s| s.closed = true);
    drop_queued(core, py);
    let owned = core.state.with(py, |s| (s.registrar.take(), s.waker.take(), s.signal_fd.take()));
    drop(owned);
    let poller = core.poller.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(poller);
}

/// Asks the CPU to start loading the next queued handle (its header and the Rust
/// data after it, two cache lines) while the current one runs.
#[inline(always)]
fn prefetch_object(obj: *mut pyo3::ffi::PyObject) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and changes no state the
    // program can observe, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(obj.cast::<i8>());
        _mm_prefetch::<_MM_HINT_T0>(obj.cast::<i8>().wrapping_add(64));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = obj;
}
