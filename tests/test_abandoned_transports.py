"""Stream (and read pipe) transports the application drops without closing them: the loop keeps
one that reads or still has data to send, and lets go of one that waits for
nothing (reading paused, or past end of file with nothing left to send), as
asyncio's selector keeps a transport only while it has a reader or a writer. The
collector then finds it, it warns "unclosed transport" and closes its socket; a
loop that kept it would leak the socket for its lifetime. Every case runs on the
stdlib loop and on ferroloop with the same assertions."""

import asyncio
import gc
import os
import socket
import warnings
import weakref

import pytest

from net_helpers import loop, open_fds, run  # noqa: F401


class Keeper(asyncio.Protocol):
    """Records what arrives; `eof_received` keeps the transport open (half-closed)."""

    def __init__(self):
        self.data = bytearray()
        self.eof = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof = True
        return True


async def yield_until(predicate, limit=200):
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError('condition not reached')


@pytest.fixture(autouse=True)
def collect_only_when_told():
    """No automatic collection: it would warn outside `collect()`'s record. What a
    failed case left behind is collected after it, so the next case starts clean."""
    gc.disable()
    yield
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ResourceWarning)
        gc.collect()
    gc.enable()


def collect():
    """`gc.collect()`; the ResourceWarnings it raised, as message prefixes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        gc.collect()
    return [str(w.message).split(' <')[0] for w in caught if issubclass(w.category, ResourceWarning)]


async def paused_transport(loop, sock):
    """A transport over `sock`, paused once its reading started; its protocol."""
    tr, pr = await loop.create_connection(Keeper, sock=sock)
    await asyncio.sleep(0)  # connection_made, then the reading starts
    tr.pause_reading()
    return pr


async def receive(peer, n):
    """`n` bytes from the non-blocking socket `peer`, yielding to the loop while it
    has none."""
    received = bytearray()
    while len(received) < n:
        try:
            received += peer.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0)
    return bytes(received)


def drop(protocol):
    """Forgets the transport everywhere but in the loop: the protocol and the
    transport refer to each other, so only the collector can free them."""
    ref = weakref.ref(protocol.transport)
    protocol.transport = None
    return ref


@pytest.mark.parametrize('idle', ['past_eof', 'paused'])
def test_a_transport_waiting_for_nothing_is_collected_and_closed(loop, idle):
    async def main():
        ours, peer = socket.socketpair()
        with peer:
            tr, pr = await loop.create_connection(Keeper, sock=ours)
            del tr
            await asyncio.sleep(0)  # connection_made, then the reading starts
            if idle == 'paused':
                pr.transport.pause_reading()
            else:
                peer.shutdown(socket.SHUT_WR)
                await yield_until(lambda: pr.eof)
            ref = drop(pr)
            assert collect() == ['unclosed transport']
            assert ref() is None
            # Its socket was closed: the peer reads end of file.
            peer.settimeout(10)
            assert peer.recv(10) == b''
    run(loop, main())


def test_a_reading_transport_is_kept(loop):
    async def main():
        ours, peer = socket.socketpair()
        with peer:
            tr, pr = await loop.create_connection(Keeper, sock=ours)
            del tr
            ref = drop(pr)
            assert collect() == []
            peer.sendall(b'still read')
            await yield_until(lambda: pr.data == b'still read')
            ref().close()
    run(loop, main())


@pytest.mark.parametrize('then', ['nothing', 'write_eof'])
def test_a_transport_with_data_to_send_is_kept_until_it_is_sent(loop, then):
    """Paused (so nothing but its send buffer ties it to the loop), with more
    written than the socket takes (and its end of file, when `write_eof`): every
    byte reaches the peer, then it goes."""
    async def main():
        ours, peer = socket.socketpair()
        with peer:
            pr = await paused_transport(loop, ours)
            blob = bytes(range(256)) * 8192  # 2 MiB: more than socket buffers hold
            pr.transport.write(blob)
            if then == 'write_eof':
                pr.transport.write_eof()
            assert pr.transport.get_write_buffer_size() > 0
            ref = drop(pr)
            assert collect() == []
            peer.setblocking(False)
            assert await receive(peer, len(blob)) == blob
            # Sent: nothing holds it now but the collector's reach.
            await yield_until(lambda: ref().get_write_buffer_size() == 0)
            if then == 'write_eof':
                await yield_until(lambda: peer.recv(1) == b'')  # its end of file
            assert collect() == ['unclosed transport']
            assert ref() is None
    run(loop, main())


def test_a_paused_transport_is_let_go_after_a_sendfile(loop, tmp_path):
    """`loop.sendfile` takes the socket and gives it back: a transport that was
    paused is idle again afterwards."""
    async def main():
        path = tmp_path / 'blob'
        path.write_bytes(bytes(range(256)) * 256)
        ours, peer = socket.socketpair()
        with peer:
            pr = await paused_transport(loop, ours)
            peer.setblocking(False)
            with open(path, 'rb') as f:
                sent, received = await asyncio.gather(loop.sendfile(pr.transport, f), receive(peer, 65536))
            assert sent == 65536 and received == path.read_bytes()
            ref = drop(pr)
            assert collect() == ['unclosed transport']
            assert ref() is None
    run(loop, main())


@pytest.mark.parametrize('idle', ['past_eof', 'paused'])
def test_an_idle_transport_the_application_keeps_works_on(loop, idle):
    """A collection while the transport is idle changes nothing for an application
    that kept it: it reads again once resumed, and writes after end of file."""
    async def main():
        ours, peer = socket.socketpair()
        with peer:
            tr, pr = await loop.create_connection(Keeper, sock=ours)
            await asyncio.sleep(0)
            if idle == 'paused':
                tr.pause_reading()
            peer.sendall(b'while idle')
            if idle == 'past_eof':
                peer.shutdown(socket.SHUT_WR)
                await yield_until(lambda: pr.eof)
            else:
                await asyncio.sleep(0)
            assert collect() == []
            if idle == 'paused':
                for _ in range(10):
                    await asyncio.sleep(0)
                assert pr.data == b''
                tr.resume_reading()
            await yield_until(lambda: pr.data == b'while idle')
            tr.write(b'reply')
            peer.setblocking(False)
            assert await loop.sock_recv(peer, 10) == b'reply'
            tr.close()
            await asyncio.sleep(0)
    run(loop, main())


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_collected_transport_lets_go_of_its_fd_when_warnings_are_errors(loop):
    """Its finalizer's warning raises (and is only printed, as an exception in a
    finalizer is): the fd number, reused by a new socket, still takes callbacks."""
    async def main():
        ours, peer = socket.socketpair()
        fd = ours.fileno()
        with peer:
            pr = await paused_transport(loop, ours)
            del ours
            drop(pr)
            with warnings.catch_warnings():
                warnings.simplefilter('error', ResourceWarning)
                gc.collect()
        a, b = socket.socketpair()
        with a, b:
            reused, other = (a, b) if a.fileno() == fd else (b, a)
            assert reused.fileno() == fd
            readable = loop.create_future()
            loop.add_reader(reused, readable.set_result, None)
            other.send(b'x')
            await asyncio.wait_for(readable, 10)
            loop.remove_reader(reused)
    run(loop, main())


async def paused_read_pipe(loop):
    """A read pipe transport, paused once its reading started; its protocol and
    the write end's fd."""
    rfd, wfd = os.pipe()
    _, pr = await loop.connect_read_pipe(Keeper, os.fdopen(rfd, 'rb', 0))
    await asyncio.sleep(0)
    pr.transport.pause_reading()
    return pr, wfd


