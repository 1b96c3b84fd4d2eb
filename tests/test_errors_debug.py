"""The exception handler (context keys and the default handler's log text), debug
mode (set_debug, PYTHONASYNCIODEBUG, -X dev, slow callbacks, source tracebacks,
the thread check).

Log texts are compared by running the same scenario on both loops and comparing
what the ``asyncio`` logger received (memory addresses masked)."""

import asyncio
import contextvars
import logging
import re
import sys
import threading
import traceback

import pytest

from conftest import LOOP_KINDS, loop_factory_source, new_loop, run_python


def boom(*args):
    raise ValueError('boom')


# From 3.13 asyncio shows a callback's arguments only in debug mode (they may hold
# secrets): "boom() at ..." instead of "boom(1) at ...".
ARGS_HIDDEN = sys.version_info >= (3, 13)


def shown(args):
    """How a callback's argument list appears outside debug mode."""
    return '()' if ARGS_HIDDEN else args


_INTERNAL_LOCATION = re.compile(r'/\S*/(asyncio|ferroloop)/\w+\.py:\d+')
_LOOP_METHOD = re.compile(r'\b(BaseEventLoop|Loop)\.')


def mask(text):
    """Mask what legitimately differs: addresses, the locations of the loops' own
    internal callbacks, and the class name in bound loop methods."""
    text = re.sub(r'0x[0-9a-f]+', '0x?', text)
    text = _INTERNAL_LOCATION.sub('<internal>', text)
    return _LOOP_METHOD.sub('LOOP.', text)


def capture_logs(caplog, kind, scenario):
    """Run ``scenario(loop)`` on a new loop of ``kind``; return the asyncio log
    records as (level, message, exc_info type and str) tuples."""
    caplog.clear()
    lp = new_loop(kind)
    try:
        with caplog.at_level(logging.DEBUG, logger='asyncio'):
            scenario(lp)
    finally:
        lp.close()
    out = []
    for r in caplog.records:
        if r.name != 'asyncio' or r.getMessage().startswith(('Using selector', 'Close <')):
            continue
        exc = (r.exc_info[0].__name__, str(r.exc_info[1])) if r.exc_info else None
        out.append((r.levelname, mask(r.getMessage()), exc))
    return out


def same_logs(caplog, scenario):
    """Run the scenario on both loops; assert the logs match; return them."""
    results = {kind: capture_logs(caplog, kind, scenario) for kind in LOOP_KINDS}
    assert results['ferroloop'] == results['asyncio']
    return results['asyncio']


def run_briefly(lp):
    lp.call_soon(lp.stop)
    lp.run_forever()


# ----- exception in callback --------------------------------------------------------

def test_exception_in_callback_context(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append((lp, ctx)))
    h = loop.call_soon(boom, 1, 'x')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(errors) == 1
    lp, ctx = errors[0]
    assert lp is loop
    assert set(ctx) == {'message', 'exception', 'handle'}
    assert ctx['message'] == 'Exception in callback ' + repr(h)[len('<Handle '):-1]
    assert type(ctx['exception']) is ValueError and str(ctx['exception']) == 'boom'
    assert ctx['handle'] is h
    # The traceback reaches the callback's frame.
    frames = traceback.extract_tb(ctx['exception'].__traceback__)
    assert frames[-1].name == 'boom'


def test_exception_in_timer_and_fd_callback_context(loop):
    import socket
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    a, b = socket.socketpair()
    try:
        t = loop.call_later(0, boom, 'timer')
        loop.add_writer(b, boom, 'writer')
        loop.call_later(0.001, loop.stop)
        loop.run_forever()
        loop.remove_writer(b)
    finally:
        a.close()
        b.close()
    messages = sorted(ctx['message'] for ctx in errors[:2])
    timer_message = 'Exception in callback boom' + shown("('timer')") + ' at '
    assert messages[0].startswith(timer_message) or messages[1].startswith(timer_message)
    assert any(ctx['handle'] is t for ctx in errors)
    assert all(type(ctx['exception']) is ValueError for ctx in errors)
    assert any('boom' + shown("('writer')") in ctx['message'] for ctx in errors)


def _context_seen_by_handler(kind, source):
    """What a context variable reads inside the custom exception handler when a
    callback or task that set it fails (3.12+: the failing code's value)."""
    name = contextvars.ContextVar('name', default='outside')
    seen = []

    def callback():
        name.set(source)
        1 / 0

    async def failing_task():
        name.set(source)
        1 / 0

    lp = new_loop(kind)
    try:
        lp.set_exception_handler(lambda l, ctx: seen.append(name.get()))
        if source == 'task':
            lp.create_task(failing_task())  # dropped: reported as never retrieved
        elif source == 'timer':
            lp.call_later(0, callback)
        else:
            lp.call_soon(callback)
        lp.run_until_complete(asyncio.sleep(0.001))
    finally:
        lp.close()
    return seen


