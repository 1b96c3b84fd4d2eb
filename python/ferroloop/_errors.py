"""The loop's exception handler: ``set_exception_handler``, ``call_exception_handler``
and the default handler, which logs with the same layout as asyncio's so log-based
tooling and tests read ferroloop's reports unchanged."""

import sys
import traceback

from asyncio import base_events

# 3.12+ (gh-96704): a custom handler runs in the context of the task, future or
# handle the report is about, so it sees the context variables the failing code set.
_HANDLER_IN_ITS_CONTEXT = sys.version_info >= (3, 12)

_TRACEBACK_TITLES = {
    'source_traceback': 'Object created at (most recent call last):\n',
    'handle_traceback': 'Handle created at (most recent call last):\n',
}


def _logger():
    # Looked up at call time where asyncio's own loop finds its logger, so code
    # that patches ``asyncio.base_events.logger`` to capture the loop's reports
    # (test suites do) captures ferroloop's too.
    return base_events.logger


class ExceptionHandlerMixin:
    _exception_handler = None

    def get_exception_handler(self):
        """Return the exception handler, or None if the default one is in use."""
        return self._exception_handler

    def set_exception_handler(self, handler):
        """Set ``handler(loop, context)`` as the loop's exception handler (None: default)."""
        if handler is not None and not callable(handler):
            raise TypeError(f'A callable object or None is expected, got {handler!r}')
        self._exception_handler = handler

    def default_exception_handler(self, context):
        """Log ``context`` at ERROR level: the message, then every other key sorted,
        tracebacks rendered, and the exception's traceback via ``exc_info``."""
        message = context.get('message') or 'Unhandled exception in event loop'
        exception = context.get('exception')
        exc_info = (type(exception), exception, exception.__traceback__) if exception is not None else False
        current = self._current_handle
        if 'source_traceback' not in context and current is not None and current._source_traceback:
            context['handle_traceback'] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in ('message', 'exception'):
                continue
            value = context[key]
            if key in _TRACEBACK_TITLES:
                value = _TRACEBACK_TITLES[key] + ''.join(traceback.format_list(value)).rstrip()
            else:
                value = repr(value)
            lines.append(f'{key}: {value}')
        _logger().error('\n'.join(lines), exc_info=exc_info)

    def call_exception_handler(self, context):
        """Hand ``context`` to the custom handler, or to the default one. A failing
        handler never escapes: its error is logged, except SystemExit and
        KeyboardInterrupt, which propagate as in asyncio."""
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                _logger().error('Exception in default exception handler', exc_info=True)
            return
        try:
            ctx = _context_of(context) if _HANDLER_IN_ITS_CONTEXT else None
            if ctx is not None:
                ctx.run(handler, self, context)
            else:
                handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler({
                    'message': 'Unhandled error in exception handler',
                    'exception': exc,
                    'context': context,
                })
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                _logger().error('Exception in default exception handler while handling an '
                             'unexpected error in custom exception handler', exc_info=True)


def _context_of(context):
    """The ``contextvars.Context`` of what a report is about: its task, else its
    future (which may be a task), else its handle; None if it has none."""
    thing = context.get('task')
    if thing is None:
        thing = context.get('future')
    if thing is None:
        thing = context.get('handle')
    ctx = thing.get_context() if thing is not None and hasattr(thing, 'get_context') else None
    return ctx if ctx is not None and hasattr(ctx, 'run') else None
