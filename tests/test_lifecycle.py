"""run_forever / run_until_complete / stop / close, running-state rules, resource
release, async generator hooks and shutdown_asyncgens, shutdown_default_executor."""

import asyncio
import gc
import sys
import threading
import warnings
import weakref

import pytest

from conftest import new_loop, open_fds


def fail_fast(loop, seconds=10):
    fired = []
    loop.call_later(seconds, lambda: (fired.append(True), loop.stop()))
    return fired


# ----- run_until_complete -------------------------------------------------------------

def test_run_until_complete_coroutine_result(loop):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(main(21)) == 42
    assert not loop.is_running()


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 'done')
    assert loop.run_until_complete(fut) == 'done'


def test_run_until_complete_awaitable(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return 'awaited'

    assert loop.run_until_complete(Awaitable()) == 'awaited'


def test_run_until_complete_exception_propagates(loop):
    async def main():
        raise ValueError('boom')

    with pytest.raises(ValueError, match='^boom$'):
        loop.run_until_complete(main())


def test_run_until_complete_base_exception_propagates(loop):
    async def main():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())
    assert not loop.is_running()
    # The loop is still usable afterwards.
    assert loop.run_until_complete(asyncio.sleep(0, 'again')) == 'again'


def test_system_exit_in_callback_leaves_the_loop(loop):
    out = []
    loop.call_soon(lambda: out.append(1))
    loop.call_soon(sys.exit, 5)
    loop.call_soon(lambda: out.append(2))
    with pytest.raises(SystemExit) as exc_info:
        loop.run_forever()
    assert exc_info.value.code == 5
    assert out == [1]
    assert not loop.is_running()
    # The callbacks after it are still queued and run next time.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1, 2]


def test_run_until_complete_not_awaitable(loop):
    with pytest.raises(TypeError, match='^An asyncio.Future, a coroutine or an awaitable is required$'):
        loop.run_until_complete(42)


def test_run_until_complete_future_of_other_loop(loop, make_loop):
    other = make_loop()
    fut = other.create_future()
    with pytest.raises(ValueError, match='^The future belongs to a different loop than the one specified as the loop argument$'):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match='^Event loop stopped before Future completed.$'):
        loop.run_until_complete(fut)
    # The done callback was removed: completing the future later does not stop a run.
    loop.call_soon(fut.set_result, 1)
    out = []
    loop.call_soon(lambda: loop.call_soon(lambda: (out.append('ran'), loop.stop())))
    loop.run_forever()
    assert out == ['ran']


def test_run_until_complete_already_done_future(loop):
    fut = loop.create_future()
    fut.set_result('early')
    assert loop.run_until_complete(fut) == 'early'


# ----- stop ---------------------------------------------------------------------------

