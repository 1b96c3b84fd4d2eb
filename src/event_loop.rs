//! `LoopCore`: the Rust half of `ferroloop.Loop`, and the one place that lists the
//! loop API implemented in Rust. Bodies live in topic modules (`scheduling`,
//! `dispatch`, `fd_callbacks`); the Python class `ferroloop.Loop` subclasses this one
//! and `asyncio.AbstractEventLoop`, adding the glue that is Python by nature
//! (executor, exception handler, task factory, async generators, signals).

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use ferroloop_core::poller::{self, FdMap, Poller, Readiness, Registrar, Waker};
use ferroloop_core::pool::Pool;
use ferroloop_core::sockio;
use ferroloop_core::timers::{Cancellable, TimerQueue};
use pyo3::exceptions::PyRuntimeError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyWeakrefReference};
use pyo3::PyTraverseError;

use crate::gil_cell::{GilCell, GilCounter, GilFlag, GilRc};
use crate::handles::{closed_error, Handle, TimerSlot};
use crate::listener::Listener;
use crate::pipes::PipeTransportCore;
use crate::sock::{self, SockOp};
use crate::subprocess::ChildWatch;
use crate::transport::StreamTransportCore;
use crate::udp::DatagramTransportCore;
use crate::{dispatch, fd_callbacks, scheduling, signals};

/// A timer in the timer queue. "Cancelled" for the queue means "no longer
/// scheduled": `TimerHandle.cancel()` clears the flag, and a popped timer is out.
pub struct TimerEntry(pub GilRc<TimerSlot>);

impl Cancellable for TimerEntry {
    fn is_cancelled(&self) -> bool {
        !self.0.is_scheduled()
    }
}

/// A Rust object that owns an fd for its lifetime and handles its readiness
/// itself (no Python `Handle` per event).
pub enum IoOwner {
    Stream(Py<StreamTransportCore>),
    Listener(Py<Listener>),
    Datagram(Py<DatagramTransportCore>),
    Pipe(Py<PipeTransportCore>),
    Child(Py<ChildWatch>),
}

impl IoOwner {
    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            IoOwner::Stream(t) => IoOwner::Stream(t.clone_ref(py)),
            IoOwner::Listener(l) => IoOwner::Listener(l.clone_ref(py)),
            IoOwner::Datagram(t) => IoOwner::Datagram(t.clone_ref(py)),
            IoOwner::Pipe(t) => IoOwner::Pipe(t.clone_ref(py)),
            IoOwner::Child(c) => IoOwner::Child(c.clone_ref(py)),
        }
    }

    /// What to name in logs: the transport object protocols see, or the listener.
    pub fn describe(&self, py: Python<'_>) -> Py<PyAny> {
        match self {
            IoOwner::Stream(t) => t.get().owner(py),
            IoOwner::Listener(l) => l.clone_ref(py).into_any(),
            IoOwner::Datagram(t) => t.get().owner(py),
            IoOwner::Pipe(t) => t.get().owner(py),
            IoOwner::Child(c) => c.clone_ref(py).into_any(),
        }
    }

    pub fn into_any(self) -> Py<PyAny> {
        match self {
            IoOwner::Stream(t) => t.into_any(),
            IoOwner::Listener(l) => l.into_any(),
            IoOwner::Datagram(t) => t.into_any(),
            IoOwner::Pipe(t) => t.into_any(),
            IoOwner::Child(c) => c.into_any(),
        }
    }

    pub fn as_any(&self) -> &Py<PyAny> {
        match self {
            IoOwner::Stream(t) => t.as_any(),
            IoOwner::Listener(l) => l.as_any(),
            IoOwner::Datagram(t) => t.as_any(),
            IoOwner::Pipe(t) => t.as_any(),
            IoOwner::Child(c) => c.as_any(),
        }
    }

    /// The address of the Rust object, which identifies the owner.
    fn addr(&self) -> usize {
        match self {
            IoOwner::Stream(t) => addr_of(t.get()),
            IoOwner::Listener(l) => addr_of(l.get()),
            IoOwner::Datagram(t) => addr_of(t.get()),
            IoOwner::Pipe(t) => addr_of(t.get()),
            IoOwner::Child(c) => addr_of(c.get()),
        }
    }
}

