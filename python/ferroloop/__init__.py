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
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


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
