"""call_soon / call_soon_threadsafe / call_later / call_at, handles, and the clock,
each case on the stdlib loop and on ferroloop with the same assertions."""

import contextvars
import gc
import math
import platform
import sys
import threading
import time
import weakref
from asyncio import format_helpers

import pytest

VAR = contextvars.ContextVar('VAR', default='default')


def callback(*args):
    pass


def stop_after(loop, seconds=10):
    """Fail-fast upper bound: stop the loop if a test would otherwise hang."""
    fired = []
    loop.call_later(seconds, lambda: (fired.append(True), loop.stop()))
    return fired


# ----- call_soon -------------------------------------------------------------------

def test_call_soon_fifo_with_args(loop):
    out = []
    for i in range(100):
        loop.call_soon(out.append, i)
    loop.call_soon(lambda *a: out.append(a), 1, 'two', None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == list(range(100)) + [(1, 'two', None)]


def test_call_soon_returns_handle(loop):
    h = loop.call_soon(callback)
    assert not h.cancelled()
    assert type(h).__name__ == 'Handle'


def test_callbacks_scheduled_during_a_batch_run_in_next_iteration(loop):
    out = []

    def first():
        out.append('first')
        loop.call_soon(out.append, 'scheduled by first')

    loop.call_soon(first)
    loop.call_soon(out.append, 'second')
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stop() ends the run after the current batch: the new callback is still queued.
    assert out == ['first', 'second']
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['first', 'second', 'scheduled by first']


def test_context_given_is_used(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, 'in ctx')
    seen = []
    loop.call_soon(lambda: seen.append(VAR.get()), context=ctx)
    loop.call_soon(lambda: VAR.set('changed by callback'), context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['in ctx']
    assert ctx[VAR] == 'changed by callback'
    assert VAR.get() == 'default'


def test_empty_context_is_used_not_replaced(loop):
    VAR.set('outer')
    try:
        empty = contextvars.Context()
        assert not empty  # falsy: `context or copy_context()` would replace it
        seen = []
        loop.call_soon(lambda: (seen.append(VAR.get()), VAR.set('set inside')), context=empty)
        loop.call_later(0, lambda: seen.append(VAR.get()), context=contextvars.Context())
        loop.call_at(loop.time(), lambda: seen.append(VAR.get()), context=contextvars.Context())
        loop.call_soon_threadsafe(lambda: seen.append(VAR.get()), context=contextvars.Context())
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ['default'] * 4
        assert empty[VAR] == 'set inside'
        assert VAR.get() == 'outer'
    finally:
        VAR.set('default')


def test_default_context_is_a_copy_at_call_time(loop):
    token = VAR.set('at call time')
    seen = []
    try:
        loop.call_soon(lambda: (seen.append(VAR.get()), VAR.set('inside')))
        loop.call_later(0, lambda: seen.append(VAR.get()))
        VAR.set('after')
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ['at call time', 'at call time']
        assert VAR.get() == 'after'
    finally:
        VAR.reset(token)


def test_context_none_means_copy(loop):
    token = VAR.set('copied')
    try:
        seen = []
        loop.call_soon(lambda: seen.append(VAR.get()), context=None)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ['copied']
    finally:
        VAR.reset(token)


def test_explicit_context_with_arguments_by_every_spelling(loop):
    # C Task calls call_soon(step, context=ctx) with an interned keyword name; a
    # keyword built at run time is an equal string that is not the same object.
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, 'given')
    # Two such strings: ferroloop remembers the first it matched, the other must
    # still be compared.
    runtime_name = ''.join(['con', 'text'])
    other_name = ''.join(['cont', 'ext'])
    seen = []

    def record(*args):
        seen.append((VAR.get(None), args))
    loop.call_soon(record, 1, 2, context=ctx)
    loop.call_soon(record, 3, **{runtime_name: ctx})
    loop.call_soon(record, 6, **{other_name: ctx})
    loop.call_soon_threadsafe(record, 4, context=ctx)
    loop.call_later(0, record, 5, **{runtime_name: ctx})
    loop.call_at(loop.time(), record, context=ctx)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    # (sorted: the stdlib's timer heap does not promise an order for equal deadlines)
    assert sorted(seen) == [('given', ()), ('given', (1, 2)), ('given', (3,)), ('given', (4,)), ('given', (5,)), ('given', (6,))]


def test_context_that_is_not_a_context(loop):
    # asyncio accepts any object and calls its run() method: a duck-typed
    # context works, anything else is reported when the callback runs.
    class DuckContext:
        def run(self, cb, *args):
            return cb('via duck', *args)

    out = []
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    loop.call_soon(out.append, context=DuckContext())
    h = loop.call_soon(callback, context={'not': 'a context'})
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['via duck']
    assert len(errors) == 1
    assert errors[0]['handle'] is h
    assert type(errors[0]['exception']) is AttributeError
    assert str(errors[0]['exception']) == "'dict' object has no attribute 'run'"


# ----- call_soon_threadsafe ----------------------------------------------------------

def test_call_soon_threadsafe_from_many_threads(loop):
    n_threads, per_thread = 8, 200
    total = n_threads * per_thread
    results = []
    done = loop.create_future()

    def record(tag):
        results.append((tag, VAR.get()))
        if len(results) == total:
            done.set_result(None)

    def worker(t):
        for i in range(per_thread):
            ctx = contextvars.Context()
            ctx.run(VAR.set, f'ctx {t}')
            loop.call_soon_threadsafe(record, (t, i), context=ctx)

    fired = stop_after(loop)
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    loop.call_soon(lambda: [th.start() for th in threads])
    loop.run_until_complete(done)
    for th in threads:
        th.join()
    assert not fired
    assert len(results) == total
    for t in range(n_threads):
        mine = [r for r in results if r[0][0] == t]
        assert [r[0][1] for r in mine] == list(range(per_thread))  # FIFO per thread
        assert {r[1] for r in mine} == {f'ctx {t}'}


def test_call_soon_threadsafe_copies_the_calling_threads_context(loop):
    seen = []
    done = loop.create_future()

    def worker():
        VAR.set('worker thread')
        loop.call_soon_threadsafe(lambda: (seen.append(VAR.get()), done.set_result(None)))

    fired = stop_after(loop)
    th = threading.Thread(target=worker)
    loop.call_soon(th.start)
    loop.run_until_complete(done)
    th.join()
    assert not fired
    assert seen == ['worker thread']


# Syscalls a thread sleeping in a poller shows in /proc (x86-64): poll, select,
# epoll_wait, pselect6, epoll_pwait, epoll_pwait2.
_POLL_SYSCALLS = {'7', '23', '232', '270', '281', '441'}


def _sleeping_in_poller(native_tid):
    try:
        with open(f'/proc/self/task/{native_tid}/syscall') as f:
            return f.read().split(' ', 1)[0] in _POLL_SYSCALLS
    except OSError:
        return False


@pytest.mark.skipif(platform.machine() != 'x86_64', reason='syscall numbers are x86-64')
def test_call_soon_threadsafe_wakes_a_loop_asleep_in_the_poller(loop):
    rounds = 20
    woken = []
    errors = []
    all_done = loop.create_future()
    loop_tid = threading.get_native_id()

    def pinger():
        try:
            for i in range(rounds):
                # Wait (bounded) until the loop thread is blocked in epoll_wait
                # with nothing to do but the far-off safety timer.
                deadline = time.monotonic() + 5
                while not _sleeping_in_poller(loop_tid):
                    if time.monotonic() > deadline:
                        raise AssertionError('loop never went to sleep in the poller')
                loop.call_soon_threadsafe(woken.append, i)
                while len(woken) <= i and not all_done.done():
                    if time.monotonic() > deadline + 5:
                        raise AssertionError(f'round {i}: loop not woken')
                    time.sleep(0)  # yield the GIL to the loop thread
        except BaseException as exc:
            errors.append(exc)
        finally:
            loop.call_soon_threadsafe(lambda: all_done.done() or all_done.set_result(None))

    fired = stop_after(loop, 30)
    th = threading.Thread(target=pinger)
    loop.call_soon(th.start)
    loop.run_until_complete(all_done)
    th.join()
    assert not errors, errors
    assert not fired
    assert woken == list(range(rounds))


def test_call_soon_threadsafe_wakes_a_loop_waiting_on_a_timer(loop):
    # The loop sleeps until a (far) timer; a thread's callback must run first.
    out = []
    fired = stop_after(loop)
    started = threading.Event()

    def worker():
        started.wait(10)
        loop.call_soon_threadsafe(lambda: (out.append('thread'), loop.stop()))

    th = threading.Thread(target=worker)
    th.start()
    loop.call_soon(started.set)
    loop.run_forever()
    th.join()
    assert out == ['thread']
    assert not fired


# ----- call_later / call_at ---------------------------------------------------------

def test_timer_ordering_by_deadline_after_ready_callbacks(loop):
    out = []
    now = loop.time()
    loop.call_later(0.05, out.append, 'later 0.05')
    loop.call_later(0.02, out.append, 'later 0.02')
    loop.call_later(0, out.append, 'later 0')
    loop.call_later(-1, out.append, 'later -1')
    loop.call_at(now - 5, out.append, 'at now-5')
    loop.call_soon(out.append, 'soon')
    loop.call_at(now + 0.03, out.append, 'at now+0.03')
    loop.call_later(0.06, loop.stop)
    loop.run_forever()
    assert out == ['soon', 'at now-5', 'later -1', 'later 0',
                   'later 0.02', 'at now+0.03', 'later 0.05']


def test_equal_deadlines_all_fire_together(loop, loop_kind):
    out = []
    when = loop.time() + 0.01
    for i in range(20):
        loop.call_at(when, out.append, i)
    loop.call_at(when, loop.stop)
    loop.run_forever()
    assert sorted(out) == list(range(20))
    if loop_kind == 'ferroloop':
        # The stdlib's heapq breaks ties arbitrarily; ferroloop keeps FIFO.
        assert out == list(range(20))


def test_timer_with_zero_delay_runs_after_call_soon(loop):
    out = []
    loop.call_later(0, out.append, 'timer')
    loop.call_soon(out.append, 'soon')
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['soon', 'timer']


def test_timer_args_and_context(loop):
    ctx = contextvars.Context()
    ctx.run(VAR.set, 'timer ctx')
    out = []
    h = loop.call_later(0, lambda a, b: out.append((a, b, VAR.get())), 1, 2, context=ctx)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert out == [(1, 2, 'timer ctx')]
    assert h.when() <= loop.time()


def test_time_is_monotonic_clock(loop):
    for _ in range(100):
        t0 = time.monotonic()
        t = loop.time()
        t1 = time.monotonic()
        assert t0 <= t <= t1


def test_timer_handle_when_is_a_method(loop):
    t0 = loop.time()
    h = loop.call_later(10, callback)
    t1 = loop.time()
    assert callable(h.when)
    assert t0 + 10 <= h.when() <= t1 + 10
    when = loop.time() + 123.5
    h2 = loop.call_at(when, callback)
    assert h2.when() == when
    assert type(h2).__name__ == 'TimerHandle'
    h.cancel()
    h2.cancel()


def test_timer_handles_compare_by_deadline(loop):
    t = loop.time()
    a = loop.call_at(t + 1, callback)
    b = loop.call_at(t + 2, callback)
    c = loop.call_at(t + 1, callback)
    assert a < b and b > a and a <= b and b >= a
    assert a == c and a <= c and a >= c and not (a != c)
    assert hash(a) == hash(t + 1)
    assert (a == 'x') is False
    with pytest.raises(TypeError):
        a < 'x'
    c.cancel()
    assert a != c
    for h in (a, b):
        h.cancel()


def test_cancel(loop):
    out = []
    h1 = loop.call_soon(out.append, 1)
    h2 = loop.call_later(0, out.append, 2)
    h3 = loop.call_soon(out.append, 3)
    h1.cancel()
    h2.cancel()
    h2.cancel()  # idempotent
    assert h1.cancelled() and h2.cancelled() and not h3.cancelled()
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert out == [3]
    # Cancelling after it ran is allowed and marks it cancelled.
    h3.cancel()
    assert h3.cancelled()


def test_cancel_from_another_callback_in_the_same_batch(loop):
    out = []
    later = []
    loop.call_soon(lambda: later[0].cancel())
    later.append(loop.call_soon(out.append, 'cancelled'))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == []


def test_cancel_drops_callback_and_args(loop):
    class Arg:
        pass
    arg = Arg()
    ref = weakref.ref(arg)
    h = loop.call_later(100, callback, arg)
    del arg
    gc.collect()
    assert ref() is not None
    h.cancel()
    gc.collect()
    assert ref() is None


def test_handle_args_of_a_call_without_arguments(loop):
    # asyncio's handles expose `_args`: () for a call without arguments, None once
    # cancelled (the callback and arguments are dropped).
    handles = [loop.call_soon(callback), loop.call_soon(callback, context=None),
               loop.call_later(10, callback), loop.call_at(loop.time() + 10, callback)]
    assert [h._args for h in handles] == [()] * 4
    assert all(h._callback is callback for h in handles)
    for h in handles:
        h.cancel()
    assert [(h._callback, h._args) for h in handles] == [(None, None)] * 4
    # Equal timers: same deadline, callback and arguments, with or without them.
    when = loop.time() + 10
    a, b = loop.call_at(when, callback), loop.call_at(when, callback)
    c = loop.call_at(when, callback, 1)
    assert a == b and a != c
    for h in (a, b, c):
        h.cancel()


def test_a_kept_handle_keeps_its_callback_after_running(loop):
    # ferroloop reuses handle objects nobody else holds: a kept one must not be.
    args = (object(),)
    h = loop.call_soon(callback, *args)
    loop.call_soon(loop.stop)
    loop.run_forever()
    others = [loop.call_soon(print) for _ in range(10)]
    assert all(o is not h for o in others)
    assert h._callback is callback and h._args == args and not h.cancelled()
    for o in others:
        o.cancel()


def test_callback_args_are_released_once_run(loop):
    class Arg:
        pass
    arg = Arg()
    ref = weakref.ref(arg)
    loop.call_soon(callback, arg)
    del arg
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ref() is None  # no collection needed: nothing keeps the handle


def test_weakly_referenced_handle_dies_once_run(loop):
    ref = weakref.ref(loop.call_soon(callback))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ref() is None
    loop.call_soon(loop.stop)  # a handle made after is another object
    loop.run_forever()
    assert ref() is None


class _Owner:
    """Holds the handle of its own callback: a reference cycle."""

    def callback(self):
        pass


@pytest.mark.parametrize('crowd', [0, 300])
@pytest.mark.parametrize('schedule', ['call_soon', 'call_later', 'call_later_cancelled'])
def test_handle_in_a_cycle_with_its_owner_is_collected_once_done(loop, schedule, crowd):
    # ferroloop keeps the entries of long queues (crowd) out of the collector's
    # lists; once the loop is done with one somebody holds, the collector must see
    # it again.
    crowded = [loop.call_soon(callback) for _ in range(crowd)] + [loop.call_later(3600, callback) for _ in range(crowd)]
    owner = _Owner()
    if schedule == 'call_soon':
        owner.handle = loop.call_soon(owner.callback)
    else:
        owner.handle = loop.call_later(0 if schedule == 'call_later' else 3600, owner.callback)
        if schedule == 'call_later_cancelled':
            owner.handle.cancel()
    ref = weakref.ref(owner)
    del owner
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    gc.collect()
    assert ref() is None
    for h in crowded:
        h.cancel()


@pytest.mark.parametrize('call, message', [
    (lambda loop: loop.call_soon(), "missing 1 required positional argument: 'callback'"),
    (lambda loop: loop.call_soon(callback, bogus=1), "got an unexpected keyword argument 'bogus'"),
    (lambda loop: loop.call_soon(callback, callback=callback), "got multiple values for argument 'callback'"),
    (lambda loop: loop.call_soon_threadsafe(), "missing 1 required positional argument: 'callback'"),
    (lambda loop: loop.call_later(1), "missing 1 required positional argument: 'callback'"),
    (lambda loop: loop.call_later(), "missing 2 required positional arguments: 'delay' and 'callback'"),
    (lambda loop: loop.call_at(callback=callback), "missing 1 required positional argument: 'when'"),
])
def test_scheduling_argument_errors(loop, call, message):
    with pytest.raises(TypeError, match=message):
        call(loop)


def test_scheduling_arguments_by_keyword(loop):
    out = []
    ctx = contextvars.copy_context()
    loop.call_soon(callback=out.append)  # called with no argument: fails, reported
    loop.call_soon(out.append, 1, context=ctx)
    loop.call_soon_threadsafe(callback=out.append, context=None)
    loop.call_later(delay=0, callback=out.append)
    loop.call_at(loop.time(), out.append, 2, context=ctx)
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(type(context['exception'])))
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert out == [1, 2] and errors == [TypeError] * 3