/// The Rust objects that own fds (the payloads of `IoOwner`): what `release_owned`
/// accepts, so that nothing else (a `Bound` of one, say) is passed and never matches.
pub trait FdOwner {}
impl FdOwner for StreamTransportCore {}
impl FdOwner for Listener {}
impl FdOwner for DatagramTransportCore {}
impl FdOwner for PipeTransportCore {}
impl FdOwner for ChildWatch {}

/// The owner behind an idle entry, if it is still alive (a stream or a read pipe
/// transport, the only owners held weakly).
#[cold]
fn upgrade_idle(py: Python<'_>, weak: &Py<PyWeakrefReference>) -> Option<IoOwner> {
    let owner = weak.bind(py).upgrade()?;
    match owner.cast_into::<StreamTransportCore>() {
        Ok(t) => Some(IoOwner::Stream(t.unbind())),
        Err(e) => e.into_inner().cast_into::<PipeTransportCore>().ok().map(|p| IoOwner::Pipe(p.unbind())),
    }
}

fn addr_of<T>(object: &T) -> usize {
    object as *const T as usize
}

/// What the loop keeps of the Rust object that owns an fd: the object itself while
/// it waits for I/O, or only a weak reference while a stream transport waits for
/// none (reading paused or past end of file, nothing left to send), or a read
/// pipe is paused. asyncio's selector references a transport only while it has a
/// reader or writer registered, so a transport the application drops then is
/// collected, warned about and closed; a strong reference here would keep its
/// socket or pipe open for the loop's lifetime. The fd stays registered either
/// way (no `epoll_ctl`).
pub enum Held {
    Owner(IoOwner),
    /// `addr` identifies the transport even while its finalizer runs, after the
    /// collector has already cleared weak references to it.
    Idle {
        weak: Py<PyWeakrefReference>,
        addr: usize,
    },
}

impl Held {
    /// The owner, unless it was an idle transport that is gone.
    #[inline]
    pub fn owner(&self, py: Python<'_>) -> Option<IoOwner> {
        match self {
            Held::Owner(o) => Some(o.clone_ref(py)),
            Held::Idle { weak, .. } => upgrade_idle(py, weak),
        }
    }

    fn addr(&self) -> usize {
        match self {
            Held::Owner(o) => o.addr(),
            Held::Idle { addr, .. } => *addr,
        }
    }

    fn as_any(&self) -> &Py<PyAny> {
        match self {
            Held::Owner(o) => o.as_any(),
            Held::Idle { weak, .. } => weak.as_any(),
        }
    }
}

/// One entry of the ready queue: a callback, or an I/O event for an fd owner,
/// queued where asyncio would queue the fd's reader callback.
pub enum Ready {
    Handle(Py<Handle>),
    Io {
        owner: IoOwner,
        readable: bool,
        writable: bool,
        /// Straight from a poll that saw no hang-up or error (`Readiness::hup`):
        /// a short read proves the socket drained. False for queued retries.
        clean: bool,
    },
    /// Send what a transport's `write()` calls collected during the iteration.
    Flush(Py<StreamTransportCore>),
}

/// The block `sockio::prefer_heap_for_reads` frees once per process: glibc's mmap
/// threshold becomes this (a page above 1 MiB), so reads of up to `MAX_READ` come
/// from the heap, and its trim threshold twice this, so a few connections' large
/// reads coming and going do not hand the heap top back to the kernel and fault it
/// in again. With a block of `MAX_READ` (trim at 520 KiB) the 100 KiB echoes cost
/// 28-71 µs of server CPU per request or 16-24 µs depending on the heap's layout
/// (where the interpreter's own allocations happened to fall); with this, 16-24
/// whatever the layout (bench/README.md, "Large messages and glibc's heap").
const READ_HEAP_BLOCK: usize = 1024 * 1024 + 4096;

