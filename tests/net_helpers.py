"""Shared pieces of the transport tests (test_tcp, test_unix, test_streams): the
loop fixture that runs every case on the stdlib loop and on ferroloop, protocols
that record what happened, and fd counting."""

import asyncio
import contextlib
import os

import pytest

import ferroloop

LOOPS = {
    'asyncio': asyncio.new_event_loop,
    'ferroloop': ferroloop.new_event_loop,
}


@contextlib.contextmanager
def current_loop(kind):
    """A new loop of `kind` (a key of LOOPS), the current loop until it is closed."""
    lp = LOOPS[kind]()
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    lp.close()


@pytest.fixture(params=sorted(LOOPS))
def loop(request):
    with current_loop(request.param) as lp:
        errors = []
        lp.set_exception_handler(lambda l, ctx: errors.append(ctx))
        lp.errors = errors  # what reached the exception handler
        yield lp


def run(loop, coro, timeout=30):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def is_ferroloop(loop):
    return isinstance(loop, ferroloop.Loop)


def open_fds():
    return len(os.listdir('/proc/self/fd'))


class Recorder(asyncio.Protocol):
    """Records every callback; futures for the interesting moments."""

    def __init__(self, loop=None, *, eof_keep_open=False, echo=False):
        loop = loop or asyncio.get_event_loop()
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.eof_keep_open = eof_keep_open
        self.echo = echo
        self.paused = 0
        self.resumed = 0
        self.waiters = []

    def connection_made(self, transport):
        self.events.append('made')
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert type(data) is bytes
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        self.data.extend(data)
        if self.echo:
            self.transport.write(data)
        for want, fut in list(self.waiters):
            if len(self.data) >= want and not fut.done():
                fut.set_result(None)

    def wait_for_bytes(self, n):
        fut = asyncio.get_event_loop().create_future()
        if len(self.data) >= n:
            fut.set_result(None)
        else:
            self.waiters.append((n, fut))
        return fut

    def eof_received(self):
        self.events.append('eof')
        self.eof.set_result(None)
        return self.eof_keep_open

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost.set_result(exc)
