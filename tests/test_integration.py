"""Real third-party asyncio code, unchanged, on ferroloop (and the same on the
stdlib loop): an aiohttp server answering an aiohttp client (plain and HTTPS), and
a streams echo server under 1,000 concurrent connections, every byte checked."""

import asyncio
import hashlib
import os
import resource

import pytest


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def test_aiohttp_server_and_client(loop):
    aiohttp = pytest.importorskip('aiohttp')
    from aiohttp import web

    body = os.urandom(1024 * 1024)  # 1 MiB each way

    async def echo(request):
        data = await request.read()
        return web.Response(body=data[::-1], headers={'X-Digest': hashlib.sha256(data).hexdigest()})

    async def hello(request):
        return web.Response(text=f'hello {request.match_info["name"]}')

    async def main():
        app = web.Application()
        app.router.add_post('/echo', echo)
        app.router.add_get('/hello/{name}', hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, '127.0.0.1', 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f'http://127.0.0.1:{port}/hello/ferroloop') as resp:
                    assert resp.status == 200
                    assert await resp.text() == 'hello ferroloop'
                for _ in range(3):  # keep-alive: the same connection is reused
                    async with session.post(f'http://127.0.0.1:{port}/echo', data=body) as resp:
                        assert resp.status == 200
                        assert resp.headers['X-Digest'] == hashlib.sha256(body).hexdigest()
                        assert await resp.read() == body[::-1]
        finally:
            await runner.cleanup()
    run(loop, main())


def test_aiohttp_https_server_and_client(loop):
    """The same over TLS: aiohttp's HTTPS server and client, certificates from
    trustme, 1 MiB bodies each way checked by digest."""
    aiohttp = pytest.importorskip('aiohttp')
    trustme = pytest.importorskip('trustme')
    import ssl
    from aiohttp import web

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert('localhost').configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    upload = os.urandom(1024 * 1024)
    download = os.urandom(1024 * 1024)

    async def upload_handler(request):
        data = await request.read()
        assert request.transport.get_extra_info('ssl_object') is not None
        return web.Response(body=download, headers={'X-Digest': hashlib.sha256(data).hexdigest()})

    async def main():
        app = web.Application()
        app.router.add_post('/upload', upload_handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, '127.0.0.1', 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        try:
            conn = aiohttp.TCPConnector(ssl=client_ctx)
            async with aiohttp.ClientSession(connector=conn) as session:
                for _ in range(2):  # keep-alive over the same TLS connection
                    async with session.post(f'https://localhost:{port}/upload', data=upload) as resp:
                        assert resp.status == 200
                        assert resp.headers['X-Digest'] == hashlib.sha256(upload).hexdigest()
                        got = await resp.read()
                        assert hashlib.sha256(got).digest() == hashlib.sha256(download).digest()
        finally:
            await runner.cleanup()
    run(loop, main())


@pytest.fixture
def fd_room():
    """Room for 2,000+ fds (both ends of 1,000 connections live in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < 2100:
        pytest.skip(f'fd limit {hard} is too low for 1,000 connections in one process')
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_streams_echo_under_1000_concurrent_connections(loop, fd_room):
    clients = 1000

    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(port, n):
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        payload = hashlib.sha256(b'%d' % n).digest() * (64 + n % 64)  # 2-4 KiB, distinct
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        echoed = await reader.read()
        writer.close()
        await writer.wait_closed()
        return echoed == payload

    async def main():
        server = await asyncio.start_server(handle, '127.0.0.1', 0, backlog=clients)
        port = server.sockets[0].getsockname()[1]
        async with server:
            results = await asyncio.gather(*(client(port, n) for n in range(clients)))
        assert all(results), f'{results.count(False)} of {clients} echoes differ'
    run(loop, main())
