"""Reference leaks in the Rust code: operations repeated N times must not leave
allocations behind in proportion to N.

A leaked reference to an object nothing else holds keeps it alive forever; for
objects the garbage collector does not track (ints, strings, bytes) nothing ever
reports it. tracemalloc counts them: each case runs its operation a few times to
warm up (allocator pools, caches, executor threads), then N times with tracing
on, and asserts that what is still allocated afterwards is far below one small
object per operation. Every case runs on the stdlib loop too, which proves the
bound holds for a loop without leaks. No timing is involved.

The first of these found PyO3 0.30's `PySlice::new` leaking the ints it builds
(`PySlice_New` does not steal them): 36 bytes (the `isize::MAX` of `[2:]`) per
`sock_connect` to an IP address, the RSS growth of `bench/connect_cycles.py`."""

import asyncio
import gc
import io
import socket
import tracemalloc

import pytest

from net_helpers import LOOPS, current_loop

# Every leak these cases guard against is at least one int per operation (28 bytes
# or more). A loop without leaks retains a little once (a dict or free list that
# grew, tracemalloc's own bookkeeping: a few hundred bytes to ~2 KiB here) and well
# under one byte per operation.
SLACK_BYTES = 8192
MAX_BYTES_PER_OP = 2


@pytest.fixture(params=sorted(LOOPS))
def loop(request):
    # No exception handler of our own here: these cases see the loop's default one.
    with current_loop(request.param) as lp:
        yield lp


@pytest.fixture
def listener():
    with socket.create_server(('127.0.0.1', 0), backlog=128) as lsock:
        lsock.setblocking(False)
        yield lsock


def retained(loop, batch, n, warmup=50):
    """Bytes still allocated after `batch(n)` ran."""
    loop.run_until_complete(asyncio.wait_for(batch(warmup), 60))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loop.run_until_complete(asyncio.wait_for(batch(n), 60))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


def assert_no_leak(loop, batch, n, tries=2):
    """A leak retains its bytes on every try; what a loop holds only for a while
    (seen on a loaded machine: a few KiB after some `sock_sendfile` fallback runs,
    freed during the next run) does not, so one try under the bound is enough."""
    for _ in range(tries):
        kept = retained(loop, batch, n)
        if kept < SLACK_BYTES + MAX_BYTES_PER_OP * n:
            return
    raise AssertionError(f'{kept} bytes retained after {n} operations ({kept / n:.1f} per operation), on each of {tries} tries')


def test_sock_connect_ip_address(loop, listener):
    """The numeric-address path (`_ipaddr_info`, address[:2] and address[2:])."""
    address = listener.getsockname()

    async def batch(n):
        for _ in range(n):
            with socket.socket() as s:
                s.setblocking(False)
                await loop.sock_connect(s, address)
                listener.accept()[0].close()

    assert_no_leak(loop, batch, 2000)


def test_sock_connect_refused(loop):
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        address = probe.getsockname()  # closed below: nothing listens there

    async def batch(n):
        for _ in range(n):
            with socket.socket() as s:
                s.setblocking(False)
                with pytest.raises(ConnectionRefusedError):
                    await loop.sock_connect(s, address)

    assert_no_leak(loop, batch, 2000)


def test_sock_connect_unix(loop, tmp_path):
    path = str(tmp_path / 'sock')
    with socket.socket(socket.AF_UNIX) as lsock:
        lsock.bind(path)
        lsock.listen(128)

        async def batch(n):
            for _ in range(n):
                with socket.socket(socket.AF_UNIX) as s:
                    s.setblocking(False)
                    await loop.sock_connect(s, path)
                    lsock.accept()[0].close()

        assert_no_leak(loop, batch, 2000)


def test_open_connection(loop, listener):
    """create_connection (sock_connect, then a transport) and close, as in
    bench/connect_cycles.py."""
    host, port = listener.getsockname()

    async def batch(n):
        for _ in range(n):
            reader, writer = await asyncio.open_connection(host, port)
            listener.accept()[0].close()
            writer.close()
            await writer.wait_closed()

    assert_no_leak(loop, batch, 1000)


class TrickleSocket(socket.socket):
    """Sends at most 7 bytes a call: every sock_sendall continues from an offset,
    through the socket's own methods (a subclass is not the Rust fast path)."""

    def send(self, data, flags=0):
        return super().send(bytes(memoryview(data)[:7]), flags)


def test_sock_sendall_partial_sends(loop):
    a, b = socket.socketpair()
    client = TrickleSocket(fileno=a.detach())
    payload = b'x' * 70  # ten sends, nine of them retries from an offset
    with client, b:
        client.setblocking(False)

        async def batch(n):
            for _ in range(n):
                await loop.sock_sendall(client, payload)
                assert b.recv(len(payload), socket.MSG_WAITALL) == payload

        assert_no_leak(loop, batch, 1000)


def test_sock_recv_and_sendall(loop):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)

        async def batch(n):
            for _ in range(n):
                reading = asyncio.ensure_future(loop.sock_recv(a, 100))
                await asyncio.sleep(0)  # waits for the fd
                await loop.sock_sendall(b, b'ping')
                assert await reading == b'ping'
                await loop.sock_sendall(b, b'pong')
                assert await loop.sock_recv(a, 100) == b'pong'  # data already there

        assert_no_leak(loop, batch, 2000)


def test_sock_accept(loop, listener):
    address = listener.getsockname()

    async def batch(n):
        for _ in range(n):
            with socket.socket() as s:
                s.setblocking(False)
                accepting = asyncio.ensure_future(loop.sock_accept(listener))
                await asyncio.sleep(0)
                await loop.sock_connect(s, address)
                conn, _ = await accepting
                conn.close()

    assert_no_leak(loop, batch, 1000)


def test_sock_sendfile_fallback(loop):
    """A file object without a fileno: the read-and-send fallback, one block each."""
    a, b = socket.socketpair()
    data = b'y' * 1000
    with a, b:
        a.setblocking(False)

        async def batch(n):
            for _ in range(n):
                assert await loop.sock_sendfile(a, io.BytesIO(data)) == len(data)
                assert b.recv(len(data), socket.MSG_WAITALL) == data

        assert_no_leak(loop, batch, 1000)


def test_a_burst_of_callbacks_leaves_no_handles_behind(loop):
    """ferroloop keeps the emptied handles of a burst of `call_soon` for the next
    burst, and frees them once a second has passed without one (the stdlib loop
    frees each at once). Either way, once bursts stop, 50,000 callbacks leave far
    less than a handle (over 100 bytes) each behind. ferroloop's second passes on
    its virtual clock, so nothing here sleeps."""
    n = 50_000
    virtual = hasattr(loop, '_enable_virtual_time')
    if virtual:
        loop._enable_virtual_time(loop.time())

    async def burst(k):
        for _ in range(k):
            loop.call_soon(int)
        await asyncio.sleep(0)  # runs after the k callbacks

    def quiet_seconds():
        for _ in range(3):  # a trim ends each period; what a period left unused goes
            if virtual:
                loop._advance_time(1.5)
            loop.run_until_complete(asyncio.sleep(0))

    loop.run_until_complete(burst(2000))
    quiet_seconds()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loop.run_until_complete(burst(n))
        quiet_seconds()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < SLACK_BYTES + MAX_BYTES_PER_OP * n, f'{kept} bytes kept after a burst of {n}'
