"""Unix stream transports and servers (create_unix_connection,
create_unix_server: filesystem and abstract names, socket file cleanup): every case
on the stdlib loop and on ferroloop with the same assertions."""

import asyncio
import errno
import hashlib
import os
import pathlib
import socket
import sys
import tempfile

import pytest

from net_helpers import Recorder, is_ferroloop, loop, open_fds, run  # noqa: F401

MiB = 1024 * 1024


@pytest.fixture
def sock_path():
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, 'sock')


def collecting(loop, protos, **kw):
    def factory():
        protos.append(Recorder(loop, **kw))
        return protos[-1]
    return factory


async def yield_n(n):
    for _ in range(n):
        await asyncio.sleep(0)


def test_echo_over_a_path(loop, sock_path):
    async def main():
        protos = []
        server = await loop.create_unix_server(collecting(loop, protos, echo=True), sock_path)
        assert os.path.exists(sock_path)
        [s] = server.sockets
        assert s.family == socket.AF_UNIX and s.getsockname() == sock_path
        tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_extra_info('peername') == sock_path
        assert tr.get_extra_info('sockname') == ''
        data = hashlib.sha512(b'unix').digest() * (4 * MiB // 64)
        tr.write(data)
        await pr.wait_for_bytes(len(data))
        assert pr.data == data
        tr.write_eof()
        await pr.eof
        await pr.lost
        await protos[0].lost
        server.close()
        await server.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_pathlike_and_abstract_names(loop, sock_path):
    abstract = f'\0ferroloop-test-{os.getpid()}-{id(loop)}'

    async def main():
        for address in (pathlib.Path(sock_path), abstract):
            protos = []
            server = await loop.create_unix_server(collecting(loop, protos, echo=True), address)
            tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), address)
            tr.write(b'abc')
            await pr.wait_for_bytes(3)
            tr.close()
            await pr.lost
            await protos[0].lost
            server.close()
            await server.wait_closed()
    run(loop, main())


@pytest.mark.skipif(sys.version_info >= (3, 13), reason='3.13+ removes the socket file')
def test_socket_file_is_left_on_close_before_3_13(loop, sock_path):
    # asyncio before 3.13 never removes the file and has no cleanup_socket.
    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, sock_path)
        server.close()
        await server.wait_closed()
        assert os.path.exists(sock_path)
        with socket.socket(socket.AF_UNIX) as sock:  # a socket bound by the caller too
            os.unlink(sock_path)
            sock.bind(sock_path)
            server = await loop.create_unix_server(asyncio.Protocol, sock=sock)
            server.close()
            await server.wait_closed()
        assert os.path.exists(sock_path)
        with pytest.raises(TypeError, match='cleanup_socket'):
            await loop.create_unix_server(asyncio.Protocol, sock_path, cleanup_socket=False)
    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason='cleanup_socket is 3.13+')
def test_socket_file_is_removed_on_close(loop, sock_path):
    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, sock_path)
        assert os.path.exists(sock_path)
        server.close()
        await server.wait_closed()
        assert not os.path.exists(sock_path)
        # cleanup_socket=False leaves it.
        server = await loop.create_unix_server(asyncio.Protocol, sock_path, cleanup_socket=False)
        server.close()
        assert os.path.exists(sock_path)
        # A file replaced behind our back is not ours to remove.
        server = await loop.create_unix_server(asyncio.Protocol, sock_path)
        os.unlink(sock_path)
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(sock_path)
            server.close()
            assert os.path.exists(sock_path)
    run(loop, main())


@pytest.mark.parametrize('path_type', [str, os.fsencode, pathlib.Path])
def test_stale_socket_file_is_replaced(loop, sock_path, path_type):
    """As a str, bytes or path-like path, as `os.stat` takes them."""
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(sock_path)

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, path_type(sock_path))
        tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
    run(loop, main())


