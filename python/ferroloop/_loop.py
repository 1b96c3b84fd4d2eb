"""``ferroloop.Loop``: the public event loop class.

The ready queue, timers, polling, dispatch and fd callbacks are Rust
(``_ferroloop.LoopCore``); this class adds what is Python by nature: the lifecycle
around the Rust run loop (running-loop registration, async generator hooks,
coroutine origin tracking), futures and tasks, and the concept mixins (exception
handler, executor and DNS, signals, stream and datagram endpoints, pipes,
subprocesses). It subclasses
``asyncio.AbstractEventLoop`` so ``isinstance`` checks hold, and nothing of
``BaseEventLoop``."""

import asyncio
import inspect
import sys
import time
import warnings
import weakref
from asyncio import base_events, coroutines, events, futures, tasks

from ._errors import ExceptionHandlerMixin
from ._executor import ExecutorMixin
from ._ferroloop import LoopCore
from ._network import NetworkMixin
from ._pipes import PipesMixin
from ._signals import SignalsMixin
from ._subprocess import SubprocessMixin
from ._udp import DatagramMixin

# asyncio's stack depth for coroutine origin tracking in debug mode.
_DEBUG_STACK_DEPTH = 10

# How this asyncio's create_task hands keywords on, read from the stdlib rather
# than the version number, since 3.13's patch releases differ: `(coro, *, name=None,
# context=None)` sets the name after the task factory and gives it `context` only
# (3.10 to 3.13.2); 3.13.4 adds `**kwargs` passed on as well; 3.14's `(coro,
# **kwargs)` gives every keyword, name included, to the Task or the factory.
_STDLIB_CREATE_TASK = inspect.signature(base_events.BaseEventLoop.create_task).parameters
_CREATE_TASK_PASSES_EVERY_KEYWORD = 'name' not in _STDLIB_CREATE_TASK
_CREATE_TASK_TAKES_OTHER_KEYWORDS = any(p.kind is p.VAR_KEYWORD for p in _STDLIB_CREATE_TASK.values())


def _new_task(loop, coro, kwargs):
    task = tasks.Task(coro, loop=loop, **kwargs)
    if task._source_traceback:
        del task._source_traceback[-2:]  # this frame and create_task's
    return task


def _is_debug_mode():
    # asyncio's own rule (dev mode or PYTHONASYNCIODEBUG), called through asyncio so
    # that code overriding it (asyncio.run's tests patch it) decides for ferroloop too.
    is_debug_mode = getattr(coroutines, '_is_debug_mode', None)
    if is_debug_mode is not None:
        return is_debug_mode()
    return sys.flags.dev_mode or (not sys.flags.ignore_environment
                                  and bool(__import__('os').environ.get('PYTHONASYNCIODEBUG')))


def _run_until_complete_cb(fut):
    # SystemExit and KeyboardInterrupt already propagate out of run_forever();
    # stopping here would swallow them (asyncio's rule, bpo-?? "run_until_complete").
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return
    futures._get_loop(fut).stop()