def test_get_context(loop):
    ctx = contextvars.Context()
    h = loop.call_soon(callback, context=ctx)
    t = loop.call_later(1, callback, context=ctx)
    for handle in (h, t):
        got = handle.get_context() if hasattr(handle, 'get_context') else handle._context
        assert got is ctx
    t.cancel()
    h2 = loop.call_soon(callback)
    got = h2.get_context() if hasattr(h2, 'get_context') else h2._context
    assert isinstance(got, contextvars.Context)


def _expected_repr(cls, cb, args, cancelled=False, when=None, created=None):
    info = [cls]
    if cancelled:
        info.append('cancelled')
    if when is not None:
        info.append(f'when={when}')
    if cb is not None:
        # From 3.13 the arguments show only in debug mode, which made `created`.
        debug = {'debug': created is not None} if sys.version_info >= (3, 13) else {}
        info.append(format_helpers._format_callback_source(cb, args, **debug))
    if created:
        info.append(f'created at {created[0]}:{created[1]}')
    return '<{}>'.format(' '.join(info))


def test_handle_repr(loop):
    h = loop.call_soon(callback, 1, 'x')
    assert repr(h) == _expected_repr('Handle', callback, (1, 'x'))
    shown = 'callback() ' if sys.version_info >= (3, 13) else 'callback(1, '  # 3.13 hides them outside debug
    assert shown in repr(h) and 'test_scheduling.py' in repr(h)
    h.cancel()
    assert repr(h) == '<Handle cancelled>'


