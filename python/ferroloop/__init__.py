"""ferroloop: asyncio's event loop, rebuilt in Rust.

    import ferroloop
    ferroloop.run(main())                                       # like asyncio.run
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)  # Python 3.12+
    ferroloop.install()                                         # policy, older code

``python -m ferroloop script.py`` runs an unmodified asyncio script on ferroloop.
"""

import asyncio
import sys
import threading
import warnings
from asyncio import events

from ._loop import Loop

__version__ = '0.1.0'
__all__ = ('Loop', 'new_event_loop', 'run', 'install', 'EventLoopPolicy', '__version__')


def new_event_loop():
    """Return a new ferroloop event loop."""
    return Loop()


def run(main, *, debug=None, **run_kwargs):
    """Run coroutine ``main`` on a new ferroloop loop, like ``asyncio.run``."""
    if events._get_running_loop() is not None:
        # asyncio.run's check and message, before anything is created.
        raise RuntimeError('asyncio.run() cannot be called from a running event loop')
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=new_event_loop, **run_kwargs)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    return _run_without_runner(main, debug)


def _run_without_runner(main, debug):
    """Python 3.10 has no asyncio.Runner: the same steps by hand (no SIGINT handler
    that cancels the main task: Ctrl-C raises KeyboardInterrupt, as asyncio.run does
    on 3.10)."""
    if events._get_running_loop() is not None:
        raise RuntimeError('asyncio.run() cannot be called from a running event loop')
    if not asyncio.iscoroutine(main):
        raise ValueError(f'a coroutine was expected, got {main!r}')
    loop = new_event_loop()
    try:
        events.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            for task in pending:
                if not task.cancelled() and task.exception() is not None:
                    loop.call_exception_handler({
                        'message': 'unhandled exception during asyncio.run() shutdown',
                        'exception': task.exception(),
                        'task': task,
                    })
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            events.set_event_loop(None)
            loop.close()


_BasePolicy = getattr(events, 'BaseDefaultEventLoopPolicy', None) or events._BaseDefaultEventLoopPolicy


class _ChildWatcherPolicyMixin:
    """The child-watcher half of asyncio's Unix default policy (3.8 to 3.13):
    ``asyncio.get_child_watcher()``/``set_child_watcher()`` store the watcher, and
    ``set_event_loop()`` in the main thread attaches it to the new loop. Code (and
    test suites) that configure a watcher must not fail half-way on ferroloop's
    policy; ferroloop's own loops do not need the watcher."""

    _watcher = None

    def _init_watcher(self):
        from asyncio import unix_events
        with events._lock:
            if self._watcher is None:
                can_use_pidfd = getattr(unix_events, 'can_use_pidfd', None)  # 3.12+
                if can_use_pidfd is not None and can_use_pidfd():
                    self._watcher = unix_events.PidfdChildWatcher()
                else:
                    self._watcher = unix_events.ThreadedChildWatcher()

    def set_event_loop(self, loop):
        super().set_event_loop(loop)
        if self._watcher is not None and threading.current_thread() is threading.main_thread():
            self._watcher.attach_loop(loop)

    def get_child_watcher(self):
        if self._watcher is None:
            self._init_watcher()
        if sys.version_info >= (3, 12):
            warnings._deprecated('get_child_watcher',
                                 '{name!r} is deprecated as of Python 3.12 and will be '
                                 'removed in Python {remove}.', remove=(3, 14))
        return self._watcher

    def set_child_watcher(self, watcher):
        from asyncio import unix_events
        assert watcher is None or isinstance(watcher, unix_events.AbstractChildWatcher)
        if self._watcher is not None:
            self._watcher.close()
        self._watcher = watcher
        if sys.version_info >= (3, 12):
            warnings._deprecated('set_child_watcher',
                                 '{name!r} is deprecated as of Python 3.12 and will be '
                                 'removed in Python {remove}.', remove=(3, 14))


# Where asyncio's default policy has child watchers (Unix, before 3.14).
_HAS_CHILD_WATCHERS = sys.platform != 'win32' and sys.version_info < (3, 14)
_PolicyBases = ((_ChildWatcherPolicyMixin, _BasePolicy) if _HAS_CHILD_WATCHERS
                else (_BasePolicy,))


class EventLoopPolicy(*_PolicyBases):
    """An event loop policy whose loops are ferroloop loops."""

    def _loop_factory(self):
        return new_event_loop()

    def __repr__(self):
        return f'<{type(self).__module__}.{type(self).__qualname__}>'


def _set_policy(policy):
    # 3.14 deprecates the public setter; the private one does the same without warning.
    setter = getattr(events, '_set_event_loop_policy', None) or asyncio.set_event_loop_policy
    setter(policy)


def install():
    """Make ferroloop the loop of every ``asyncio.run``/``new_event_loop`` (policy)."""
    if sys.version_info >= (3, 12):
        warnings.warn('ferroloop.install() is deprecated in favor of ferroloop.run() '
                      'starting with Python 3.12.', DeprecationWarning, stacklevel=2)
    _set_policy(EventLoopPolicy())
