"""ferroloop: asyncio's event loop, rebuilt in Rust.

    import ferroloop
    ferroloop.run(main())                                       # like asyncio.run
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)  # Python 3.12+
    ferroloop.install()                                         # policy, older code

``python -m ferroloop script.py`` runs an unmodified asyncio script on ferroloop.
"""

import asyncio
import sys
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


class EventLoopPolicy(_BasePolicy):
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