def test_timer_handle_repr(loop):
    t = loop.call_at(1234.5, callback, 7)
    assert repr(t) == _expected_repr('TimerHandle', callback, (7,), when=1234.5)
    t.cancel()
    assert repr(t) == '<TimerHandle cancelled when=1234.5>'


def test_handle_repr_in_debug_mode(loop):
    loop.set_debug(True)
    h = loop.call_soon(callback, 1); line = sys._getframe().f_lineno
    assert repr(h) == _expected_repr('Handle', callback, (1,), created=(__file__, line))
    t = loop.call_at(99.0, callback); tline = sys._getframe().f_lineno
    assert repr(t) == _expected_repr('TimerHandle', callback, (), when=99.0, created=(__file__, tline))
    # In debug mode a cancelled handle keeps its callback in the repr (for the logs).
    h.cancel()
    assert repr(h) == _expected_repr('Handle', callback, (1,), cancelled=True, created=(__file__, line))
    t.cancel()
    assert repr(t) == _expected_repr('TimerHandle', callback, (), cancelled=True, when=99.0,
                                     created=(__file__, tline))
    assert h._callback is None and t._callback is None
    assert h._source_traceback[-1][:2] == (__file__, line)


# ----- bad inputs ------------------------------------------------------------------

def test_call_later_infinite_delay_never_fires(loop):
    out = []
    h = loop.call_later(math.inf, out.append, 'inf')
    assert h.when() == math.inf
    h2 = loop.call_at(math.inf, out.append, 'at inf')
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == []
    assert repr(h) == _expected_repr('TimerHandle', out.append, ('inf',), when=math.inf)
    h.cancel()
    h2.cancel()