@pytest.mark.parametrize('source', ['callback', 'timer', 'task'])
def test_custom_handler_runs_in_the_context_asyncio_uses(source):
    expected = _context_seen_by_handler('asyncio', source)
    assert len(expected) == 1
    assert _context_seen_by_handler('ferroloop', source) == expected


def test_default_handler_log_for_callback_error(caplog):
    def scenario(lp):
        lp.call_soon(boom, 1)
        run_briefly(lp)

    logs = same_logs(caplog, scenario)
    assert len(logs) == 1
    level, message, exc = logs[0]
    assert level == 'ERROR'
    assert message.startswith(f'Exception in callback boom{shown("(1)")} at ')
    assert f'\nhandle: <Handle boom{shown("(1)")} at ' in message
    assert exc == ('ValueError', 'boom')


def test_default_handler_log_in_debug_mode_has_source_traceback(caplog):
    def scenario(lp):
        lp.set_debug(True)
        lp.slow_callback_duration = 3600
        lp.call_soon(boom)
        run_briefly(lp)

    logs = same_logs(caplog, scenario)
    assert len(logs) == 1
    message = logs[0][1]
    assert '\nsource_traceback: Object created at (most recent call last):\n' in message
    assert f'File "{__file__}"' in message and 'lp.call_soon(boom)' in message


def test_default_handler_handle_traceback_of_current_handle(caplog):
    def scenario(lp):
        lp.set_debug(True)
        lp.slow_callback_duration = 3600
        lp.call_soon(lambda: lp.call_exception_handler({'message': 'reported inside'}))
        run_briefly(lp)

    logs = same_logs(caplog, scenario)
    assert len(logs) == 1
    level, message, exc = logs[0]
    assert message.startswith('reported inside\nhandle_traceback: Handle created at (most recent call last):\n')
    assert exc is None


def test_default_handler_without_message_and_extra_keys(caplog):
    def scenario(lp):
        lp.call_exception_handler({'zeta': 1, 'alpha': 'a', 'exception': KeyError('k')})
        lp.call_exception_handler({})

    logs = same_logs(caplog, scenario)
    assert logs == [
        ('ERROR', "Unhandled exception in event loop\nalpha: 'a'\nzeta: 1", ('KeyError', "'k'")),
        ('ERROR', 'Unhandled exception in event loop', None),
    ]


def test_task_exception_never_retrieved_log(caplog):
    def scenario(lp):
        async def fails():
            raise RuntimeError('never retrieved')

        task = lp.create_task(fails(), name='failing')
        run_briefly(lp)
        run_briefly(lp)
        del task
        import gc
        gc.collect()

    logs = same_logs(caplog, scenario)
    assert len(logs) == 1
    assert logs[0][1].startswith('Task exception was never retrieved\nfuture: <Task finished name=\'failing\'')
    assert logs[0][2] == ('RuntimeError', 'never retrieved')


# ----- exception handler ---------------------------------------------------------------

