"""The Python servers the network benchmarks load: one loop, one server style per
process, on 127.0.0.1. Prints `PORT <n>` once listening and serves until SIGTERM
(whose default action ends the process: nothing needs a clean shutdown here).

    python bench/servers.py LOOP STYLE [--cpu N] [--port P]

Styles, all echoing what they receive except the HTTP ones:
    sock        sock_accept + sock_recv/sock_sendall, a task per connection
    streams     asyncio.start_server, reader.read() / writer.write() + drain()
    protocol    asyncio.Protocol echo
    buffered    asyncio.BufferedProtocol echo (reads into one preallocated buffer)
    http_one    HTTP/1.1 keep-alive hello world (asyncio.Protocol), reply in ONE write()
    http_split  the same, reply written as header write() + body write()
    udp         asyncio.DatagramProtocol echo

A loop lacking a style's feature prints `UNSUPPORTED <reason>` and exits 3, so
run.py can show the reason instead of a failure.
"""
import argparse
import asyncio
import os
import resource
import socket
import sys

from loops import Unsupported, factory

HOST = '127.0.0.1'
BACKLOG = 4096  # the idle-connections run opens 10,000 at once
READ_SIZE = 65536

# Byte for byte what the Rust echo-server answers, so both are loaded alike.
HTTP_HEAD = b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\n'
HTTP_BODY = b'Hello, World!'
HTTP_RESPONSE = HTTP_HEAD + HTTP_BODY


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class BufferedEcho(asyncio.BufferedProtocol):
    def __init__(self):
        self.buffer = bytearray(256 * 1024)
        self.view = memoryview(self.buffer)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        # A copy: a loop may keep a reference to what write() is given until it is sent,
        # and the next read reuses this buffer.
        self.transport.write(bytes(self.view[:nbytes]))


class Http(asyncio.Protocol):
    """Counts requests by their terminating blank line (GETs carry no body); several
    may arrive in one data_received, and one may be split across two."""
    split = False

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b''

    def data_received(self, data):
        buf = self.pending + data if self.pending else data
        start = 0
        # `self.transport.write(...)` per reply, as servers write (uvicorn's
        # protocols, asyncio's StreamWriter): not a bound method fetched once per
        # read, which costs a method object on loops whose write is a method
        # (uvloop, rloop and ferroloop) and nothing where it is an attribute.
        while (end := buf.find(b'\r\n\r\n', start)) >= 0:
            start = end + 4
            if self.split:
                self.transport.write(HTTP_HEAD)
                self.transport.write(HTTP_BODY)
            else:
                self.transport.write(HTTP_RESPONSE)
        self.pending = buf[start:]


class HttpSplit(Http):
    split = True


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def serve_sock(loop, port):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, port))
    lsock.listen(BACKLOG)
    lsock.setblocking(False)

    async def handle(conn):
        with conn:
            while data := await loop.sock_recv(conn, READ_SIZE):
                await loop.sock_sendall(conn, data)

    async def accept_forever():
        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as transports do
            loop.create_task(handle(conn))
    loop.create_task(accept_forever())
    return lsock.getsockname()[1]


async def serve_streams(loop, port):
    async def handle(reader, writer):
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, HOST, port, backlog=BACKLOG)
    return server.sockets[0].getsockname()[1]


def _protocol_server(protocol_factory):
    async def serve(loop, port):
        server = await loop.create_server(protocol_factory, HOST, port, backlog=BACKLOG)
        return server.sockets[0].getsockname()[1]
    return serve


async def serve_udp(loop, port):
    transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=(HOST, port))
    return transport.get_extra_info('sockname')[1]


STYLES = {
    'sock': serve_sock,
    'streams': serve_streams,
    'protocol': _protocol_server(Echo),
    'buffered': _protocol_server(BufferedEcho),
    'http_one': _protocol_server(Http),
    'http_split': _protocol_server(HttpSplit),
    'udp': serve_udp,
}


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('loop')
    ap.add_argument('style', choices=sorted(STYLES))
    ap.add_argument('--cpu', type=int, help='pin the process to this CPU')
    ap.add_argument('--port', type=int, default=0)
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    raise_fd_limit()
    try:
        loop = factory(args.loop)()
        asyncio.set_event_loop(loop)
        port = loop.run_until_complete(STYLES[args.style](loop, args.port))
    except (Unsupported, NotImplementedError, AttributeError) as exc:
        reason = str(exc) if isinstance(exc, Unsupported) else f'{type(exc).__name__}: {exc}'
        print(f'UNSUPPORTED {reason}', flush=True)
        return 3
    print(f'PORT {port}', flush=True)
    loop.run_forever()


if __name__ == '__main__':
    sys.exit(main())
