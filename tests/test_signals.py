"""add_signal_handler / remove_signal_handler rules, signal delivery, and Ctrl-C
(SIGINT) interrupting a loop asleep in the poller, in a child process."""

import contextvars
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading

import pytest

from conftest import LOOP_KINDS, loop_factory_source

VAR = contextvars.ContextVar('VAR', default='default')


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    saved_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(saved_wakeup)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(saved_wakeup)


def fail_fast(loop, seconds=10):
    fired = []
    loop.call_later(seconds, lambda: (fired.append(True), loop.stop()))
    return fired


def test_handler_runs_on_signal(loop):
    got = []
    done = loop.create_future()

    def handler(*args):
        got.append((args, VAR.get()))
        done.set_result(None)

    token = VAR.set('at add_signal_handler')
    try:
        assert loop.add_signal_handler(signal.SIGUSR1, handler, 'a', 2) is None
    finally:
        VAR.reset(token)
    fired = fail_fast(loop)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.run_until_complete(done)
    assert got == [(('a', 2), 'at add_signal_handler')]
    assert not fired
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


def test_signal_from_another_thread_wakes_the_loop(loop):
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: done.set_result('signalled'))
    fired = fail_fast(loop)
    th = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGUSR2))
    loop.call_soon(th.start)
    assert loop.run_until_complete(done) == 'signalled'
    th.join()
    assert not fired


def test_two_signals_and_replacing_a_handler(loop):
    got = []
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.append, 'first')
    loop.add_signal_handler(signal.SIGUSR1, got.append, 'usr1')
    loop.add_signal_handler(signal.SIGUSR2, lambda: (got.append('usr2'), done.set_result(None)))
    fired = fail_fast(loop)

    def send():
        os.kill(os.getpid(), signal.SIGUSR1)
        # Delivered before the next signal is sent: it is processed first.
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR2)

    loop.call_soon(send)
    loop.run_until_complete(done)
    assert got == ['usr1', 'usr2']
    assert not fired


def test_remove_signal_handler(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert loop.remove_signal_handler(signal.SIGUSR2) is False


def test_remove_sigint_handler_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


@pytest.mark.parametrize('sig', [0, 1000, -1, signal.NSIG])
def test_invalid_signal_value_error(loop, sig):
    with pytest.raises(ValueError) as exc_info:
        loop.add_signal_handler(sig, lambda: None)
    assert str(exc_info.value) == f'invalid signal number {sig}'
    with pytest.raises(ValueError) as exc_info:
        loop.remove_signal_handler(sig)
    assert str(exc_info.value) == f'invalid signal number {sig}'


@pytest.mark.parametrize('sig', ['SIGINT', 2.0, None])
def test_non_int_signal_type_error(loop, sig):
    with pytest.raises(TypeError) as exc_info:
        loop.add_signal_handler(sig, lambda: None)
    assert str(exc_info.value) == f'sig must be an int, not {sig!r}'
    with pytest.raises(TypeError) as exc_info:
        loop.remove_signal_handler(sig)
    assert str(exc_info.value) == f'sig must be an int, not {sig!r}'


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGSTOP])
def test_uncatchable_signal_runtime_error(loop, sig):
    with pytest.raises(RuntimeError) as exc_info:
        loop.add_signal_handler(sig, lambda: None)
    assert str(exc_info.value) == f'sig {int(sig)} cannot be caught'
    assert loop.remove_signal_handler(sig) is False


def test_sigkill_message(loop):
    with pytest.raises(RuntimeError, match='^sig 9 cannot be caught$'):
        loop.add_signal_handler(9, lambda: None)


def test_coroutine_handler_type_error(loop):
    async def coro():
        pass

    with pytest.raises(TypeError, match=r'^coroutines cannot be used with add_signal_handler\(\)$'):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    c = coro()
    with pytest.raises(TypeError, match=r'^coroutines cannot be used with add_signal_handler\(\)$'):
        loop.add_signal_handler(signal.SIGUSR1, c)
    c.close()


def test_add_signal_handler_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    # The signal is checked before the loop state.
    with pytest.raises(ValueError):
        loop.add_signal_handler(0, lambda: None)


def test_add_signal_handler_outside_main_thread(loop):
    errors = []

    def other():
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except RuntimeError as exc:
            errors.append(str(exc))

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert errors == ['set_wakeup_fd only works in main thread of the main interpreter']
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


# ----- Ctrl-C in a child process ------------------------------------------------------

def read_line(proc, timeout=10):
    """One line of the child's stdout, waiting at most ``timeout`` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError(f'child printed nothing: {proc.communicate()}')
    return proc.stdout.readline().strip()


def run_child_and_interrupt(source):
    proc = subprocess.Popen([sys.executable, '-c', source], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(proc) == 'ready'
        proc.send_signal(signal.SIGINT)  # this child only, by its PID
        out, err = proc.communicate(timeout=10)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


RUNNER_CHILD = """
import asyncio, sys
import ferroloop

