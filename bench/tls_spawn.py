"""The issue-5 workloads of micro.py: TLS echo round trips and subprocess
spawn + wait, each run in one process like the scheduling workloads (so run.py
interleaves them with the other loops and compares operations per CPU-second).

TLS: a TLS echo server and client on the same loop over loopback, one message in
flight; the certificates come from ``trustme`` (made at start, nothing on disk).
Spawn: ``asyncio.create_subprocess_exec('/bin/true')`` then ``wait()``, one child at
a time, and 16 at once; the parent's CPU only (the children's is not counted by
``time.process_time``).
"""
import asyncio
import ssl

from loops import Unsupported
from servers import Echo

SPAWN_CONCURRENCY = 16


def _contexts():
    try:
        import trustme
    except ImportError:
        raise Unsupported('trustme is not installed') from None
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert('localhost').configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


class _Client(asyncio.Protocol):
    """Sends the message again each time the whole echo came back, `left` times."""

    def __init__(self, done, message, left):
        self.done, self.message, self.left, self.pending = done, message, left, len(message)

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.message)

    def data_received(self, data):
        self.pending -= len(data)
        if self.pending > 0:
            return
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)
        else:
            self.pending = len(self.message)
            self.transport.write(self.message)


def _tls_echo(size):
    def workload(loop, n):
        server_ctx, client_ctx = _contexts()

        async def main():
            server = await loop.create_server(Echo, '127.0.0.1', 0, ssl=server_ctx)
            host, port = server.sockets[0].getsockname()[:2]
            done = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: _Client(done, b'x' * size, n), host, port, ssl=client_ctx, server_hostname='localhost')
            await done
            transport.close()
            server.close()
            await server.wait_closed()
        loop.run_until_complete(main())
        return n
    workload.__doc__ = f'TLS echo of {size} bytes, one round trip at a time (handshake included).'
    return workload


def spawn_true(loop, n):
    """create_subprocess_exec('/bin/true') + wait(), one child at a time."""
    async def main():
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec('/bin/true')
            await proc.wait()
    loop.run_until_complete(main())
    return n


def spawn_true_concurrent(loop, n):
    """create_subprocess_exec('/bin/true') + wait(), 16 children at a time."""
    async def main():
        limit = asyncio.Semaphore(SPAWN_CONCURRENCY)

        async def one():
            async with limit:
                proc = await asyncio.create_subprocess_exec('/bin/true')
                await proc.wait()
        await asyncio.gather(*[one() for _ in range(n)])
    loop.run_until_complete(main())
    return n


# Name -> (function, default N), merged into micro.WORKLOADS.
WORKLOADS = {
    'tls_echo_1k': (_tls_echo(1024), 20_000),
    'tls_echo_64k': (_tls_echo(64 * 1024), 2_000),
    'spawn_true': (spawn_true, 500),
    'spawn_true_concurrent': (spawn_true_concurrent, 1_000),
}
