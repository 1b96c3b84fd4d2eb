"""Transport echo over loopback TCP: protocol-based request/response round trips
(small messages) and a bulk transfer through an echo server (MiB/s), for the stdlib
loop, ferroloop and (if installed) uvloop, best of 3.

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
    return N / rtt, BULK / bulk / 1024 / 1024


def bench(name, factory):
    best = (0, 0)
    for _ in range(3):
        loop = factory()
        r = loop.run_until_complete(main())
        loop.close()
        best = (max(best[0], r[0]), max(best[1], r[1]))
    print(f'{name:10s} {best[0]:10.0f} round trips/s   {best[1]:8.0f} MiB/s bulk echo')


bench('asyncio', asyncio.new_event_loop)
bench('ferroloop', ferroloop.new_event_loop)
if uvloop:
    bench('uvloop', uvloop.new_event_loop)
