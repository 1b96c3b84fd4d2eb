"""The contextvars context that transport and protocol callbacks run in, on the
stdlib loop and on ferroloop with the same assertions.

asyncio drives every fd through a `Handle`, and a handle runs in a copy of the
context current when it was made. So a server's protocol factory and its
protocols' callbacks see the context of the code that started serving (each
connection in a copy of its own), a client's those of the code that created the
connection; a variable set in one connection's callback stays in that connection
(its reads share one context) and never reaches another connection or the code
that runs the loop. Libraries rely on it: uvicorn's ASGI tasks, made in
`data_received`, inherit the context `serve()` was started in."""

import asyncio
import contextvars
import os
import socket
import sys

from net_helpers import loop, run  # noqa: F401

VAR = contextvars.ContextVar('VAR', default='unset')


def in_context(loop, coro, value):
    """`coro` as a task whose context has VAR set to `value`, and nothing else."""
    ctx = contextvars.Context()
    ctx.run(VAR.set, value)
    return ctx.run(loop.create_task, coro)  # (3.10's create_task takes no context)


class Seen(asyncio.Protocol):
    """Records the value of VAR in each callback; sets VAR to `mark` in each
    `data_received` after recording it, to show where such a value goes."""

    def __init__(self, seen, side, mark=None):
        self.seen, self.side, self.mark = seen, side, mark
        self.record('protocol_factory')
        self.lost = asyncio.get_running_loop().create_future()

    def record(self, what):
        self.seen.append((self.side, what, VAR.get()))

    def connection_made(self, transport):
        self.transport = transport
        self.record('connection_made')

    def data_received(self, data):
        self.record('data_received')
        if self.mark is not None:
            VAR.set(self.mark)
        if data.endswith(b'!'):
            self.transport.write(data)

    def eof_received(self):
        self.record('eof_received')

    def connection_lost(self, exc):
        self.record('connection_lost')
        self.lost.set_result(None)


async def serve(loop, seen, mark=None):
    servers = []
    server = await loop.create_server(lambda: servers.append(Seen(seen, 'server', mark)) or servers[-1],
                                      '127.0.0.1', 0)
    return server, servers


async def exchange(port, data):
    """A plain stream client: sends `data`, reads the echo, closes."""
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    writer.write(data)
    await writer.drain()
    echoed = await reader.readexactly(len(data))
    writer.close()
    await writer.wait_closed()
    return echoed


def test_server_callbacks_run_in_the_context_that_started_serving(loop):
    seen = []

    async def main():
        server, protocols = await in_context(loop, serve(loop, seen), 'server')
        port = server.sockets[0].getsockname()[1]
        assert await in_context(loop, exchange(port, b'hi!'), 'client') == b'hi!'
        await protocols[0].lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen == [('server', what, 'server') for what in
                    ('protocol_factory', 'connection_made', 'data_received', 'eof_received', 'connection_lost')]
    assert VAR.get() == 'unset'


def test_a_value_set_in_a_connection_stays_in_it(loop):
    """Each connection's reads share one context, apart from every other
    connection's, from the server's and from the code running the loop."""
    seen = []

    async def main():
        server, protocols = await in_context(loop, serve(loop, seen, mark='set by a read'), 'server')
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        for _ in range(2):
            writer.write(b'x!')
            await reader.readexactly(2)
        # A second connection, accepted after the first one set its value.
        assert await exchange(port, b'y!') == b'y!'
        writer.close()
        await writer.wait_closed()
        for protocol in protocols:
            await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    reads = [value for side, what, value in seen if what == 'data_received']
    assert reads == ['server', 'set by a read', 'server']
    factories = [value for side, what, value in seen if what == 'protocol_factory']
    assert factories == ['server', 'server']
    assert VAR.get() == 'unset'