class Loop(LoopCore, NetworkMixin, DatagramMixin, PipesMixin, SubprocessMixin, SignalsMixin, ExecutorMixin, ExceptionHandlerMixin, asyncio.AbstractEventLoop):
    """An asyncio event loop whose core runs in Rust."""

    __module__ = "ferroloop"

    _clock_resolution = time.get_clock_info('monotonic').resolution

    def __init__(self):
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._origin_tracking = False
        self._saved_origin_depth = None
        self._old_agen_hooks = None  # the application's, while run_forever runs
        self.set_debug(_is_debug_mode())

    def __repr__(self):
        return (f'<{type(self).__name__} running={self.is_running()} '
                f'closed={self.is_closed()} debug={self.get_debug()}>')

    def __del__(self, _warn=warnings.warn):
        try:
            closed = self.is_closed()
        except Exception:
            return
        if not closed:
            _warn(f'unclosed event loop {self!r}', ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # ----- lifecycle ------------------------------------------------------------------

    def _check_closed(self):
        if self.is_closed():
            raise RuntimeError('Event loop is closed')

    def _check_running(self):
        if self.is_running():
            raise RuntimeError('This event loop is already running')
        if events._get_running_loop() is not None:
            raise RuntimeError('Cannot run the event loop while another loop is running')

    def run_forever(self):
        """Run until stop() is called."""
        self._run_forever_setup()
        try:
            self._run_loop()
        finally:
            self._run_forever_cleanup()

    def _run_forever_setup(self):
        """What ``run_forever`` does before its first iteration. With
        ``_run_forever_cleanup`` and ``_run_once`` (one iteration), asyncio 3.13's
        hooks for code that drives the iterations itself (a GUI toolkit's loop)."""
        self._check_closed()
        self._check_running()
        self._set_origin_tracking(self.get_debug())
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                   finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._install_wakeup_fd()
        except BaseException:
            self._run_forever_cleanup()
            raise
        self._set_running(True)

    def _run_forever_cleanup(self):
        """What ``run_forever`` does after its last iteration."""
        self._set_running(False)
        self._restore_wakeup_fd()
        events._set_running_loop(None)
        self._set_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_until_complete(self, future):
        """Run until ``future`` (a future or coroutine) is done; return its result."""
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # The task is ours; an exception it raises is reported by the caller.
            future._log_destroy_pending = False
        future.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()  # mark it retrieved: the caller sees it raised
            raise
        finally:
            future.remove_done_callback(_run_until_complete_cb)
        if not future.done():
            raise RuntimeError('Event loop stopped before Future completed.')
        return future.result()

    def close(self):
        """Close the loop: drop pending callbacks, release every fd the loop owns,
        shut the default executor down without waiting. Idempotent."""
        if self.is_running():
            raise RuntimeError('Cannot close a running event loop')
        if self.is_closed():
            return
        if self.get_debug():
            base_events.logger.debug('Close %r', self)
        self._remove_all_signal_handlers()
        self._close_wakeup_socks()
        self._close_core()
        self._shutdown_executor_nowait()

    def set_debug(self, enabled):
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_origin_tracking, enabled)

    # asyncio's attribute, read by the stdlib methods ferroloop reuses
    # (`subprocess_exec`); assigning it only sets the flag, as there.
    _debug = property(LoopCore.get_debug, lambda self, enabled: self._set_debug_flag(bool(enabled)))

    # asyncio's attribute, read by code written against it (test fixtures that
    # check `loop._closed` before closing; uvloop's loop has it too).
    _closed = property(LoopCore.is_closed)

    def _set_origin_tracking(self, enabled):
        if bool(enabled) == self._origin_tracking:
            return
        if enabled:
            self._saved_origin_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._saved_origin_depth)
        self._origin_tracking = bool(enabled)

    def _after_virtual_iteration(self):
        """Called by the core at the end of each iteration while virtual time is on
        (``_enable_virtual_time()``, test support): a hook for test loops that
        advance the clock as timers are scheduled. Nothing by default."""

    def _check_callback(self, callback, method):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError(f'coroutines cannot be used with {method}()')
        if not callable(callback):
            raise TypeError(f'a callable object was expected by {method}(), got {callback!r}')

    # ----- futures and tasks ----------------------------------------------------------

    if _CREATE_TASK_PASSES_EVERY_KEYWORD:
        def create_task(self, coro, **kwargs):
            """Schedule a coroutine as a Task (or through the task factory). Every
            keyword, ``name`` and ``context`` included, goes to the Task or the
            factory as given."""
            self._check_closed()
            if self._task_factory is not None:
                return self._task_factory(self, coro, **kwargs)
            return _new_task(self, coro, kwargs)
    else:
        def create_task(self, coro, *, name=None, context=None, **kwargs):
            """Schedule a coroutine as a Task (or through the task factory, which
            gets ``context`` only when there is one, and the name afterwards).
            Other keywords (3.13.4's) go to the Task or the factory."""
            if kwargs and not _CREATE_TASK_TAKES_OTHER_KEYWORDS:
                raise TypeError(f'Loop.create_task() got an unexpected keyword argument {next(iter(kwargs))!r}')
            self._check_closed()
            if context is not None:  # (3.10's Task has no context parameter at all)
                kwargs['context'] = context
            if self._task_factory is None:
                kwargs['name'] = name
                return _new_task(self, coro, kwargs)
            task = self._task_factory(self, coro, **kwargs)
            if name is not None:
                set_task_name = getattr(tasks, '_set_task_name', None)  # 3.11: tolerant
                if set_task_name is not None:
                    set_task_name(task, name)
                else:
                    task.set_name(name)
            return task

    # Every task starts at LoopCore's C create_task (gather, TaskGroup, ...), which
    # makes `Task(coro, loop=self, name=name)` itself when there is no factory, no
    # context, no other keyword, and debug mode is off; for everything else it calls
    # this method, whose errors name create_task.
    _create_task_general = create_task
    del create_task

    def set_task_factory(self, factory):
        if factory is not None and not callable(factory):
            raise TypeError('task factory must be a callable or None')
        self._task_factory = factory

    def get_task_factory(self):
        return self._task_factory

    # ----- asynchronous generators ------------------------------------------------

    # The stdlib's own: code silences "never awaited" for the coroutine of a
    # shutdown_asyncgens() a closed loop refused by its name (pytest-asyncio).
    _asyncgen_firstiter_hook = base_events.BaseEventLoop._asyncgen_firstiter_hook
    _asyncgen_finalizer_hook = base_events.BaseEventLoop._asyncgen_finalizer_hook
    shutdown_asyncgens = base_events.BaseEventLoop.shutdown_asyncgens