def test_address_in_use_message(loop):
    abstract = f'\0ferroloop-inuse-{os.getpid()}-{id(loop)}'

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, abstract)
        with pytest.raises(OSError) as e:
            await loop.create_unix_server(asyncio.Protocol, abstract)
        server.close()
        return e.value
    exc = run(loop, main())
    assert exc.errno == errno.EADDRINUSE
    assert str(exc) == f'[Errno 98] Address {abstract!r} is already in use'


def test_connect_to_missing_path(loop, sock_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path)
    run(loop, asyncio.sleep(0))  # the loop's own fds (wakeup sockets) exist now
    before = open_fds()
    run(loop, main())
    assert open_fds() <= before


def test_with_sock_arguments(loop, sock_path):
    async def main():
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        protos = []
        server = await loop.create_unix_server(collecting(loop, protos, echo=True), sock=listener)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(sock_path)
        tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock=client)
        tr.write(b'xyz')
        await pr.wait_for_bytes(3)
        tr.close()
        await pr.lost
        await protos[0].lost
        server.close()
        await server.wait_closed()
    run(loop, main())


BAD_ARGS = [
    ('create_unix_connection', dict(path='P', sock='S'), ValueError, 'path and sock can not be specified at the same time'),
    ('create_unix_connection', dict(), ValueError, 'no path and sock were specified'),
    ('create_unix_connection', dict(sock='TCP'), ValueError, 'A UNIX Domain Stream Socket was expected, got '),
    ('create_unix_connection', dict(path='P', server_hostname='h'), ValueError, 'server_hostname is only meaningful with ssl'),
    ('create_unix_connection', dict(path='P', ssl_handshake_timeout=1), ValueError, 'ssl_handshake_timeout is only meaningful with ssl'),
    ('create_unix_server', dict(path='P', sock='S'), ValueError, 'path and sock can not be specified at the same time'),
    ('create_unix_server', dict(), ValueError, 'path was not specified, and no sock specified'),
    ('create_unix_server', dict(sock='TCP'), ValueError, 'A UNIX Domain Stream Socket was expected, got '),
    ('create_unix_server', dict(path='P', ssl=True), TypeError, 'ssl argument must be an SSLContext or None'),
    ('create_unix_server', dict(path='P', ssl_handshake_timeout=1), ValueError, 'ssl_handshake_timeout is only meaningful with ssl'),
]


@pytest.mark.parametrize('method,kwargs,exc_type,message', BAD_ARGS)
def test_bad_arguments(loop, sock_path, method, kwargs, exc_type, message):
    kwargs = dict(kwargs)
    socks = []
    for key, value in list(kwargs.items()):
        if value == 'P':
            kwargs[key] = sock_path
        elif value == 'S':
            socks.append(socket.socket(socket.AF_UNIX))
            kwargs[key] = socks[-1]
        elif value == 'TCP':
            socks.append(socket.socket())
            kwargs[key] = socks[-1]

    async def main():
        with pytest.raises(exc_type) as e:
            await getattr(loop, method)(asyncio.Protocol, **kwargs)
        assert str(e.value).startswith(message)
    try:
        run(loop, main())
    finally:
        for s in socks:
            s.close()


def test_server_wait_closed_and_no_fd_leaks(loop, sock_path):
    async def main():
        protos = []
        server = await loop.create_unix_server(collecting(loop, protos, echo=True), sock_path)
        before = open_fds()
        for _ in range(30):
            tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
            tr.write(b'.')
            await pr.wait_for_bytes(1)
            tr.close()
            await pr.lost
        for p in protos:
            await p.lost
        after = open_fds()
        tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
        await yield_n(5)
        waiting = asyncio.ensure_future(server.wait_closed())
        await yield_n(2)
        server.close()
        await yield_n(5)
        assert not waiting.done()
        tr.close()
        await pr.lost
        await waiting
        return before, after
    before, after = run(loop, main())
    assert after <= before