def test_get_set_exception_handler(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


@pytest.mark.parametrize('bad', [1, 'handler'])
def test_set_exception_handler_type_error(loop, bad):
    with pytest.raises(TypeError) as exc_info:
        loop.set_exception_handler(bad)
    assert str(exc_info.value) == f'A callable object or None is expected, got {bad!r}'


def test_error_in_custom_handler_is_logged(caplog):
    def scenario(lp):
        def bad_handler(loop, ctx):
            raise KeyError('in handler')

        lp.set_exception_handler(bad_handler)
        lp.call_soon(boom)
        run_briefly(lp)

    logs = same_logs(caplog, scenario)
    assert len(logs) == 1
    level, message, exc = logs[0]
    assert message.startswith("Unhandled error in exception handler\ncontext: {'message': 'Exception in callback boom()")
    assert exc == ('KeyError', "'in handler'")


def test_keyboard_interrupt_in_handler_propagates(loop):
    def handler(lp, ctx):
        raise KeyboardInterrupt

    loop.set_exception_handler(handler)
    loop.call_soon(boom)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()


def test_exception_handler_runs_in_order_with_callbacks(loop):
    out = []
    loop.set_exception_handler(lambda lp, ctx: out.append('handler'))
    loop.call_soon(out.append, 1)
    loop.call_soon(boom)
    loop.call_soon(out.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1, 'handler', 2]


def test_base_exception_in_callback_reported(loop):
    class MyBase(BaseException):
        pass

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def raise_base():
        raise MyBase('base')

    loop.call_soon(raise_base)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [type(c['exception']) for c in errors] == [MyBase]


# ----- debug mode -----------------------------------------------------------------

def test_set_debug_get_debug(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False
    loop.set_debug(1)
    assert loop.get_debug() == 1 and loop.get_debug()


def test_debug_enables_coroutine_origin_tracking_while_running(loop):
    loop.set_debug(True)
    before = sys.get_coroutine_origin_tracking_depth()

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    assert loop.run_until_complete(main()) == 10
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_set_debug_while_running(loop):
    depths = []

    async def main():
        depths.append(sys.get_coroutine_origin_tracking_depth())
        loop.set_debug(True)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        depths.append(sys.get_coroutine_origin_tracking_depth())

    loop.run_until_complete(main())
    assert depths == [0, 10]
    assert sys.get_coroutine_origin_tracking_depth() == 0


@pytest.mark.parametrize('kind', LOOP_KINDS)
@pytest.mark.parametrize('how', ['PYTHONASYNCIODEBUG', '-X dev', 'none', '-E'])
def test_debug_from_environment(kind, how):
    code = ('import asyncio, ferroloop\n'
            f'lp = {loop_factory_source(kind)}\n'
            'print(lp.get_debug())\n'
            'lp.close()\n'
            'async def main(): return asyncio.get_running_loop().get_debug()\n'
            + ('print(ferroloop.run(main()))\n' if kind == 'ferroloop' else 'print(asyncio.run(main()))\n'))
    args = ['-c', code]
    env = None
    if how == 'PYTHONASYNCIODEBUG':
        env = {'PYTHONASYNCIODEBUG': '1'}
    elif how == '-X dev':
        args = ['-X', 'dev', *args]
    elif how == '-E':
        env = {'PYTHONASYNCIODEBUG': '1'}
        args = ['-E', *args]
    proc = run_python(args, env=env)
    assert proc.returncode == 0, proc.stderr
    expected = 'True' if how in ('PYTHONASYNCIODEBUG', '-X dev') else 'False'
    assert proc.stdout.split() == [expected, expected]


def test_slow_callback_names_the_task(caplog):
    def scenario(lp):
        lp.set_debug(True)
        lp.slow_callback_duration = 0  # every callback counts as slow: no timing

        async def work():
            pass

        lp.run_until_complete(lp.create_task(work(), name='slowpoke'))

    logs = same_logs_normalised(caplog, scenario)
    steps = [m for lvl, m, _ in logs if m.startswith('Executing <Task')]
    assert steps and all(lvl == 'WARNING' for lvl, m, _ in logs if m.startswith('Executing'))
    assert re.fullmatch(r"Executing <Task (pending|finished) name='slowpoke' coro=<.*> took N seconds", steps[0],
                        re.S)


def same_logs_normalised(caplog, scenario):
    results = {}
    for kind in LOOP_KINDS:
        logs = capture_logs(caplog, kind, scenario)
        results[kind] = [(lvl, re.sub(r'took \d+\.\d{3} seconds', 'took N seconds', m), e)
                         for lvl, m, e in logs]
    assert results['ferroloop'] == results['asyncio']
    return results['asyncio']


def test_slow_plain_callback_log(caplog):
    def scenario(lp):
        lp.set_debug(True)
        lp.slow_callback_duration = 0
        lp.call_soon(sorted, [1])
        run_briefly(lp)

    logs = same_logs_normalised(caplog, scenario)
    assert logs[0][:2] == ('WARNING', f'Executing <Handle sorted([1]) created at {__file__}:'
                           f'{test_slow_plain_callback_log.__code__.co_firstlineno + 4}> took N seconds')


def test_slow_callback_log_after_its_error_report(caplog):
    def scenario(lp):
        lp.set_debug(True)
        lp.slow_callback_duration = 0
        lp.call_soon(boom)
        run_briefly(lp)

    logs = same_logs_normalised(caplog, scenario)
    assert [lvl for lvl, _, _ in logs][:2] == ['ERROR', 'WARNING']


def test_slow_callback_duration_property(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 2.5
    assert loop.slow_callback_duration == 2.5


@pytest.mark.parametrize('method', ['call_soon', 'call_later', 'call_at'])
def test_debug_thread_check(loop, method):
    loop.set_debug(True)
    errors = []
    call = getattr(loop, method)
    args = (0, int) if method != 'call_soon' else (int,)

    def other_thread():
        try:
            call(*args)
        except RuntimeError as exc:
            errors.append(str(exc))
        # call_soon_threadsafe is the allowed way in.
        loop.call_soon_threadsafe(loop.stop)

    th = threading.Thread(target=other_thread)
    loop.call_soon(th.start)
    loop.call_later(10, loop.stop)
    loop.run_forever()
    th.join()
    assert errors == ['Non-thread-safe operation invoked on an event loop other than the current one']


def test_no_thread_check_without_debug_or_when_not_running(loop):
    results = []

    def other_thread():
        results.append(loop.call_soon(int) is not None)

    # Not running: no thread is "the loop's".
    loop.set_debug(True)
    th = threading.Thread(target=other_thread)
    th.start()
    th.join()
    assert results == [True]
    run_briefly(loop)