/// Emptied handles the loop keeps for reuse (about 112 bytes each): always up to
/// `KEEP_SPARE_HANDLES`, and up to `MAX_SPARE_HANDLES` while bursts need them (a
/// thread calling `call_soon_threadsafe` queues tens of thousands while it holds
/// the GIL). What a whole `SPARE_TRIM_PERIOD` went without is freed (`Pool::trim`).
pub const KEEP_SPARE_HANDLES: usize = 1024;
pub const MAX_SPARE_HANDLES: usize = 1 << 17;
/// Seconds between two trims of the spare handles.
pub const SPARE_TRIM_PERIOD: f64 = 1.0;

/// How many empty timer slots the loop keeps for reuse (a few dozen bytes each):
/// a `call_later` then costs no allocation and its end no free.
pub const MAX_SPARE_SLOTS: usize = 1024;

/// Everything the loop mutates, behind one GIL-guarded cell.
pub struct LoopState {
    pub ready: VecDeque<Ready>,
    /// Emptied `call_soon` handles kept for reuse (see `Handle::take_for_reuse`).
    /// Not visited by `__traverse__`: they hold nothing.
    pub spare_handles: Pool<Py<Handle>, KEEP_SPARE_HANDLES, MAX_SPARE_HANDLES>,
    /// When `spare_handles` was last trimmed (loop time).
    pub spares_trimmed_at: f64,
    pub timers: TimerQueue<TimerEntry>,
    /// Empty timer slots for reuse by `call_later` (see `recycle_slot`).
    pub spare_slots: Vec<GilRc<TimerSlot>>,
    /// Slots of timers that fired in the last iteration whose handle was still alive
    /// (queued to run): looked at once more in the next iteration, then let go.
    pub retired_slots: Vec<GilRc<TimerSlot>>,
    pub readers: FdMap<Py<Handle>>,
    pub writers: FdMap<Py<Handle>>,
    /// Fds owned by Rust I/O objects (transports, listeners), each held strongly or,
    /// for an idle transport, weakly (see `Held`).
    pub io: FdMap<Held>,
    /// Weak references to the socket objects whose `sock_*` wait left their fd
    /// lingering in the poller: the next wait on the same live object takes the
    /// registration back without a syscall (`fd_callbacks::add_fd`).
    pub sock_lingering: FdMap<Py<PyWeakrefReference>>,
    /// Weak references to the objects given to `add_reader`/`add_writer` (not plain
    /// ints): once such an object is closed, its `fileno()` no longer names the fd,
    /// and `remove_reader(obj)` finds it here, as `selectors` finds its key by the
    /// object (`fd_callbacks::remove`).
    pub fileobjs: FdMap<Py<PyWeakrefReference>>,
    /// Transports with writes collected during this iteration, flushed at its end
    /// (a queue that keeps its allocation from iteration to iteration).
    pub deferred_flush: VecDeque<Py<StreamTransportCore>>,
    /// I/O attempts the owners asked for (`queue_attempt`), queued with the next
    /// poll's events.
    pub io_attempts: Vec<Ready>,
    pub registrar: Option<Registrar>,
    pub waker: Option<Waker>,
    /// Scratch buffer for poll results, kept to avoid an allocation per iteration.
    pub ready_fds: Vec<Readiness>,
    pub stopping: bool,
    pub closed: bool,
    pub running: bool,
    pub debug: bool,
    /// `set_task_factory`'s factory (the Python side's `_task_factory`); while one
    /// is set, `create_task` leaves every task to the Python side.
    pub task_factory: Option<Py<PyAny>>,
    pub thread_id: Option<u64>,
    pub slow_callback_duration: f64,
    /// The read end of the signal wakeup socket, drained by the loop itself.
    pub signal_fd: Option<RawFd>,
    /// The wakeup fd the loop displaced while running; it gets the signal bytes too.
    pub signal_forward_fd: Option<RawFd>,
    /// `add_signal_handler` handles by signal number; while there are any, the
    /// signal socket must be polled.
    pub signal_handlers: HashMap<i32, Py<Handle>>,
    /// The handle being run, in debug mode only (asyncio's `_current_handle`).
    pub current_handle: Option<Py<Handle>>,
    /// Virtual clock (test support, `_enable_virtual_time`): `time()` returns this
    /// value, which moves only by `_advance_time`, and the loop never sleeps.
    pub virtual_now: Option<f64>,
}