def test_call_later_huge_delay(loop):
    out = []
    for delay in (1e300, 1e9, 2.0 ** 64, 10 ** 300):
        loop.call_later(delay, out.append, delay)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert out == []


def test_call_later_nan_fires_at_once(loop, loop_kind):
    if loop_kind == 'asyncio' and sys.version_info >= (3, 13):
        pytest.skip("3.13's stdlib run_once fails on a NaN deadline (ValueError)")
    out = []
    h = loop.call_later(math.nan, out.append, 'nan')
    assert math.isnan(h.when())
    fired = stop_after(loop)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == ['nan']
    assert not fired


def test_call_later_negative_infinity_fires_at_once(loop):
    out = []
    loop.call_later(-math.inf, out.append, '-inf')
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert out == ['-inf']


def test_call_later_int_delay(loop):
    out = []
    loop.call_later(0, out.append, 'int')
    loop.call_later(True, out.append, 'bool')  # bool is an int
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert out == ['int']


@pytest.mark.parametrize('delay', [7, -3, 2 ** 60, 7.5, True])
def test_call_later_deadline_is_time_plus_delay(loop, delay):
    t0 = loop.time()
    handle = loop.call_later(delay, callback)
    t1 = loop.time()
    assert t0 + delay <= handle.when() <= t1 + delay
    assert type(handle.when()) is float
    handle.cancel()


