"""asyncio streams (open_connection, start_server, open_unix_connection,
start_unix_server) unchanged on ferroloop's transports: every case on the stdlib
loop and on ferroloop with the same assertions."""

import asyncio
import gc
import hashlib
import os
import re
import socket
import tempfile
import warnings

import pytest

from net_helpers import LOOPS, loop, run  # noqa: F401

MiB = 1024 * 1024


async def echo_handler(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


def test_lines_and_exact_reads(loop):
    async def handler(reader, writer):
        line = await reader.readline()
        writer.write(b'you said: ' + line)
        n = int(await reader.readexactly(4))
        writer.write(await reader.readexactly(n))
        writer.write(b'bye\n')
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        addr = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*addr)
        assert isinstance(writer.transport, asyncio.Transport)
        assert writer.get_extra_info('peername') == addr
        writer.write(b'hello\n')
        assert await reader.readline() == b'you said: hello\n'
        writer.writelines([b'0005', b'abcde'])
        assert await reader.readexactly(5) == b'abcde'
        assert await reader.readuntil(b'\n') == b'bye\n'
        assert await reader.read() == b''
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_large_echo_with_drain(loop):
    async def main():
        server = await asyncio.start_server(echo_handler, '127.0.0.1', 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        data = hashlib.sha256(b'streams').digest() * (8 * MiB // 32)

        async def send():
            for i in range(0, len(data), 300_000):
                writer.write(data[i:i + 300_000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        got = await reader.read()
        await sender
        assert got == data
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    run(loop, main(), timeout=60)


def test_incomplete_read_and_limit(loop):
    async def handler(reader, writer):
        writer.write(b'x' * 100 + b'\n' + b'short')
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname(), limit=50)
        with pytest.raises(ValueError, match='chunk is longer than limit|chunk exceed the limit'):
            await reader.readline()
        with pytest.raises(asyncio.IncompleteReadError) as e:
            await reader.readexactly(1000)
        assert e.value.partial.endswith(b'short')
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    run(loop, main())


def test_unix_streams(loop):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 's')

        async def main():
            server = await asyncio.start_unix_server(echo_handler, path)
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b'over unix')
            writer.write_eof()
            assert await reader.read() == b'over unix'
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
        run(loop, main())


def test_serve_forever_with_streams(loop):
    async def main():
        server = await asyncio.start_server(echo_handler, '127.0.0.1', 0, start_serving=False)
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b'ping')
        writer.write_eof()
        assert await reader.read() == b'ping'
        writer.close()
        await writer.wait_closed()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
    run(loop, main())


def test_peer_reset_surfaces_in_reader(loop):
    import struct
    accepted = []

    async def handler(reader, writer):
        accepted.append(writer)

    async def main():
        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        for _ in range(100):
            if accepted:
                break
            await asyncio.sleep(0)
        sw = accepted[0]
        sw.get_extra_info('socket').setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        sw.transport.abort()
        with pytest.raises(ConnectionResetError):
            await reader.read()
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    run(loop, main())


def test_connection_refused_through_streams(loop):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection('127.0.0.1', port)
    run(loop, main())


# ----- ResourceWarnings of unclosed streams, compared with the stdlib loop --------------

def _warning_kinds(caught):
    """The ResourceWarnings caught, as loop-independent kinds, sorted."""
    kinds = []
    for w in caught:
        if not issubclass(w.category, ResourceWarning):
            continue
        msg = str(w.message)
        m = re.match(r'unclosed transport|unclosed <(socket\.socket|StreamWriter)|loop is closed', msg)
        kinds.append(m.group(0) if m else msg)
    return sorted(kinds)


def _collect_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        gc.collect()
    return _warning_kinds(caught)


def _unclosed_writer_warnings(kind):
    # CPython's test_streams.test_unclosed_resource_warnings: one StreamWriter
    # dropped unclosed gives exactly one warning, from StreamWriter.__del__ (which
    # closes the transport, so the transport and its socket stay quiet).
    lp = LOOPS[kind]()
    asyncio.set_event_loop(lp)

    async def handler(reader, writer):
        await reader.readline()
        writer.write(b'hello\n')
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        rd, wr = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        wr.write(b'hi\n')
        assert await rd.read() == b'hello\n'
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', ResourceWarning)
            del wr
            gc.collect()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        return _warning_kinds(caught)

    try:
        return lp.run_until_complete(main()), _collect_warnings()
    finally:
        asyncio.set_event_loop(None)
        lp.close()


def _abandoned_connection_warnings(kind):
    # A connection abandoned by a failing coroutine (CPython's test_start_tls on a
    # loop without start_tls): collected after the loop closed, in a cycle with the
    # traceback. asyncio warns for its socket, transport and StreamWriter (and
    # those of the server side before 3.13).
    lp = LOOPS[kind]()
    asyncio.set_event_loop(lp)

    async def main():
        accepted = lp.create_future()
        server = await asyncio.start_server(lambda r, w: accepted.set_result(None),
                                            '127.0.0.1', 0)
        try:
            rd, wr = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            raise ZeroDivisionError
        except ZeroDivisionError as exc:
            error = exc
        await accepted
        server.close()
        return error

    gc.disable()
    try:
        error = lp.run_until_complete(main())
        asyncio.set_event_loop(None)
        lp.close()
        del error
        return _collect_warnings()
    finally:
        gc.enable()


# StreamWriter warns when collected unclosed from 3.11; on 3.10 only its
# transport does, later.
WRITER_WARNS = hasattr(asyncio.StreamWriter, '__del__')


def test_unclosed_writer_warns_once_like_asyncio():
    expected = (['unclosed <StreamWriter'], []) if WRITER_WARNS else ([], ['unclosed transport'])
    assert _unclosed_writer_warnings('asyncio') == expected
    assert _unclosed_writer_warnings('ferroloop') == expected


def test_abandoned_connection_warnings_like_asyncio():
    stdlib = _abandoned_connection_warnings('asyncio')
    # The client's three; the server side's too before 3.13.
    writer = {'loop is closed'} if WRITER_WARNS else set()
    assert set(stdlib) == writer | {'unclosed <socket.socket', 'unclosed transport'}
    assert _abandoned_connection_warnings('ferroloop') == stdlib