impl LoopState {
    /// Keeps a slot that left the heap for a later `call_later`, if its handle is
    /// gone (nobody else can reach it then); otherwise `retire` keeps it one more
    /// iteration, since a fired timer's handle usually dies right after it runs.
    /// Only unscheduled slots come here: they hold no Python object, so dropping one
    /// inside the state borrow is safe.
    #[inline]
    pub fn recycle_slot(&mut self, py: Python<'_>, slot: GilRc<TimerSlot>, retire: bool) {
        debug_assert!(!slot.is_scheduled());
        if slot.is_unique(py) {
            if self.spare_slots.len() < MAX_SPARE_SLOTS {
                self.spare_slots.push(slot);
            }
        } else if retire {
            self.retired_slots.push(slot);
        }
    }

    /// The loop's "now": the virtual clock if enabled, else `CLOCK_MONOTONIC`. Every
    /// clock read of the loop goes through here.
    #[inline]
    pub fn now(&self) -> f64 {
        match self.virtual_now {
            Some(t) => t,
            None => ferroloop_core::clock::monotonic(),
        }
    }
}

#[pyclass(module = "ferroloop._ferroloop", subclass, frozen, weakref)]
pub struct LoopCore {
    pub state: GilCell<LoopState>,
    /// The epoll wait runs with the GIL released, so it cannot live in `state`.
    pub poller: Mutex<Option<Poller>>,
    /// Shared with every timer slot: how many timers were cancelled while scheduled.
    pub cancelled_timers: Arc<GilCounter>,
    /// The number of the running iteration, which transports note when they start
    /// or resume reading (`reading::Armed`).
    pub iteration: GilCounter,
}

impl LoopState {
    /// Hands `fd` to a Rust owner (a transport or listener), edge-triggered; refused
    /// when the loop is closed or the fd has Python callbacks. Returns the owner it
    /// replaced, to be dropped after the state borrow (the caller still holds a
    /// reference to `owner`, so dropping it on error here frees nothing).
    pub fn register_owner(&mut self, fd: RawFd, owner: IoOwner, readable: bool, writable: bool) -> PyResult<Option<Held>> {
        if self.closed {
            return Err(closed_error());
        }
        if self.readers.contains_key(&fd) || self.writers.contains_key(&fd) {
            return Err(PyRuntimeError::new_err(format!("File descriptor {fd} has reader or writer callbacks")));
        }
        let Some(reg) = self.registrar.as_mut() else { return Err(closed_error()) };
        reg.watch_owned(fd, readable, writable)?;
        Ok(self.io.insert(fd, Held::Owner(owner)))
    }

    /// Queues an I/O attempt for an fd owner, as if the next poll reported its fd
    /// ready: an edge-triggered fd may have turned ready before reading started or
    /// resumed, or a read cut short by the fairness cap left data behind. asyncio's
    /// reader, added (or level-triggered, still ready) then, is found by the next
    /// poll and runs after every callback queued before it: a client's
    /// `create_connection` returns before the first `data_received`, even when the
    /// server spoke at once.
    pub fn queue_attempt(&mut self, owner: IoOwner, readable: bool, writable: bool) {
        if !self.closed {
            self.io_attempts.push(Ready::Io { owner, readable, writable, clean: false });
        }
    }

    /// Stops watching `fd` if it is still held for the Rust object `owner` (the
    /// number may belong to a new file by now); returns the entry, to be dropped
    /// after the state borrow.
    pub fn release_owner<T: FdOwner>(&mut self, fd: RawFd, owner: &T) -> Option<Held> {
        if !self.io.get(&fd).is_some_and(|h| h.addr() == addr_of(owner)) {
            return None;
        }
        self.forget_owner(fd)
    }

    /// Stops watching `fd` and drops its entry, whoever it was held for; returns
    /// the entry, to be dropped after the state borrow.
    pub fn forget_owner(&mut self, fd: RawFd) -> Option<Held> {
        if let Some(reg) = self.registrar.as_mut() {
            reg.unwatch_owned(fd);
        }
        self.io.remove(&fd)
    }
}

