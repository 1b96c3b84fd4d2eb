"""CPython's own low-level socket tests (``test.test_asyncio.test_sock_lowlevel``'s
``BaseSockTestsMixin`` and ``test_sendfile``'s ``SockSendfileMixin``) run on ferroloop.

The sendfile mixin's tests get a receiving
side built from ``sock_accept``/``sock_recv`` instead of ``create_server``, with
their assertions unchanged."""

import asyncio

import pytest

import ferroloop

tsl = pytest.importorskip('test.test_asyncio.test_sock_lowlevel')
tsf = pytest.importorskip('test.test_asyncio.test_sendfile')
test_utils = pytest.importorskip('test.test_asyncio.utils')



class TestFerroloopSockLowlevel(tsl.BaseSockTestsMixin, test_utils.TestCase):
    def create_event_loop(self):
        return ferroloop.new_event_loop()


class _SockReceiver:
    """The receiving end ``MyProto`` + ``create_server`` gave the mixin: accepts one
    connection and collects everything until EOF, with the loop's sock_* methods."""

    def __init__(self, loop, listener):
        self.data = bytearray()
        self.transport = None
        self._task = loop.create_task(self._run(loop, listener))

    async def _run(self, loop, listener):
        conn, _ = await loop.sock_accept(listener)
        with conn:
            while True:
                chunk = await loop.sock_recv(conn, 65536)
                if not chunk:
                    return
                self.data.extend(chunk)

    async def wait_closed(self):
        await self._task


class TestFerroloopSockSendfile(tsf.SockSendfileMixin, test_utils.TestCase):
    def create_event_loop(self):
        return ferroloop.new_event_loop()

    def prepare_socksendfile(self):
        listener = self.make_socket()
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)
        # As upstream: before the handshake, so the window is negotiated for it.
        self.reduce_receive_buffer_size(listener)
        proto = _SockReceiver(self.loop, listener)
        sock = self.make_socket()
        self.run_loop(self.loop.sock_connect(sock, listener.getsockname()))
        self.reduce_send_buffer_size(sock)
        return sock, proto


def test_stdlib_mixins_are_the_ones_we_adapted():
    # If CPython renames these hooks, the adaptations above silently stop applying.
    assert hasattr(tsf.SockSendfileMixin, 'prepare_socksendfile')
    assert hasattr(tsl.BaseSockTestsMixin, 'test_create_connection_sock')
    assert asyncio.iscoroutinefunction(_SockReceiver.wait_closed)