def test_a_paused_read_pipe_is_collected_and_closed(loop):
    """As a paused stream transport: asyncio's selector has no reader for it."""
    async def main():
        pr, wfd = await paused_read_pipe(loop)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', ResourceWarning)
            # asyncio's transport is freed here, ferroloop's (a cycle with its
            # core) by the collector, which may finalize its file object first
            # ("unclosed file" too).
            ref = drop(pr)
            gc.collect()
        assert 'unclosed transport' in [str(w.message).split(' <')[0] for w in caught]
        del caught  # a warning keeps its source, the transport, alive
        assert ref() is None
        with pytest.raises(BrokenPipeError):  # its read end was closed
            os.write(wfd, b'x')
        os.close(wfd)
    run(loop, main())


def test_a_read_pipe_paused_then_resumed_is_kept(loop):
    async def main():
        pr, wfd = await paused_read_pipe(loop)
        pr.transport.resume_reading()
        ref = drop(pr)
        assert collect() == []
        os.write(wfd, b'still read')
        await yield_until(lambda: pr.data == b'still read')
        ref().close()
        os.close(wfd)
    run(loop, main())


def test_a_server_connection_its_handler_left_open_is_reclaimed(loop):
    """A `start_server` handler that returns without closing its writer after the
    client's end of file: the connection is freed by the collector, its socket
    closed, and the server's `wait_closed` does not wait for it."""
    async def main():
        handled = asyncio.Event()

        async def handler(reader, writer):
            writer.write(await reader.read())
            handled.set()

        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        before = open_fds()
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        w.write(b'echo me')
        w.write_eof()
        assert await r.readexactly(7) == b'echo me'
        await handled.wait()
        w.close()
        await w.wait_closed()
        del r, w
        # The handler's task ended in the step that set `handled`; its done
        # callbacks (from 3.12, start_server's holds the transport) run now.
        await asyncio.sleep(0)
        collect()
        assert open_fds() == before
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)
    run(loop, main())
