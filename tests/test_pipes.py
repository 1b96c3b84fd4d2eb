"""Pipe transports (``connect_read_pipe`` / ``connect_write_pipe``) on pipes, FIFOs,
sockets and ptys: every case on the stdlib loop and on ferroloop with the same
assertions (the ``loop`` fixture of conftest, which also fails a test that leaks
an fd). "Nothing arrives" is checked by running the loop a few iterations, never by
sleeping."""

import asyncio
import gc
import hashlib
import os
import pty
import socket
import sys
import tempfile

import pytest

import ferroloop

from net_helpers import Recorder


def run(loop, coro, timeout=30):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def iterations(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


def reading(tr, expected):
    """``tr.is_reading() == expected``; asyncio's read pipe has no is_reading before
    3.11 (it raises NotImplementedError), ferroloop's always has it."""
    if sys.version_info < (3, 11) and not isinstance(tr._loop, ferroloop.Loop):
        return True
    return tr.is_reading() == expected


def collect_errors(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    return errors


@pytest.fixture
def os_pipe():
    """A pipe as two unbuffered file objects (closed by the transports or here)."""
    r, w = os.pipe()
    rf, wf = open(r, 'rb', buffering=0), open(w, 'wb', buffering=0)
    yield rf, wf
    rf.close()
    wf.close()


def test_read_pipe_data_then_eof_then_lost(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        proto = Recorder(loop)
        tr, p = await loop.connect_read_pipe(lambda: proto, rf)
        assert p is proto and proto.transport is tr
        assert isinstance(tr, asyncio.ReadTransport)
        assert tr.get_extra_info('pipe') is rf
        assert reading(tr, True) and not tr.is_closing()
        wf.write(b'hello ')
        wf.write(b'world')
        await proto.wait_for_bytes(11)
        wf.close()
        exc = await proto.lost
        return exc, proto.events, bytes(proto.data), tr.is_closing()

    exc, events, data, closing = run(loop, main())
    assert exc is None
    assert data == b'hello world'
    assert events == ['made', 'data', 'eof', 'lost']
    assert closing
    assert rf.closed  # the transport closes the pipe at connection_lost


def test_read_pipe_eof_closes_even_if_eof_received_keeps_open(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        proto = Recorder(loop, eof_keep_open=True)
        await loop.connect_read_pipe(lambda: proto, rf)
        wf.close()
        return await proto.lost, proto.events

    assert run(loop, main()) == (None, ['made', 'eof', 'lost'])


def test_read_pipe_pause_and_resume(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, rf)
        tr.pause_reading()
        tr.pause_reading()  # idempotent
        assert reading(tr, False)
        wf.write(b'x' * 1000)
        await iterations(10)
        held = len(proto.data)
        tr.resume_reading()
        assert reading(tr, True)
        await proto.wait_for_bytes(1000)
        tr.close()
        assert tr.is_closing() and reading(tr, False)
        tr.resume_reading()  # no effect once closing
        exc = await proto.lost
        return held, bytes(proto.data), exc, proto.events

    held, data, exc, events = run(loop, main())
    assert held == 0
    assert data == b'x' * 1000
    assert exc is None
    assert events == ['made', 'data', 'lost']  # close(): no eof_received


def test_read_pipe_data_polled_with_the_resume_comes_after_callbacks_queued_meanwhile(loop, os_pipe):
    """Data the very poll before `resume_reading()` saw: asyncio's reader, added by
    the resume, finds it at the next poll, after what was queued meanwhile."""
    rf, wf = os_pipe

    log = []

    class Logged(Recorder):
        def data_received(self, data):
            log.append('data_received')
            super().data_received(data)

    async def main():
        proto = Logged(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, rf)
        tr.pause_reading()
        await iterations()

        def resume():
            tr.resume_reading()
            loop.call_soon(log.append, 'queued after the resume')

        def write_then_resume():
            wf.write(b'x')  # seen by the next poll, whose batch runs the resume
            loop.call_soon(resume)

        loop.call_soon(write_then_resume)
        await proto.wait_for_bytes(1)
        assert log == ['queued after the resume', 'data_received']
        tr.close()
        await proto.lost

    run(loop, main())


@pytest.mark.parametrize('method,message', [
    ('connect_read_pipe', 'Pipe transport is for pipes/sockets only.'),
    ('connect_write_pipe', 'Pipe transport is only for pipes, sockets and character devices'),
])
def test_regular_file_is_refused(loop, method, message):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(ValueError) as info:
            run(loop, getattr(loop, method)(asyncio.Protocol, f))
    assert str(info.value) == message


def test_write_pipe_flow_control_and_order(loop, os_pipe):
    rf, wf = os_pipe
    payload = os.urandom(1 << 20)

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        assert isinstance(tr, asyncio.WriteTransport)
        assert tr.get_extra_info('pipe') is wf
        assert tr.can_write_eof()
        tr.set_write_buffer_limits(high=16384, low=4096)
        assert tr.get_write_buffer_limits() == (4096, 16384)
        for i in range(0, len(payload), 65536):
            tr.write(payload[i:i + 65536])
        queued = tr.get_write_buffer_size()
        assert proto.paused == 1 and proto.resumed == 0
        got = bytearray()
        reader = asyncio.StreamReader()
        rt, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rf)
        while len(got) < len(payload):
            got += await reader.read(1 << 20)
        assert tr.get_write_buffer_size() == 0
        tr.close()
        assert await proto.lost is None
        assert await reader.read() == b''
        return queued, proto.resumed, bytes(got)

    queued, resumed, got = run(loop, main())
    assert queued > 16384  # the pipe holds 64 KiB at most
    assert resumed == 1
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_write_eof_closes_once_drained_and_later_writes_are_dropped(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        tr.write(b'abc')
        tr.write_eof()
        assert tr.is_closing()
        tr.write(b'dropped')  # asyncio drops writes after write_eof, silently
        exc = await proto.lost
        return exc, wf.closed, rf.read()

    assert run(loop, main()) == (None, True, b'abc')


def test_reader_going_away_closes_the_write_pipe(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        proto = Recorder(loop)
        await loop.connect_write_pipe(lambda: proto, wf)
        rf.close()
        return await proto.lost

    assert run(loop, main()) is None


def test_reader_going_away_with_data_queued_is_broken_pipe(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        tr.write(b'x' * (1 << 20))
        assert tr.get_write_buffer_size() > 0
        rf.close()
        return await proto.lost

    assert isinstance(run(loop, main()), BrokenPipeError)


def test_write_to_a_closed_reader_is_broken_pipe_without_handler(loop, os_pipe):
    rf, wf = os_pipe
    errors = collect_errors(loop)

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        rf.close()
        tr.write(b'data')  # EPIPE at once, before the loop sees the reader go
        exc = await proto.lost
        for _ in range(6):
            tr.write(b'more')  # counted, dropped
        return exc, tr._conn_lost

    exc, conn_lost = run(loop, main())
    assert isinstance(exc, BrokenPipeError)
    assert conn_lost == 7
    assert errors == []  # OSErrors of a write pipe are logged in debug mode only


def test_abort_drops_queued_data(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        tr.write(b'y' * (1 << 20))
        queued = tr.get_write_buffer_size()
        tr.abort()
        assert tr.get_write_buffer_size() == 0
        return queued, await proto.lost

    queued, exc = run(loop, main())
    assert queued > 0 and exc is None


def test_write_rejects_non_bytes(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        tr, _ = await loop.connect_write_pipe(asyncio.Protocol, wf)
        with pytest.raises(AssertionError):
            tr.write('text')
        tr.write(b'')  # nothing
        tr.writelines([b'a', bytearray(b'b'), memoryview(b'c')])
        with pytest.raises(ValueError) as info:
            tr.set_write_buffer_limits(high=1, low=2)
        tr.close()
        await iterations()
        return str(info.value), rf.read()

    message, data = run(loop, main())
    assert message == 'high (1) must be >= low (2) must be >= 0'
    assert data == b'abc'


def test_data_received_error_goes_to_the_handler_and_reading_goes_on(loop, os_pipe):
    rf, wf = os_pipe
    errors = collect_errors(loop)

    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if len(self.data) == 1:
                raise ZeroDivisionError('boom')

    async def main():
        proto = Failing(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, rf)
        wf.write(b'1')
        while not errors:
            await asyncio.sleep(0)
        wf.write(b'23')
        await proto.wait_for_bytes(3)
        tr.close()
        await proto.lost
        return bytes(proto.data)

    assert run(loop, main()) == b'123'
    assert [type(e['exception']) for e in errors] == [ZeroDivisionError]


def test_fifo_both_ends(loop):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'fifo')
        os.mkfifo(path)
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        rf, wf = open(rfd, 'rb', buffering=0), open(wfd, 'wb', buffering=0)

        async def main():
            rproto, wproto = Recorder(loop), Recorder(loop)
            await loop.connect_read_pipe(lambda: rproto, rf)
            wt, _ = await loop.connect_write_pipe(lambda: wproto, wf)
            wt.write(b'through the fifo')
            wt.close()
            assert await wproto.lost is None
            assert await rproto.lost is None
            return bytes(rproto.data), rproto.events

        assert run(loop, main()) == (b'through the fifo', ['made', 'data', 'eof', 'lost'])


def test_socket_as_pipes(loop):
    a, b = socket.socketpair()

    async def main():
        rproto, wproto = Recorder(loop), Recorder(loop)
        await loop.connect_read_pipe(lambda: rproto, a)
        wt, _ = await loop.connect_write_pipe(lambda: wproto, b)
        wt.write(b'over a socket')
        await rproto.wait_for_bytes(13)
        wt.close()
        assert await wproto.lost is None
        assert await rproto.lost is None
        return bytes(rproto.data), a.fileno(), b.fileno()

    data, afd, bfd = run(loop, main())
    assert (data, afd, bfd) == (b'over a socket', -1, -1)  # both sockets closed


def test_pty_read_and_write(loop):
    master, slave = pty.openpty()
    mf = open(master, 'rb', buffering=0)
    sf = open(slave, 'wb', buffering=0)

    async def main():
        rproto = Recorder(loop)
        await loop.connect_read_pipe(lambda: rproto, mf)
        wproto = Recorder(loop)
        wt, _ = await loop.connect_write_pipe(lambda: wproto, sf)
        wt.write(b'via the tty\n')
        await rproto.wait_for_bytes(len(b'via the tty\r\n'))
        wt.close()  # the slave closes: reading the master fails with EIO
        assert await wproto.lost is None
        return bytes(rproto.data), await rproto.lost, rproto.events

    data, exc, events = run(loop, main())
    assert data == b'via the tty\r\n'
    assert isinstance(exc, OSError) and exc.errno == 5  # EIO, reported quietly
    assert events == ['made', 'data', 'lost']


def test_write_pipe_to_dev_null(loop):
    f = open(os.devnull, 'wb', buffering=0)

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, f)
        tr.write(b'z' * 100000)
        assert tr.get_write_buffer_size() == 0
        tr.close()
        return await proto.lost

    assert run(loop, main()) is None
    assert f.closed


def test_unclosed_transport_warns_and_closes_the_pipe(loop, os_pipe):
    rf, wf = os_pipe

    async def main():
        tr, _ = await loop.connect_read_pipe(asyncio.Protocol, rf)
        return repr(tr)

    text = run(loop, main())
    assert 'fd=' in text
    with pytest.warns(ResourceWarning, match='unclosed transport'):
        loop.close()  # the loop's reader holds the transport until then
        gc.collect()
    assert rf.closed


def test_write_and_close_in_connection_made_still_drains(loop, os_pipe):
    # More than the pipe holds, written and closed before the transport watches
    # its fd: what the kernel did not take must still go out, then connection_lost.
    rf, wf = os_pipe
    payload = os.urandom(1 << 20)

    class WriteAndClose(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(payload)
            transport.close()

    async def main():
        proto = WriteAndClose(loop)
        await loop.connect_write_pipe(lambda: proto, wf)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rf)
        got = await reader.read(-1)
        return got == payload, await proto.lost

    assert run(loop, main(), timeout=10) == (True, None)