async def main():
    loop = asyncio.get_running_loop()
    print(type(loop).__name__, file=sys.stderr)
    loop.call_soon(lambda: print('ready', flush=True))
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        print('main cancelled', flush=True)
        raise

{run}(main())
"""


def child_outcome(kind):
    run = 'ferroloop.run' if kind == 'ferroloop' else 'asyncio.run'
    rc, out, err = run_child_and_interrupt(RUNNER_CHILD.format(run=run))
    lines = err.strip().splitlines()
    return rc, out.splitlines(), lines[0], lines[-1], 'Traceback (most recent call last):' in err


def test_ctrl_c_with_runner():
    results = {kind: child_outcome(kind) for kind in LOOP_KINDS}
    rc, out, loop_name, last, has_tb = results['ferroloop']
    assert loop_name == 'Loop'
    assert out == ['main cancelled']  # 'ready' was read before the signal
    assert last == 'KeyboardInterrupt'
    assert has_tb
    assert rc == -signal.SIGINT
    # Same as asyncio.run on the stdlib loop (loop class name aside).
    assert results['ferroloop'][:2] == results['asyncio'][:2]
    assert results['ferroloop'][3:] == results['asyncio'][3:]


RUN_FOREVER_CHILD = """
import asyncio
loop = {factory}
loop.call_soon(lambda: print('ready', flush=True))
try:
    loop.run_forever()
except KeyboardInterrupt:
    print('KeyboardInterrupt out of run_forever', flush=True)
print('running', loop.is_running(), flush=True)
loop.close()
print('closed', flush=True)
"""


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_ctrl_c_interrupts_run_forever_asleep_in_poller(kind):
    rc, out, err = run_child_and_interrupt(RUN_FOREVER_CHILD.format(factory=loop_factory_source(kind)))
    assert out.splitlines() == ['KeyboardInterrupt out of run_forever', 'running False', 'closed']
    assert rc == 0, err


INTERRUPTED_CHILD = """
import asyncio, signal, threading
loop = {factory}
{setup}
loop.call_soon(lambda: print('ready', flush=True))
try:
    {blocking}
except KeyboardInterrupt:
    print('interrupted', flush=True)
loop.close()
{after}
"""


def assert_ctrl_c_interrupts(kind, blocking, setup='', after=''):
    """A child on a `kind` loop prints 'ready' from its first callback, then blocks
    in `blocking`: Ctrl-C must get it out with KeyboardInterrupt, and it exits 0."""
    source = INTERRUPTED_CHILD.format(factory=loop_factory_source(kind), setup=setup, blocking=blocking, after=after)
    rc, out, err = run_child_and_interrupt(source)
    assert out.split() == ['interrupted']
    assert rc == 0, err


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_ctrl_c_interrupts_a_loop_waiting_for_a_timer(kind):
    assert_ctrl_c_interrupts(kind, 'loop.run_forever()', setup="loop.call_later(3600, print, 'timer fired')")


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_ctrl_c_while_awaiting_an_executor_thread(kind):
    main = 'async def main():\n    await loop.run_in_executor(None, threading.Event().wait, 3600)'
    # The executor thread never ends: leave without joining it.
    assert_ctrl_c_interrupts(kind, 'loop.run_until_complete(main())', setup=main, after='import os; os._exit(0)')


# The loop thread blocks SIGINT, so the kernel delivers it to the idle thread:
# only the wakeup fd can tell the sleeping loop about it.
MASK_SIGINT_IN_LOOP_THREAD = """
idle = threading.Thread(target=threading.Event().wait, daemon=True)
idle.start()
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])"""


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_ctrl_c_delivered_to_another_thread_wakes_the_loop(kind):
    if kind == 'asyncio':
        pytest.skip('the stdlib selector loop sets no wakeup fd without add_signal_handler: '
                    'it wakes only if the signal lands before it sleeps (uvloop #295); '
                    'ferroloop routes signals to its poller')
    assert_ctrl_c_interrupts(kind, 'loop.run_forever()', setup=MASK_SIGINT_IN_LOOP_THREAD)


def test_wakeup_fd_of_the_application_keeps_working_and_is_restored(loop):
    """Python has one wakeup fd. The stdlib loop leaves the application's alone
    (without signal handlers); ferroloop borrows it while running and must forward
    the signal bytes to it, and restore it."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        signal.set_wakeup_fd(b.fileno())
        signal.signal(signal.SIGUSR1, lambda *args: None)
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_soon(lambda: loop.call_soon(loop.stop))
        loop.run_forever()
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            assert sel.select(10)
        assert a.recv(10) == bytes([signal.SIGUSR1])
        assert signal.set_wakeup_fd(-1) == b.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        a.close()
        b.close()
