"""Transport echo over loopback TCP: protocol-based request/response round trips
(small messages), the same with the reply written as header + body (two write()
calls, as HTTP servers do), and a bulk transfer through an echo server (MiB/s), for
the stdlib loop, ferroloop and (if installed) uvloop, best of 3.

    python bench/tcp_echo.py [ROUND_TRIPS=30000] [MESSAGE_BYTES=100] [BULK_MIB=64]"""
import asyncio, sys, time
import ferroloop
try:
    import uvloop
except ImportError:
    uvloop = None

N = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
MSG = b'x' * (int(sys.argv[2]) if len(sys.argv) > 2 else 100)
BULK = (int(sys.argv[3]) if len(sys.argv) > 3 else 64) * 1024 * 1024


class Echo(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t

    def data_received(self, d):
        self.t.write(d)


class HeaderBody(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t

    def data_received(self, d):
        self.t.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n' % len(d))
        self.t.write(d)


class Client(asyncio.Protocol):
    def __init__(self, loop, n, size):
        self.loop, self.left, self.size = loop, n, size
        self.got = 0
        self.done = loop.create_future()

    def connection_made(self, t):
        self.t = t

    def data_received(self, d):
        self.got += len(d)
        if self.got >= self.size:
            self.got -= self.size
            self.left -= 1
            if self.left == 0:
                self.done.set_result(None)
            else:
                self.t.write(MSG)


class Sink(asyncio.Protocol):
    def __init__(self, loop, total):
        self.total, self.got = total, 0
        self.done = loop.create_future()

    def data_received(self, d):
        self.got += len(d)
        if self.got >= self.total and not self.done.done():
            self.done.set_result(None)


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    tr, pr = await loop.create_connection(lambda: Client(loop, N, len(MSG)), *addr)
    t0 = time.perf_counter()
    tr.write(MSG)
    await pr.done
    rtt = time.perf_counter() - t0
    tr.close()
    server2 = await loop.create_server(HeaderBody, '127.0.0.1', 0)
    head = len(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n' % len(MSG))
    tr, pr = await loop.create_connection(lambda: Client(loop, N, head + len(MSG)), *server2.sockets[0].getsockname())
    t0 = time.perf_counter()
    tr.write(MSG)
    await pr.done
    rtt2 = time.perf_counter() - t0
    tr.close()
    server2.close()
    tr, pr = await loop.create_connection(lambda: Sink(loop, BULK), *addr)
    chunk = b'y' * (256 * 1024)
    t0 = time.perf_counter()
    for _ in range(BULK // len(chunk)):
        tr.write(chunk)
        if tr.get_write_buffer_size() > 4 * 1024 * 1024:
            while tr.get_write_buffer_size() > 1024 * 1024:
                await asyncio.sleep(0)
    await pr.done
    bulk = time.perf_counter() - t0
    tr.close()
    server.close()
    return N / rtt, N / rtt2, BULK / bulk / 1024 / 1024


def bench(name, factory):
    best = (0, 0, 0)
    for _ in range(3):
        loop = factory()
        r = loop.run_until_complete(main())
        loop.close()
        best = tuple(max(a, b) for a, b in zip(best, r))
    print(f'{name:10s} {best[0]:8.0f} round trips/s   {best[1]:8.0f} header+body/s   '
          f'{best[2]:6.0f} MiB/s bulk echo')


bench('asyncio', asyncio.new_event_loop)
bench('ferroloop', ferroloop.new_event_loop)
if uvloop:
    bench('uvloop', uvloop.new_event_loop)