impl LoopCore {
    /// Stops watching an fd the Rust object `owner` owns, if the loop still holds
    /// it for that object (the number may belong to a new file by now); what is
    /// released is dropped outside the state borrow.
    pub fn release_owned<T: FdOwner>(&self, py: Python<'_>, fd: RawFd, owner: &T) {
        let removed = self.state.with(py, |s| s.release_owner(fd, owner));
        drop(removed);
    }

    /// Holds `owner` (a stream or read pipe transport), owner of `fd`, strongly
    /// (it waits for I/O) or only weakly (see `Held`), if the loop still holds `fd`
    /// for it.
    pub fn hold(&self, py: Python<'_>, fd: RawFd, owner: IoOwner, strongly: bool) -> PyResult<()> {
        let addr = owner.addr();
        let held = if strongly {
            Held::Owner(owner)
        } else {
            debug_assert!(matches!(owner, IoOwner::Stream(_) | IoOwner::Pipe(_)), "upgrade_idle knows no other owner");
            Held::Idle { weak: PyWeakrefReference::new(owner.as_any().bind(py))?.unbind(), addr }
        };
        let replaced = self.state.with(py, |s| match s.io.get_mut(&fd) {
            Some(h) if h.addr() == addr => Some(std::mem::replace(h, held)),
            _ => None,
        });
        drop(replaced);
        Ok(())
    }

    /// Watches an owner's `fd` (see `register_owner`) for writability too, or no
    /// longer, and for reading all along; `watched` is the owner's record of what
    /// the kernel has, so only a change costs an `epoll_ctl`. Owners watch
    /// writability only while they hold data the kernel refused: a socket watched
    /// for it is woken whenever its send buffer frees space, for a datagram or Unix
    /// socket after every send (loopback UDP ping-pong: 6.6 against 6.1 µs of server
    /// CPU per request; a Unix stream echo woke the loop a second time per request).
    /// The kernel checks readiness as the interest changes, so a socket writable
    /// already is reported at once.
    pub fn watch_writable(&self, py: Python<'_>, fd: RawFd, watched: &GilFlag, on: bool) -> PyResult<()> {
        if watched.get() == on {
            return Ok(());
        }
        let changed = self.state.with(py, |s| match s.registrar.as_mut() {
            Some(reg) => reg.set_owned_interest(fd, true, on),
            None => Ok(()), // closed: nothing is watched any more
        });
        match changed {
            // Not registered (handed to sendfile, or already released): nothing to change.
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(sock::os_error(&e)),
            _ => {}
        }
        watched.set(py, on);
        Ok(())
    }

    /// Raises asyncio's "Event loop is closed" if it is.
    pub fn check_closed(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.with(py, |s| s.closed) {
            return Err(closed_error());
        }
        Ok(())
    }
}