def test_stop_before_run_runs_one_iteration(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.call_soon(lambda: loop.call_soon(out.append, 'next iteration'))
    loop.stop()
    loop.run_forever()
    assert out == [1]
    loop.stop()
    loop.run_forever()
    assert out == [1, 'next iteration']


def test_stop_in_callback_finishes_the_batch(loop):
    out = []
    loop.call_soon(out.append, 'before')
    loop.call_soon(loop.stop)
    loop.call_soon(out.append, 'after stop, same batch')
    loop.call_soon(lambda: loop.call_soon(out.append, 'next batch'))
    loop.run_forever()
    assert out == ['before', 'after stop, same batch']


def test_stop_then_due_timers_of_that_iteration(loop):
    out = []
    loop.call_later(-1, out.append, 'due timer')
    loop.call_soon(loop.stop)
    loop.run_forever()
    # The due timer joins the first batch: stdlib processes timers before running.
    assert out == ['due timer']


def test_stop_twice_and_rerun(loop):
    loop.stop()
    loop.stop()
    loop.run_forever()
    out = []
    loop.call_soon(out.append, 'second run')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['second run']


def test_stop_while_idle_in_poller_from_thread(loop):
    fired = fail_fast(loop)
    th = threading.Thread(target=loop.call_soon_threadsafe, args=(loop.stop,))
    loop.call_soon(th.start)
    loop.run_forever()
    th.join()
    assert not fired


# ----- running state ------------------------------------------------------------------

def test_is_running_and_is_closed(loop):
    states = []
    assert not loop.is_running() and not loop.is_closed()
    loop.call_soon(lambda: states.append((loop.is_running(), asyncio.get_running_loop() is loop)))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert states == [(True, True)]
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    loop.close()
    assert loop.is_closed() and not loop.is_running()


def _nested_run_forever_unmarks_running(loop):
    """True on a stdlib whose run_forever, refused because the loop is already
    running, still runs its cleanup and marks the outer loop as not running
    (3.13.0): there the nested run_until_complete below would then really run and
    never return. ferroloop keeps the outer loop running on every version."""
    seen = []

    def probe():
        try:
            loop.run_forever()
        except RuntimeError:
            pass
        seen.append(loop.is_running())
        loop.stop()

    loop.call_soon(probe)
    loop.run_forever()
    return seen == [False]


def test_run_forever_while_running(loop, loop_kind):
    if loop_kind == 'asyncio' and _nested_run_forever_unmarks_running(loop):
        pytest.skip("this stdlib's refused nested run_forever resets the running loop")
    errors = []

    def nested():
        for call in (loop.run_forever, lambda: loop.run_until_complete(fut)):
            try:
                call()
            except RuntimeError as exc:
                errors.append(str(exc))
        loop.stop()

    fut = loop.create_future()
    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ['This event loop is already running'] * 2
    assert loop.run_until_complete(asyncio.sleep(0, 'ok')) == 'ok'


def test_iterations_driven_by_the_caller(loop):
    """asyncio 3.13's hooks for code that runs the iterations itself (a GUI
    toolkit's loop): ``_run_forever_setup()``, ``_run_once()`` per iteration,
    ``_run_forever_cleanup()``. ferroloop has them on every version."""
    if not hasattr(loop, '_run_forever_setup'):
        pytest.skip('this stdlib has no _run_forever_setup (3.13+)')
    ran = []

    async def coro():
        ran.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        ran.append('resumed')

    hooks = sys.get_asyncgen_hooks()
    loop.call_soon(ran.append, 'callback')
    loop._run_forever_setup()
    try:
        assert loop.is_running()
        assert asyncio.get_running_loop() is loop
        task = loop.create_task(coro())
        loop.call_soon(loop.stop)  # not acted on: nobody runs run_forever
        for _ in range(4):
            loop.call_soon(ran.append, 'tick')  # something ready: the poll does not wait
            loop._run_once()
    finally:
        loop._run_forever_cleanup()
    assert sys.get_asyncgen_hooks() == hooks
    # A second cleanup leaves the hooks set since alone.
    sys.set_asyncgen_hooks(firstiter=ran.append)
    try:
        loop._run_forever_cleanup()
        assert sys.get_asyncgen_hooks().firstiter == ran.append
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert not loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert ran == ['callback', loop, 'tick', 'resumed', 'tick', 'tick', 'tick']
    assert task.done()
    # The stop() was forgotten with the cleanup, as asyncio forgets it.
    assert loop.run_until_complete(asyncio.sleep(0.001, 'ok')) == 'ok'


def test_run_while_another_loop_is_running(loop, make_loop, loop_kind):
    if loop_kind == 'asyncio' and _nested_run_forever_unmarks_running(loop):
        # The same 3.13.0 cleanup also clears the running loop, so the second
        # nested call below is let through.
        pytest.skip("this stdlib's refused nested run_forever resets the running loop")
    other = make_loop()
    errors = []

    def nested():
        try:
            other.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        coro = asyncio.sleep(0)
        try:
            other.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        coro.close()
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ['Cannot run the event loop while another loop is running'] * 2
    assert not other.is_running()


def test_close_while_running(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ['Cannot close a running event loop']
    assert not loop.is_closed()


def test_close_is_idempotent_and_final(loop):
    assert loop._closed is False  # asyncio's attribute, read by test fixtures
    loop.close()
    loop.close()
    assert loop.is_closed()
    assert loop._closed is True
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.create_task(coro)
    loop.stop()  # allowed on a closed loop
    assert loop.get_debug() in (True, False)


def test_loop_usable_after_run_until_complete_of_cancelled_task(loop):
    async def forever():
        await asyncio.sleep(3600)

    task = loop.create_task(forever())
    loop.call_soon(task.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert loop.run_until_complete(asyncio.sleep(0, 1)) == 1


# ----- resources ---------------------------------------------------------------------

def test_closing_releases_every_fd(loop_kind):
    gc.collect()
    before = open_fds()
    loops = [new_loop(loop_kind) for _ in range(20)]
    assert len(open_fds() - before) >= 20  # each loop holds at least its poller
    for lp in loops:
        lp.run_until_complete(lp.run_in_executor(None, int, '1'))
        lp.call_soon_threadsafe(lp.stop)
        lp.run_forever()
    for lp in loops:
        lp.close()
    assert open_fds() - before == set()


def test_close_does_not_close_watched_user_fds(loop):
    import socket
    a, b = socket.socketpair()
    try:
        loop.add_reader(a, lambda: None)
        loop.add_writer(b, lambda: None)
        loop.close()
        assert a.fileno() >= 0 and b.fileno() >= 0
        b.send(b'x')
        assert a.recv(1) == b'x'
    finally:
        a.close()
        b.close()


def test_no_resource_warning_when_closed(loop_kind):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        lp = new_loop(loop_kind)
        lp.run_until_complete(asyncio.sleep(0))
        lp.run_until_complete(lp.run_in_executor(None, int, '2'))
        lp.run_until_complete(lp.shutdown_default_executor())
        lp.close()
        del lp
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_unclosed_loop_warns_and_releases_fds(loop_kind):
    gc.collect()
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        lp = new_loop(loop_kind)
        expected = f'unclosed event loop {lp!r}'
        del lp
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert messages == [expected]
    assert open_fds() - before == set()


# ----- async generators --------------------------------------------------------------

def test_asyncgen_hooks_installed_while_running_and_restored(loop):
    before = sys.get_asyncgen_hooks()
    seen = []

    async def main():
        hooks = sys.get_asyncgen_hooks()
        seen.append((hooks.firstiter, hooks.finalizer))

    loop.run_until_complete(main())
    (firstiter, finalizer), = seen
    assert getattr(firstiter, '__self__', None) is loop
    assert getattr(finalizer, '__self__', None) is loop
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_finalizes_open_generators(loop):
    events = []

    async def agen(name):
        try:
            events.append(f'{name} start')
            yield 1
            yield 2
        finally:
            events.append(f'{name} finally')
            await asyncio.sleep(0)
            events.append(f'{name} finally after await')

    gens = [agen('a'), agen('b')]

    async def main():
        for g in gens:
            assert await g.__anext__() == 1

    loop.run_until_complete(main())
    assert events == ['a start', 'b start']
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert sorted(events) == sorted(['a start', 'b start', 'a finally', 'b finally',
                                     'a finally after await', 'b finally after await'])


def test_shutdown_asyncgens_coroutine_has_asyncio_s_name(loop):
    """`asyncio.Runner.close()` on a loop a test closed itself makes a
    `shutdown_asyncgens()` coroutine that is never awaited; pytest-asyncio silences
    that warning by the stdlib coroutine's name."""
    loop.close()
    coro = loop.shutdown_asyncgens()
    assert coro.__qualname__ == 'BaseEventLoop.shutdown_asyncgens'
    coro.close()


def test_shutdown_asyncgens_reports_errors(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError('in finally')

    g = agen()

    async def main():
        await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(errors) == 1
    ctx = errors[0]
    assert ctx['message'] == f'an error occurred during closing of asynchronous generator {g!r}'
    assert type(ctx['exception']) is ValueError and str(ctx['exception']) == 'in finally'
    assert ctx['asyncgen'] is g
    assert set(ctx) == {'message', 'exception', 'asyncgen'}


def test_asyncgen_first_iterated_after_shutdown_warns(loop):
    async def agen():
        yield 1

    loop.run_until_complete(loop.shutdown_asyncgens())
    g = agen()

    async def main():
        return await g.__anext__()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert loop.run_until_complete(main()) == 1
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert messages == [f'asynchronous generator {g!r} was scheduled after loop.shutdown_asyncgens() call']
    loop.run_until_complete(g.aclose())


def test_abandoned_asyncgen_is_closed_by_the_loop(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append('finally')

    async def main():
        g = agen()
        await g.__anext__()
        ref = weakref.ref(g)
        del g
        gc.collect()
        # The finalizer hook scheduled aclose() as a task; let it run.
        for _ in range(5):
            await asyncio.sleep(0)
        return ref

    loop.run_until_complete(main())
    assert events == ['finally']


def test_shutdown_asyncgens_without_generators(loop):
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None


# ----- shutdown_default_executor --------------------------------------------------------

def test_shutdown_default_executor(loop):
    threads = []

    def work():
        threads.append(threading.current_thread())
        return 'worked'

    assert loop.run_until_complete(loop.run_in_executor(None, work)) == 'worked'
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not threads[0].is_alive()
    with pytest.raises(RuntimeError, match='^Executor shutdown has been called$'):
        loop.run_in_executor(None, work)
    # An explicit executor still works.
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, work)) == 'worked'


def test_shutdown_default_executor_without_executor(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None
    with pytest.raises(RuntimeError, match='^Executor shutdown has been called$'):
        loop.run_in_executor(None, int)


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_shutdown_default_executor_timeout(loop, loop_kind):
    if loop_kind == 'asyncio' and sys.version_info < (3, 12):
        pytest.skip('timeout= is new in Python 3.12')
    if loop_kind == 'asyncio' and sys.version_info < (3, 13):
        # 3.12's stdlib awaits the joining thread before applying timeout=, so a
        # blocked worker makes it wait for the worker and never warn; 3.13 fixed
        # it, and ferroloop keeps the fixed behaviour on every version.
        pytest.skip("3.12's stdlib ignores timeout= while a worker is blocked")
    release = threading.Event()
    started = threading.Event()

    def blocked():
        started.set()
        release.wait(30)

    fut = loop.run_in_executor(None, blocked)
    assert started.wait(10)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            loop.run_until_complete(loop.shutdown_default_executor(timeout=0.05))
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert messages == ['The executor did not finishing joining its threads within 0.05 seconds.']
    finally:
        release.set()
    loop.run_until_complete(fut)


def test_no_logs_for_tasks_of_interrupted_run_until_complete(loop, caplog):
    import logging

    async def pending():
        await asyncio.sleep(3600)

    async def interrupted():
        raise KeyboardInterrupt

    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        loop.call_soon(loop.stop)
        with pytest.raises(RuntimeError, match='^Event loop stopped before Future completed.$'):
            loop.run_until_complete(pending())
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(interrupted())
        gc.collect()
    # Neither "Task was destroyed but it is pending!" nor "exception was never retrieved".
    assert [r.getMessage() for r in caplog.records if r.name == 'asyncio'] == []


def test_pending_task_destroyed_is_logged(loop, caplog):
    import logging

    async def pending():
        await asyncio.sleep(3600)

    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        task = loop.create_task(pending())
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.close()
        del task
        gc.collect()
    messages = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
    assert len(messages) == 1 and messages[0].startswith('Task was destroyed but it is pending!\ntask: <Task pending')


def test_task_in_a_cycle_through_its_timer_is_collected(loop):
    """asyncio.sleep's frame holds its TimerHandle, whose arguments lead back to the
    task: a cycle the garbage collector must see through the handle."""
    async def pending():
        await asyncio.sleep(3600)

    task = loop.create_task(pending())
    loop.call_soon(loop.stop)
    loop.run_forever()
    ref = weakref.ref(task)
    task._log_destroy_pending = False
    loop.close()
    del task
    gc.collect()
    assert ref() is None


# 300 queued callbacks and timers: ferroloop keeps the entries of long queues out
# of the collector's lists, and must then visit them on the loop's behalf.
@pytest.mark.parametrize('crowd', [0, 300])
def test_unclosed_loop_in_a_cycle_through_a_callback_is_collected(loop_kind, crowd):
    import socket

    class Protocol:
        def __init__(self, lp):
            self.loop = lp

        def on_readable(self):
            pass

    a, b = socket.socketpair()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            lp = new_loop(loop_kind)
            proto = Protocol(lp)
            lp.add_reader(a, proto.on_readable)
            for _ in range(crowd):
                lp.call_soon(print)
                lp.call_later(3600, print)
            lp.call_later(3600, proto.on_readable)
            lp.call_soon(proto.on_readable)
            ref = weakref.ref(lp)
            del lp, proto
            gc.collect()
        assert ref() is None
        assert [str(w.message).split(' <')[0] for w in caught
                if issubclass(w.category, ResourceWarning)] == ['unclosed event loop']
    finally:
        a.close()
        b.close()
