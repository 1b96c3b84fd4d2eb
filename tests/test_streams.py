"""asyncio streams (open_connection, start_server, open_unix_connection,
start_unix_server) unchanged on ferroloop's transports: every case on the stdlib
loop and on ferroloop with the same assertions."""

import asyncio
import hashlib
import os
import socket
import tempfile

import pytest

from net_helpers import loop, run  # noqa: F401

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