#[pymethods]
impl LoopCore {
    // A callback that refers to its loop (`loop.call_soon(loop.stop)`) makes a cycle
    // through the queues held here, so the collector must see them.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.state.get_for_traverse() else { return Ok(()) };
        for r in s.ready.iter() {
            match r {
                // A queued `call_soon` handle is untracked (`Handle::untrack_queued`):
                // when the loop holds the only reference, the handle is part of the
                // loop as far as reachability goes, so its references are visited
                // here. Held elsewhere too, it is visited as itself (a no-op while
                // untracked: its references then count as external, which can only
                // keep objects alive, never free them early).
                Ready::Handle(h) if Handle::untracked_and_held_only_once(h) => h.get().traverse_contents(&visit)?,
                Ready::Handle(h) => visit.call(h)?,
                Ready::Io { owner, .. } => visit.call(owner.as_any())?,
                Ready::Flush(t) => visit.call(t)?,
            }
        }
        for r in &s.io_attempts {
            if let Ready::Io { owner, .. } = r {
                visit.call(owner.as_any())?;
            }
        }
        for h in s.readers.values().chain(s.writers.values()).chain(s.signal_handlers.values()).chain(s.current_handle.iter()) {
            visit.call(h)?;
        }
        for h in s.io.values() {
            visit.call(h.as_any())?;
        }
        visit.call(&s.task_factory)?;
        for t in &s.deferred_flush {
            visit.call(t)?;
        }
        // Scheduled timers are untracked too: the same rule as queued handles.
        for entry in s.timers.iter() {
            match entry.0.handle_for_traverse() {
                Some(h) if Handle::untracked_and_held_only_once(h) => h.get().traverse_contents(&visit)?,
                h => visit.call(h)?,
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        dispatch::drop_queued(self, py);
        let factory = self.state.with(py, |s| s.task_factory.take());
        drop(factory);
    }

    #[new]
    fn new() -> PyResult<Self> {
        sockio::prefer_heap_for_reads(READ_HEAP_BLOCK);
        let (poller, registrar, waker) = poller::new()?;
        Ok(LoopCore {
            state: GilCell::new(LoopState {
                ready: VecDeque::with_capacity(256),
                spare_handles: Pool::new(),
                spares_trimmed_at: f64::NEG_INFINITY,
                timers: TimerQueue::new(),
                spare_slots: Vec::new(),
                retired_slots: Vec::new(),
                readers: FdMap::default(),
                writers: FdMap::default(),
                io: FdMap::default(),
                sock_lingering: FdMap::default(),
                fileobjs: FdMap::default(),
                deferred_flush: VecDeque::new(),
                io_attempts: Vec::new(),
                registrar: Some(registrar),
                waker: Some(waker),
                ready_fds: Vec::with_capacity(64),
                stopping: false,
                closed: false,
                running: false,
                debug: false,
                task_factory: None,
                thread_id: None,
                slow_callback_duration: 0.1,
                signal_fd: None,
                signal_forward_fd: None,
                signal_handlers: HashMap::new(),
                current_handle: None,
                virtual_now: None,
            }),
            poller: Mutex::new(Some(poller)),
            cancelled_timers: Arc::new(GilCounter::new()),
            iteration: GilCounter::new(),
        })
    }

    // ----- scheduling ---------------------------------------------------------------

    /// Return the time according to the event loop's clock (`time.monotonic()`,
    /// or the virtual clock when enabled).
    fn time(&self, py: Python<'_>) -> f64 {
        self.state.with(py, |s| s.now())
    }

    // `call_soon(callback, *args, context=None)`, `call_soon_threadsafe(callback,
    // *args, context=None)`, `call_later(delay, callback, *args, context=None)` and
    // `call_at(when, callback, *args, context=None)` are raw fast-call methods
    // installed on this class at import (`fastcall`), bodies in `scheduling`.

    // ----- running and stopping --------------------------------------------------

    /// Runs iterations until `stop()`; the Python `run_forever` wraps it.
    fn _run_loop(slf: &Bound<'_, Self>) -> PyResult<()> {
        dispatch::run_iterations(slf, false)
    }

    /// One iteration (asyncio's `_run_once`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        dispatch::run_iterations(slf, true)
    }

    /// Marks the loop running on this thread, or no longer (`run_forever`'s setup
    /// and cleanup).
    fn _set_running(&self, py: Python<'_>, running: bool) {
        dispatch::set_running(self, py, running)
    }

    /// Stop running the event loop after the current iteration.
    fn stop(&self, py: Python<'_>) {
        self.state.with(py, |s| s.stopping = true);
    }

