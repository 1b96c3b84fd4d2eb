"""The two-loop fixture: every test that takes ``loop`` runs once on the stdlib's
selector loop (the spec) and once on ferroloop, with the same assertions.

The fixture also checks hygiene around each test: the loop is closed at the end,
and no file descriptor opened during the test is left open (a leak in either
loop fails the test)."""

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys

import pytest

import ferroloop

# A shell's background job starts Python with SIGINT ignored and no
# KeyboardInterrupt handler; the Ctrl-C tests need the handler a foreground run has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# CPython's test_asyncio runner lives there and is not a pytest suite.
collect_ignore = ['conformance']

LOOP_KINDS = ('asyncio', 'ferroloop')


def new_loop(kind):
    if kind == 'asyncio':
        return asyncio.SelectorEventLoop()
    return ferroloop.new_event_loop()


def open_fds():
    """The fds open in this process, as a set of ints (the listing's own fd excluded)."""
    dir_fd = os.open('/proc/self/fd', os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {int(n) for n in os.listdir(dir_fd)} - {dir_fd}
    finally:
        os.close(dir_fd)


def fd_target(fd):
    try:
        return os.readlink(f'/proc/self/fd/{fd}')
    except OSError:
        return '?'


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request):
    return request.param


@pytest.fixture
def loop(loop_kind):
    """A fresh loop of either kind; closed after the test, which must leak no fd."""
    gc.collect()
    before = open_fds()
    lp = new_loop(loop_kind)
    yield lp
    assert not lp.is_running(), 'test left the loop running'
    if not lp.is_closed():
        lp.close()
    asyncio.set_event_loop(None)
    del lp
    gc.collect()
    leaked = open_fds() - before
    assert not leaked, f'fds leaked: {[(fd, fd_target(fd)) for fd in sorted(leaked)]}'


@pytest.fixture
def make_loop(loop_kind):
    """A factory for extra loops of the same kind, all closed after the test."""
    made = []

    def make():
        lp = new_loop(loop_kind)
        made.append(lp)
        return lp

    yield make
    for lp in made:
        if not lp.is_closed() and not lp.is_running():
            lp.close()


def run_python(code_or_args, *, env=None, timeout=30, cwd=None, **kwargs):
    """Run the interpreter of this venv in a subprocess (never a shell)."""
    args = code_or_args if isinstance(code_or_args, list) else ['-c', code_or_args]
    full_env = dict(os.environ)
    full_env.pop('PYTHONASYNCIODEBUG', None)
    full_env.pop('PYTHONDEVMODE', None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd, **kwargs)


def loop_factory_source(kind):
    """Python source for an expression creating a loop of ``kind`` in a subprocess."""
    return 'asyncio.SelectorEventLoop()' if kind == 'asyncio' else '__import__("ferroloop").new_event_loop()'


@pytest.fixture
def pair():
    """A connected, non-blocking socket pair."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()