@pytest.mark.parametrize('when', [10, 2 ** 60 + 1, 10.5])
def test_call_at_keeps_the_deadline_it_was_given(loop, when):
    """asyncio keeps the deadline as given: aiohttp schedules at `math.ceil(t)`, an
    int, and checks the timer's `_when` is one."""
    handle = loop.call_at(when, callback)
    assert type(handle.when()) is type(handle._when) is type(when)
    assert handle.when() == when
    assert f'when={when!r}' in repr(handle)
    assert hash(handle) == hash(when)
    handle.cancel()


def test_call_later_int_too_large_for_a_float(loop):
    with pytest.raises(OverflowError, match='^int too large to convert to float$'):
        loop.call_later(10 ** 400, callback)


def test_call_later_none(loop, loop_kind):
    if loop_kind == 'asyncio' and sys.version_info < (3, 11):
        pytest.skip("3.10's stdlib has no None check (it fails adding None to the time)")
    with pytest.raises(TypeError, match='^delay must not be None$'):
        loop.call_later(None, callback)


def test_call_at_none(loop, loop_kind):
    if loop_kind == 'asyncio' and sys.version_info < (3, 11):
        pytest.skip("3.10's stdlib only asserts when is not None")
    with pytest.raises(TypeError, match='^when cannot be None$'):
        loop.call_at(None, callback)