def test_a_value_set_in_connection_made_is_not_seen_by_reads(loop):
    """asyncio queues `connection_made` and the start of reading as two handles,
    each with its own copy of the connection's context."""
    seen = []

    class SetsInConnectionMade(Seen):
        def connection_made(self, transport):
            super().connection_made(transport)
            VAR.set('set by connection_made')

    async def main():
        server = await loop.create_server(lambda: SetsInConnectionMade(seen, 'server'), '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        await exchange(port, b'z!')
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert ('server', 'data_received', 'unset') in seen


def test_client_callbacks_run_in_the_context_that_connected(loop):
    seen = []

    async def client(port):
        transport, protocol = await loop.create_connection(lambda: Seen(seen, 'client'), '127.0.0.1', port)
        transport.write(b'ping!')
        await protocol.lost

    async def main():
        server = await loop.create_server(EchoThenClose, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        await in_context(loop, client(port), 'client')
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen == [('client', what, 'client') for what in
                    ('protocol_factory', 'connection_made', 'data_received', 'eof_received', 'connection_lost')]


class EchoThenClose(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        self.transport.close()


def test_reads_after_resume_reading_run_in_the_resumers_context(loop):
    """resume_reading() registers the reader anew, in a copy of the caller's
    context (as StreamReader does from the task that reads)."""
    seen = []

    class Pauses(Seen):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()
            paused.set_result(self.transport)

    async def resume(transport):
        transport.resume_reading()

    async def main():
        nonlocal paused
        server = await loop.create_server(EchoThenClose, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        paused = loop.create_future()
        transport, protocol = await loop.create_connection(lambda: Pauses(seen, 'client'), '127.0.0.1', port)
        transport.write(b'one')
        transport = await paused
        await in_context(loop, resume(transport), 'resumer')
        await protocol.lost
        server.close()
        await server.wait_closed()

    paused = None
    run(loop, main())
    assert [value for side, what, value in seen if what in ('data_received', 'eof_received')] == ['unset', 'resumer']


def test_datagram_callbacks_run_in_the_context_that_made_the_endpoint(loop):
    seen = []

    class Datagrams(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = loop.create_future()

        def datagram_received(self, data, addr):
            seen.append(VAR.get())
            VAR.set('set by a datagram')
            if len(seen) == 2:
                self.got.set_result(None)

    async def endpoint():
        return await loop.create_datagram_endpoint(Datagrams, local_addr=('127.0.0.1', 0))

    async def main():
        transport, protocol = await in_context(loop, endpoint(), 'endpoint')
        for _ in range(2):
            transport.sendto(b'd', transport.get_extra_info('sockname'))
        await protocol.got
        transport.close()

    run(loop, main())
    # The endpoint's reads share one context, as a connection's do.
    assert seen == ['endpoint', 'set by a datagram']
    assert VAR.get() == 'unset'


def test_read_pipe_callbacks_run_in_the_context_that_connected_it(loop):
    seen = []
    rfd, wfd = os.pipe()

    class Pipe(asyncio.Protocol):
        def __init__(self):
            self.lost = loop.create_future()

        def data_received(self, data):
            seen.append(('data_received', VAR.get()))

        def eof_received(self):
            seen.append(('eof_received', VAR.get()))

        def connection_lost(self, exc):
            seen.append(('connection_lost', VAR.get()))
            self.lost.set_result(None)

    async def connect():
        return await loop.connect_read_pipe(Pipe, os.fdopen(rfd, 'rb', 0))

    async def main():
        transport, protocol = await in_context(loop, connect(), 'pipe')
        os.write(wfd, b'data')
        os.close(wfd)
        await protocol.lost

    run(loop, main())
    assert seen == [('data_received', 'pipe'), ('eof_received', 'pipe'), ('connection_lost', 'pipe')]


def test_subprocess_pipe_callbacks_run_in_the_context_that_spawned_it(loop):
    seen = []

    class Child(asyncio.SubprocessProtocol):
        def __init__(self):
            self.exited = loop.create_future()

        def pipe_data_received(self, fd, data):
            seen.append(VAR.get())

        def process_exited(self):
            exited_in.append(VAR.get())

        def connection_lost(self, exc):
            exited_in.append(VAR.get())
            self.exited.set_result(None)

    async def spawn():
        return await loop.subprocess_exec(Child, sys.executable, '-c', 'print("hi")', stdin=None)

    async def main():
        transport, protocol = await in_context(loop, spawn(), 'spawner')
        await protocol.exited
        transport.close()

    exited_in = []
    run(loop, main())
    assert seen and set(seen) == {'spawner'}
    # The exit: asyncio's default child watcher's context, a thread's (empty) before
    # 3.12, the pidfd watcher's reader's (the spawner's) from 3.12.
    assert exited_in == ['spawner' if sys.version_info >= (3, 12) else 'unset'] * 2


def test_accepted_socket_callbacks_run_in_the_context_that_connected_it(loop):
    seen = []
    a, b = socket.socketpair()

    async def connect():
        return await loop.connect_accepted_socket(lambda: Seen(seen, 'accepted'), a)

    async def main():
        transport, protocol = await in_context(loop, connect(), 'accepted')
        b.sendall(b'x')
        b.close()
        await protocol.lost

    run(loop, main())
    assert {value for side, what, value in seen} == {'accepted'}