    fn is_running(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.running)
    }

    fn is_closed(&self, py: Python<'_>) -> bool {
        self.state.with(py, |s| s.closed)
    }

    /// Drops every queued callback and closes the poller and the waker's eventfd.
    fn _close_core(&self, py: Python<'_>) {
        dispatch::close(self, py)
    }

    // `get_debug()` is a raw no-argument C method (`fastcall::install`): every C
    // Future and Task asks for it when made.

    fn _set_debug_flag(&self, py: Python<'_>, enabled: bool) {
        self.state.with(py, |s| s.debug = enabled);
    }

    // `create_task()` is a raw C method too (`fastcall::install`): the common
    // task is made there, anything else by the Python side's `_create_task_general`.

    /// The task factory (asyncio's `_task_factory`), kept here where the C
    /// `create_task` reads it, so that setting the attribute directly, as code
    /// written for asyncio's loop may, is seen there too.
    #[getter(_task_factory)]
    fn task_factory_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| s.task_factory.as_ref().map(|f| f.clone_ref(py)))
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, factory: Option<Py<PyAny>>) {
        let old = self.state.with(py, |s| std::mem::replace(&mut s.task_factory, factory.filter(|f| !f.is_none(py))));
        drop(old);
    }

    #[getter]
    fn get_slow_callback_duration(&self, py: Python<'_>) -> f64 {
        self.state.with(py, |s| s.slow_callback_duration)
    }

    #[setter]
    fn set_slow_callback_duration(&self, py: Python<'_>, value: f64) {
        self.state.with(py, |s| s.slow_callback_duration = value);
    }

    /// The handle being run (debug mode only, as in asyncio), else None.
    #[getter]
    fn _current_handle(&self, py: Python<'_>) -> Option<Py<Handle>> {
        self.state.with(py, |s| s.current_handle.as_ref().map(|h| h.clone_ref(py)))
    }

    #[getter]
    fn _thread_id(&self, py: Python<'_>) -> Option<u64> {
        self.state.with(py, |s| s.thread_id)
    }

    /// asyncio's debug-mode guard against calling non-thread-safe methods from a
    /// thread other than the loop's.
    fn _check_thread(&self, py: Python<'_>) -> PyResult<()> {
        scheduling::check_thread(self, py)
    }

    // ----- file descriptor callbacks ----------------------------------------------

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        fd_callbacks::add(slf, &fd, callback, args, fd_callbacks::Direction::Read)
    }

    fn remove_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        fd_callbacks::remove(slf, &fd, fd_callbacks::Direction::Read)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        fd_callbacks::add(slf, &fd, callback, args, fd_callbacks::Direction::Write)
    }

    fn remove_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        fd_callbacks::remove(slf, &fd, fd_callbacks::Direction::Write)
    }

    // ----- low-level socket I/O -----
    // Each returns a `SockOp`: a coroutine as far as asyncio is concerned (await it,
    // or hand it to `create_task`), running nothing until its first step (see `sock`).

    // `sock_recv(sock, n)` and `sock_sendall(sock, data)`, one of each per request
    // of a `sock_*` server, are raw C methods installed at import (`fastcall`).

    fn sock_recv_into(slf: &Bound<'_, Self>, sock: Bound<'_, PyAny>, buf: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
        sock::recv_into(slf, sock, buf)
    }

    fn sock_recvfrom(slf: &Bound<'_, Self>, sock: Bound<'_, PyAny>, bufsize: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
        sock::recvfrom(slf, sock, bufsize)
    }

    #[pyo3(signature = (sock, buf, nbytes=None))]
    fn sock_recvfrom_into(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        buf: Bound<'_, PyAny>,
        nbytes: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<SockOp>> {
        let nbytes = nbytes.unwrap_or_else(|| 0u8.into_pyobject(slf.py()).expect("small int").into_any());
        sock::recvfrom_into(slf, sock, buf, nbytes)
    }

    fn sock_sendto(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        data: Bound<'_, PyAny>,
        address: Bound<'_, PyAny>,
    ) -> PyResult<Py<SockOp>> {
        sock::sendto(slf, sock, data, address)
    }

    fn sock_connect(slf: &Bound<'_, Self>, sock: Bound<'_, PyAny>, address: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
        sock::connect(slf, sock, address)
    }

    fn sock_accept(slf: &Bound<'_, Self>, sock: Bound<'_, PyAny>) -> PyResult<Py<SockOp>> {
        sock::accept(slf, sock)
    }

    /// `offset`/`count` are kept as given: asyncio validates them at the first step,
    /// with messages that show the value (`offset=None` is a TypeError, not 0).
    #[pyo3(signature = (sock, file, offset=SockArg::Default, count=None, *, fallback=SockArg::Default))]
    fn sock_sendfile(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        file: Bound<'_, PyAny>,
        offset: SockArg<'_>,
        count: Option<Bound<'_, PyAny>>,
        fallback: SockArg<'_>,
    ) -> PyResult<Py<SockOp>> {
        let py = slf.py();
        let offset = offset.or(|| 0u8.into_pyobject(py).expect("small int").into_any());
        let count = count.unwrap_or_else(|| py.None().into_bound(py));
        let fallback = fallback.or(|| pyo3::types::PyBool::new(py, true).to_owned().into_any());
        sock::sendfile(slf, sock, file, offset, count, fallback)
    }

    // ----- signals ------------------------------------------------------------------

    /// Watches the read end of the signal wakeup socket (`None`: stop).
    fn _watch_signal_fd(&self, py: Python<'_>, fd: Option<RawFd>) -> PyResult<()> {
        signals::watch_fd(self, py, fd)
    }

    /// The handle queued whenever `sig` arrives (validation is in `_signals.py`).
    #[pyo3(signature = (sig, callback, *args))]
    fn _set_signal_handler(&self, py: Python<'_>, sig: i32, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        signals::set_handler(self, py, sig, callback, args)
    }

    /// Takes what is waiting on the signal socket now (the loop may stop without
    /// having polled it, when it was busy): handlers queued, bytes forwarded.
    fn _flush_signal_fd(&self, py: Python<'_>) {
        self.state.with(py, |s| {
            if let Some(fd) = s.signal_fd {
                signals::queue_arrived(s, py, fd);
            }
        });
    }

    /// Also write arriving signal numbers to `fd` (the displaced wakeup fd; `None`: stop).
    fn _forward_signals_to(&self, py: Python<'_>, fd: Option<RawFd>) {
        signals::forward_to(self, py, fd)
    }

    fn _remove_signal_handler(&self, py: Python<'_>, sig: i32) -> bool {
        signals::remove_handler(self, py, sig)
    }

    // ----- virtual time (test support) --------------------------------------------

    /// Switches the loop to a virtual clock starting at `start`: `time()` moves only
    /// by `_advance_time`, polls never sleep, and `_after_virtual_iteration()` is
    /// called at the end of each iteration. For tests with fake time (asyncio's
    /// `test_utils.TestLoop` contract).
    #[pyo3(signature = (start=0.0))]
    fn _enable_virtual_time(&self, py: Python<'_>, start: f64) {
        self.state.with(py, |s| s.virtual_now = Some(start));
    }

    /// Moves the virtual clock forward by `dt` seconds (timers now due fire at the
    /// next iteration).
    fn _advance_time(&self, py: Python<'_>, dt: f64) -> PyResult<()> {
        self.state.with(py, |s| match s.virtual_now.as_mut() {
            Some(t) => {
                *t += dt;
                Ok(())
            }
            None => Err(pyo3::exceptions::PyRuntimeError::new_err("virtual time is not enabled")),
        })
    }

    /// Number of callbacks in the ready queue (the counterpart of
    /// `len(asyncio_loop._ready)`, for tests).
    fn _ready_count(&self, py: Python<'_>) -> usize {
        self.state.with(py, |s| s.ready.len())
    }

    /// Number of timers in the heap, cancelled ones not yet purged included (the
    /// counterpart of `len(asyncio_loop._scheduled)`, for leak tests).
    fn _timer_count(&self, py: Python<'_>) -> usize {
        self.state.with(py, |s| s.timers.len())
    }

    /// Number of fds the poller watches (for leak tests).
    fn _watched_fd_count(&self, py: Python<'_>) -> usize {
        self.state.with(py, |s| s.registrar.as_ref().map_or(0, |r| r.watched_count()))
    }
}

/// An optional argument whose default is not `None` (an explicit `None` must reach
/// the validation as `None`).
pub enum SockArg<'py> {
    Default,
    Given(Bound<'py, PyAny>),
}

impl<'py> SockArg<'py> {
    fn or(self, default: impl FnOnce() -> Bound<'py, PyAny>) -> Bound<'py, PyAny> {
        match self {
            SockArg::Given(v) => v,
            SockArg::Default => default(),
        }
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for SockArg<'py> {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(SockArg::Given(obj.to_owned()))
    }
}