def test_call_later_str(loop):
    with pytest.raises(TypeError) as exc_info:
        loop.call_later('1', callback)
    assert str(exc_info.value) == "unsupported operand type(s) for +: 'float' and 'str'"


@pytest.mark.parametrize('method', ['call_soon', 'call_soon_threadsafe', 'call_later', 'call_at'])
def test_non_callable_in_debug_mode(loop, method):
    loop.set_debug(True)
    call = getattr(loop, method)
    prefix = (0,) if method in ('call_later', 'call_at') else ()
    # asyncio's call_later delegates to call_at, whose name is in the message.
    method = 'call_at' if method == 'call_later' else method
    with pytest.raises(TypeError) as exc_info:
        call(*prefix, 1)
    assert str(exc_info.value) == f'a callable object was expected by {method}(), got 1'

    async def coro():
        pass

    with pytest.raises(TypeError) as exc_info:
        call(*prefix, coro)
    assert str(exc_info.value) == f'coroutines cannot be used with {method}()'
    c = coro()
    with pytest.raises(TypeError) as exc_info:
        call(*prefix, c)
    c.close()
    assert str(exc_info.value) == f'coroutines cannot be used with {method}()'


def test_non_callable_without_debug_fails_when_run(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    h = loop.call_soon(1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(errors) == 1
    ctx = errors[0]
    assert ctx['message'] == 'Exception in callback 1()'
    assert type(ctx['exception']) is TypeError
    assert str(ctx['exception']) == "'int' object is not callable"
    assert ctx['handle'] is h


@pytest.mark.parametrize('method', ['call_soon', 'call_soon_threadsafe', 'call_later', 'call_at'])
def test_calls_on_a_closed_loop(loop, method):
    loop.close()
    prefix = (0,) if method in ('call_later', 'call_at') else ()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        getattr(loop, method)(*prefix, callback)


def test_closing_drops_pending_callbacks_and_timers(loop):
    class Arg:
        pass
    a, b = Arg(), Arg()
    refs = [weakref.ref(a), weakref.ref(b)]
    h = loop.call_soon(callback, a)
    t = loop.call_later(10, callback, b)
    t_ref = weakref.ref(t)
    del a, b
    loop.close()
    assert not h.cancelled()  # asyncio just drops them: cancelled() stays False
    assert not t.cancelled()
    t.cancel()  # still allowed after close
    h.cancel()
    del h, t
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert t_ref() is None


# ----- cancelled timers are purged --------------------------------------------------

def _timer_count(loop):
    if hasattr(loop, '_scheduled'):
        return len(loop._scheduled)
    return loop._timer_count()


def test_a_million_cancelled_timers_are_purged(loop):
    """The timer heap does not grow with cancelled timers: asyncio rebuilds it once
    cancelled ones are the majority. A live far timer stays throughout."""
    keep = loop.call_later(3600, callback)
    batches, per_batch = 100, 10_000
    sizes = []
    probe = []

    def batch(n):
        for _ in range(per_batch):
            loop.call_later(1000, callback).cancel()
        h = loop.call_later(1000, callback)
        probe.append(weakref.ref(h))
        h.cancel()
        sizes.append(_timer_count(loop))
        if n + 1 < batches:
            loop.call_soon(batch, n + 1)
        else:
            loop.call_soon(loop.stop)

    fired = stop_after(loop, 30)
    loop.call_soon(batch, 0)
    loop.run_forever()
    assert not fired
    # One more iteration purges the last batch.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(sizes) == batches
    # Between iterations the heap holds at most about one batch, never the million.
    assert max(sizes) <= 2 * per_batch + 100
    assert _timer_count(loop) <= 100
    gc.collect()
    assert sum(r() is not None for r in probe) <= 1
    assert not keep.cancelled()
    keep.cancel()


# ----- objects are released; re-entrant finalizers are safe ----------------------------

class Tracked:
    pass


def test_handles_and_arguments_are_released_after_running(loop):
    refs = []

    def schedule():
        for i in range(200):
            a, b, c = Tracked(), Tracked(), Tracked()
            refs.extend(weakref.ref(x) for x in (a, b, c))
            refs.append(weakref.ref(loop.call_soon(callback, a)))
            refs.append(weakref.ref(loop.call_later(0, callback, b)))
            refs.append(weakref.ref(loop.call_soon_threadsafe(callback, c)))

    schedule()
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_contexts_are_released_after_running(loop):
    refs = []
    # A Context has no weakref support: track an object only the context holds.
    for _ in range(100):
        ctx = contextvars.copy_context()
        value = Tracked()
        refs.append(weakref.ref(value))
        ctx.run(VAR.set, value)
        del value
        loop.call_soon(callback, context=ctx)
        loop.call_later(0, callback, context=ctx)
    del ctx
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


class ReentrantFinalizer:
    """Calls back into the loop from __del__, which may run while the loop is
    dropping handles (purging timers, cancelling, closing)."""

    def __init__(self, loop, log):
        self.loop, self.log = loop, log

    def __del__(self):
        lp = self.loop
        for action in (lambda: lp.call_soon(callback), lambda: lp.call_later(1, callback).cancel(),
                       lambda: lp.call_soon_threadsafe(callback), lp.time, lp.is_running,
                       lambda: lp.remove_reader(0), lambda: lp.stop()):
            try:
                action()
                self.log.append('ok')
            except RuntimeError as exc:
                self.log.append(str(exc))


def test_reentrant_finalizers_do_not_break_the_loop(loop):
    log = []
    # Dropped when a cancelled timer is purged, a handle is cancelled, a handle
    # has run, and when the loop closes with pending callbacks.
    for _ in range(150):
        loop.call_later(10, callback, ReentrantFinalizer(loop, log)).cancel()
    loop.call_soon(callback, ReentrantFinalizer(loop, log)).cancel()
    loop.call_soon(callback, ReentrantFinalizer(loop, log))
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert log and set(log) == {'ok'}
    log.clear()
    loop.call_soon(callback, ReentrantFinalizer(loop, log))
    loop.call_later(10, callback, ReentrantFinalizer(loop, log))
    loop.close()
    gc.collect()
    assert 'Event loop is closed' in log
