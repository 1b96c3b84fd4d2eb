"""ferroloop's virtual clock (private test support): ``_enable_virtual_time(start)``
makes ``time()`` a value that moves only by ``_advance_time(dt)``; the loop then
never sleeps in its poll and calls ``_after_virtual_iteration()`` after each
iteration. ferroloop only: the stdlib loop has no such mode (its tests get the same
from ``test_utils.TestLoop``). Wall-clock bounds here only make a broken mode fail
fast instead of hanging; they are never what a test asserts."""

import asyncio
import socket
import threading
import time

import pytest

import ferroloop

# A loop that sleeps in virtual mode would sleep for hours here; past this many
# real seconds a test gives up (and fails) instead.
FAIL_FAST = 5.0


class SteppingLoop(ferroloop.Loop):
    """Advances the virtual clock by ``step`` after every iteration, and stops
    after ``max_iterations`` (a guard: the tests never get near it)."""

    step = 0.0
    max_iterations = 100_000

    def __init__(self):
        super().__init__()
        self.iterations = 0

    def _after_virtual_iteration(self):
        self.iterations += 1
        if self.step:
            self._advance_time(self.step)
        if self.iterations >= self.max_iterations:
            self.stop()


@pytest.fixture
def vloop():
    lp = SteppingLoop()
    lp._enable_virtual_time(0.0)
    yield lp
    if not lp.is_closed():
        lp.close()
    asyncio.set_event_loop(None)


def stop_later_from_thread(lp, seconds):
    """Fail-fast guard: stop the loop from another thread if it is still running
    after ``seconds`` of real time (a loop sleeping in its poll would hang)."""
    timer = threading.Timer(seconds, lambda: lp.call_soon_threadsafe(lp.stop))
    timer.daemon = True
    timer.start()
    return timer


def test_off_by_default_time_is_monotonic():
    lp = ferroloop.new_event_loop()
    try:
        before = time.monotonic()
        now = lp.time()
        after = time.monotonic()
        assert before <= now <= after
        with pytest.raises(RuntimeError, match='virtual time is not enabled'):
            lp._advance_time(1.0)
    finally:
        lp.close()


def test_time_moves_only_when_told():
    lp = ferroloop.new_event_loop()
    try:
        lp._enable_virtual_time(5.0)
        assert lp.time() == 5.0
        for _ in range(20):
            lp.run_until_complete(asyncio.sleep(0))
        assert lp.time() == 5.0
        lp._advance_time(2.5)
        assert lp.time() == 7.5
        lp._advance_time(0)
        assert lp.time() == 7.5
    finally:
        lp.close()


def test_default_start_is_zero(vloop):
    assert vloop.time() == 0.0


def test_timers_fire_in_virtual_order_at_virtual_deadlines(vloop):
    vloop.step = 0.25
    fired = []
    record = lambda name: fired.append((name, vloop.time()))  # noqa: E731
    vloop.call_later(3, record, 'c')
    vloop.call_later(1, record, 'a')
    vloop.call_at(2, record, 'b')
    vloop.call_later(0.5, record, 'first')
    vloop.call_later(3.5, vloop.stop)
    guard = stop_later_from_thread(vloop, FAIL_FAST)
    vloop.run_forever()
    guard.cancel()
    # Each timer fires in the first iteration whose (virtual) now reaches its
    # deadline: steps of 0.25 are exact in binary floating point.
    assert fired == [('first', 0.5), ('a', 1.0), ('b', 2.0), ('c', 3.0)]
    assert vloop.time() == 3.5 + vloop.step  # the hook ran after the stop iteration


def test_call_later_and_call_at_use_the_virtual_clock(vloop):
    vloop._advance_time(100.0)
    assert vloop.call_later(10, lambda: None).when() == 110.0
    assert vloop.call_at(105, lambda: None).when() == 105.0


def test_poll_never_sleeps(vloop):
    # A timer an hour away and nothing else to do: a real loop would sleep in its
    # poll for an hour. The virtual loop keeps iterating without the clock moving.
    fired = []
    vloop.call_later(3600, fired.append, 'late')
    vloop.max_iterations = 200
    t0 = time.monotonic()
    guard = stop_later_from_thread(vloop, FAIL_FAST)
    vloop.run_forever()
    guard.cancel()
    assert time.monotonic() - t0 < FAIL_FAST
    assert vloop.iterations == 200
    assert fired == []
    assert vloop.time() == 0.0


def test_asyncio_sleep_and_wait_for_in_virtual_time(vloop):
    vloop.step = 60.0

    async def main():
        await asyncio.sleep(3600)
        slept = vloop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(vloop.create_future(), 7200)
        return slept, vloop.time()

    guard = stop_later_from_thread(vloop, FAIL_FAST)
    slept, timed_out = vloop.run_until_complete(main())
    guard.cancel()
    # A timer fires in the iteration that reaches its deadline; the task it wakes
    # resumes in a later iteration, a step (or a few) further.
    assert slept == 3600.0 + vloop.step
    assert slept + 7200.0 < timed_out <= slept + 7200.0 + 5 * vloop.step


def test_fd_callbacks_still_run(vloop):
    # The poll still happens (with a zero timeout): ready fds are served.
    a, b = socket.socketpair()
    try:
        got = []

        def on_readable():
            got.append(a.recv(100))
            vloop.stop()

        vloop.add_reader(a.fileno(), on_readable)
        b.send(b'ping')
        guard = stop_later_from_thread(vloop, FAIL_FAST)
        vloop.run_forever()
        guard.cancel()
        vloop.remove_reader(a.fileno())
        assert got == [b'ping']
        assert vloop.time() == 0.0
    finally:
        a.close()
        b.close()


def test_hook_runs_after_each_iteration_and_its_errors_propagate(vloop):
    order = []

    class Boom(Exception):
        pass

    def after():
        order.append('hook')
        if len(order) >= 4:
            raise Boom

    vloop._after_virtual_iteration = after
    vloop.call_soon(order.append, 'cb1')
    vloop.call_soon(lambda: vloop.call_soon(order.append, 'cb2'))
    with pytest.raises(Boom):
        vloop.run_forever()
    assert order == ['cb1', 'hook', 'cb2', 'hook']
    assert not vloop.is_running()
