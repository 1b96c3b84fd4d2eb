"""loop.sock_* (recv, recv_into, recvfrom, recvfrom_into, sendall, sendto, connect,
accept, sendfile): every case runs on the stdlib loop and on ferroloop, with the
same assertions, so the stdlib run proves the expectation and the ferroloop run
that it matches (results, exception types, errno and messages).

Only loopback TCP/UDP, AF_UNIX and socketpairs; no sleeping as synchronisation (a
task is let run its first step with ``asyncio.sleep(0)``, a deterministic yield);
every loop is bounded."""

import array
import asyncio
import errno
import gc
import hashlib
import io
import os
import socket
import ssl
import struct
import sys
import tempfile
import weakref

import pytest

from net_helpers import LOOPS, current_loop


@pytest.fixture(params=sorted(LOOPS))
def loop(request):
    # No exception handler of our own here: these cases see the loop's default one.
    with current_loop(request.param) as lp:
        yield lp


def run(loop, coro, timeout=20):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))



@pytest.fixture
def tcp_pair():
    """A connected, non-blocking TCP pair on loopback (client, server side)."""
    with socket.create_server(('127.0.0.1', 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setblocking(False)
    server.setblocking(False)
    yield client, server
    client.close()
    server.close()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def has_reader(loop, fd):
    """Whether the loop still watches ``fd`` for reading (removing it to see)."""
    return loop.remove_reader(fd)


def has_writer(loop, fd):
    return loop.remove_writer(fd)


# ----- coroutine protocol ------------------------------------------------------------

def test_ops_are_coroutines_that_run_nothing_until_awaited(loop, pair):
    a, b = pair
    b.send(b'data')
    op = loop.sock_recv(a, 10)
    assert asyncio.iscoroutine(op)
    op.close()                      # never started: nothing was read
    assert run(loop, loop.sock_recv(a, 10)) == b'data'


def test_create_task_and_gather_accept_them(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        assert not t.done()
        await loop.sock_sendall(b, b'ping')
        return await t, await asyncio.gather(loop.sock_sendall(b, b'x'), loop.sock_recv(a, 10))

    assert run(loop, main()) == (b'ping', [None, b'x'])


def test_arguments_by_keyword_and_wrong_calls(loop, pair):
    """recv and sendall bind ``(sock, n)`` / ``(sock, data)`` as asyncio's methods
    do: by keyword too; a TypeError, at the call, for a missing, extra, repeated or
    unknown argument (``context`` included: these are not callback schedulers)."""
    a, b = pair
    run(loop, loop.sock_sendall(sock=b, data=b'kw'))
    assert run(loop, loop.sock_recv(a, n=10)) == b'kw'
    wrong = [
        lambda: loop.sock_recv(a),
        lambda: loop.sock_recv(a, 10, 20),
        lambda: loop.sock_recv(a, 10, context=None),
        lambda: loop.sock_recv(a, sock=a, n=10),
        lambda: loop.sock_recv(a, size=10),
        lambda: loop.sock_sendall(),
        lambda: loop.sock_sendall(b, b'x', b'y'),
        lambda: loop.sock_sendall(b, data=b'x', flags=0),
    ]
    for call in wrong:
        with pytest.raises(TypeError):
            call()


def test_errors_are_raised_at_await_not_at_call(loop):
    s = socket.socket()
    s.setblocking(False)            # (debug mode would reject a blocking one first)
    s.close()
    op = loop.sock_recv(s, 10)      # closed socket: no error yet
    with pytest.raises(OSError) as e:
        run(loop, op)
    assert e.value.errno == errno.EBADF
    assert str(e.value) == '[Errno 9] Bad file descriptor'


# ----- recv / recv_into --------------------------------------------------------------

def test_recv_ready_data_and_eof(loop, pair):
    a, b = pair
    b.sendall(b'hello')
    assert run(loop, loop.sock_recv(a, 3)) == b'hel'
    assert run(loop, loop.sock_recv(a, 100)) == b'lo'
    assert run(loop, loop.sock_recv(a, 0)) == b''          # no data, yet no wait
    assert run(loop, loop.sock_recv_into(a, bytearray())) == 0
    b.close()
    assert run(loop, loop.sock_recv(a, 100)) == b''


def test_recv_waits_for_data(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.create_task(loop.sock_recv(a, 1024))
        await asyncio.sleep(0)
        assert not t.done()
        b.send(b'later')
        return await t

    assert run(loop, main()) == b'later'
    assert not has_reader(loop, a.fileno())


def test_waits_on_a_closed_and_reused_fd_number_work(loop):
    # After a wait completes the loop may keep the fd registered for the next one:
    # a new socket under the same number must still be watched, and an fd callback
    # added where data is left unread must still fire (level-triggered).
    async def main():
        seen_reuse = False
        for _ in range(20):
            a, b = socket.socketpair()
            a.setblocking(False)
            t = asyncio.create_task(loop.sock_recv(a, 1))
            await asyncio.sleep(0)
            b.send(b'xyz')
            assert await t == b'x'
            fired = loop.create_future()
            loop.add_reader(a, fired.set_result, None)
            await fired
            assert loop.remove_reader(a)
            fd = a.fileno()
            a.close()
            b.close()
            c, d = socket.socketpair()
            c.setblocking(False)
            seen_reuse |= fd in (c.fileno(), d.fileno())
            for peer, sock in ((d, c), (c, d)):
                sock.setblocking(False)
                t = asyncio.create_task(loop.sock_recv(sock, 100))
                await asyncio.sleep(0)
                assert not t.done()
                peer.send(b'new')
                assert await t == b'new'
            c.close()
            d.close()
        assert seen_reuse

    run(loop, main())


def test_waits_after_arrivals_nobody_waited_for(loop, pair):
    # Between waits on one socket, data may arrive and be read without the loop
    # (the fd fires with nobody watching it): later waits must still be woken.
    a, b = pair

    async def main():
        for rounds in range(4):
            for _ in range(rounds):
                b.send(b'p')
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                assert a.recv(10) == b'p'
            t = asyncio.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0)
            assert not t.done()
            b.send(b'q')
            assert await t == b'q'

    run(loop, main())


def test_recv_large_n_returns_what_is_there(loop, pair):
    a, b = pair
    b.sendall(b'z' * 1000)
    assert run(loop, loop.sock_recv(a, 4 * 1024 * 1024)) == b'z' * 1000


@pytest.mark.parametrize('n, exc, msg', [
    (-1, ValueError, 'negative buffersize in recv'),
    ('10', TypeError, "'str' object cannot be interpreted as an integer"),
    (1.5, TypeError, "'float' object cannot be interpreted as an integer"),
])
def test_recv_bad_size(loop, pair, n, exc, msg):
    a, b = pair
    with pytest.raises(exc) as e:
        run(loop, loop.sock_recv(a, n))
    assert str(e.value) == msg


def test_recv_into_buffers(loop, pair):
    a, b = pair
    b.sendall(b'abcdefgh')
    ba = bytearray(3)
    assert run(loop, loop.sock_recv_into(a, ba)) == 3
    assert ba == b'abc'
    big = bytearray(10)
    with memoryview(big) as mv:
        assert run(loop, loop.sock_recv_into(a, mv[2:])) == 5
    assert big == b'\0\0defgh\0\0\0'
    arr = array.array('i', [0, 0])
    b.sendall(struct.pack('ii', 7, 9))
    assert run(loop, loop.sock_recv_into(a, arr)) == 8
    assert arr.tolist() == [7, 9]


def test_recv_into_waits(loop, pair):
    a, b = pair
    buf = bytearray(16)

    async def main():
        t = asyncio.create_task(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        b.send(b'xyz')
        return await t

    assert run(loop, main()) == 3
    assert buf[:3] == b'xyz'


def test_recv_into_readonly_buffer(loop, pair):
    a, b = pair
    b.send(b'x')
    with pytest.raises(TypeError) as e:
        run(loop, loop.sock_recv_into(a, b'immutable'))
    assert str(e.value) == "recv_into() argument 1 must be read-write bytes-like object, not bytes"


# ----- sendall -----------------------------------------------------------------------

def test_sendall_kinds_of_data(loop, pair):
    a, b = pair
    # (Not array('h'): the stdlib compares bytes sent with len(data), in items, and
    # never finishes; ferroloop counts bytes.)
    for data in (b'bytes', bytearray(b'barray'), memoryview(b'mview')):
        assert run(loop, loop.sock_sendall(a, data)) is None
        assert b.recv(100) == bytes(data)
    assert run(loop, loop.sock_sendall(a, b'')) is None


def test_sendall_str_is_rejected(loop, pair):
    a, b = pair
    with pytest.raises(TypeError) as e:
        run(loop, loop.sock_sendall(a, 'text'))
    assert str(e.value) == "a bytes-like object is required, not 'str'"


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'memoryview'])
def test_sendall_large_with_concurrent_reader(loop, pair, kind):
    """Several MiB through a socketpair: partial sends continue on writability and
    no byte is lost or reordered."""
    a, b = pair
    payload = os.urandom(1 << 16) * 96           # 6 MiB
    data = {'bytes': payload, 'bytearray': bytearray(payload), 'memoryview': memoryview(payload)}[kind]

    async def reader():
        h = hashlib.sha256()
        got = 0
        for _ in range(1_000_000):                   # bounded
            chunk = await loop.sock_recv(b, 256 * 1024)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        return got, h.hexdigest()

    async def main():
        r = asyncio.create_task(reader())
        await loop.sock_sendall(a, data)
        a.shutdown(socket.SHUT_WR)
        return await r

    assert run(loop, main()) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert not has_writer(loop, a.fileno())


def test_sendall_pins_a_bytearray_while_pending(loop, pair):
    a, b = pair
    data = bytearray(8 * 1024 * 1024)

    async def main():
        t = asyncio.create_task(loop.sock_sendall(a, data))
        await asyncio.sleep(0)
        assert not t.done()
        with pytest.raises(BufferError):
            data.extend(b'more')                     # exported: cannot resize
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(loop, main())
    data.extend(b'ok now')                           # released after cancellation


def test_sendall_to_closed_peer(loop, pair):
    a, b = pair
    b.close()
    with pytest.raises(BrokenPipeError) as e:
        run(loop, loop.sock_sendall(a, b'x' * 100))
    assert (e.value.errno, str(e.value)) == (errno.EPIPE, '[Errno 32] Broken pipe')


# ----- errors common to all operations -----------------------------------------------

def _all_ops(loop, sock, peer_addr=('127.0.0.1', 9)):
    return {
        'sock_recv': lambda: loop.sock_recv(sock, 10),
        'sock_recv_into': lambda: loop.sock_recv_into(sock, bytearray(10)),
        'sock_recvfrom': lambda: loop.sock_recvfrom(sock, 10),
        'sock_recvfrom_into': lambda: loop.sock_recvfrom_into(sock, bytearray(10)),
        'sock_sendall': lambda: loop.sock_sendall(sock, b'x'),
        'sock_sendto': lambda: loop.sock_sendto(sock, b'x', peer_addr),
        'sock_connect': lambda: loop.sock_connect(sock, peer_addr),
        'sock_accept': lambda: loop.sock_accept(sock),
        'sock_sendfile': lambda: loop.sock_sendfile(sock, io.BytesIO(b'x')),
    }


@pytest.mark.parametrize('op', sorted(_all_ops(None, None)))
def test_blocking_socket_rejected_in_debug_mode(loop, op):
    if not hasattr(loop, op):
        pytest.skip(f'{op} is new in 3.11')  # ferroloop has it on every version
    loop.set_debug(True)
    with socket.socket() as s:                       # blocking
        with pytest.raises(ValueError) as e:
            run(loop, _all_ops(loop, s)[op]())
    assert str(e.value) == 'the socket must be non-blocking'


@pytest.mark.parametrize('op', sorted(_all_ops(None, None)))
def test_ssl_socket_rejected(loop, op):
    if not hasattr(loop, op):
        pytest.skip(f'{op} is new in 3.11')  # ferroloop has it on every version
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with ctx.wrap_socket(socket.socket(), server_hostname='localhost') as s:
        s.setblocking(False)
        with pytest.raises(TypeError) as e:
            run(loop, _all_ops(loop, s)[op]())
    assert str(e.value) == 'Socket cannot be of type SSLSocket'


@pytest.mark.parametrize('op', ['sock_recv', 'sock_recv_into', 'sock_sendall'])
def test_closed_socket_is_ebadf(loop, op):
    s = socket.socket()
    s.setblocking(False)
    s.close()
    with pytest.raises(OSError) as e:
        run(loop, _all_ops(loop, s)[op]())
    assert type(e.value) is OSError and e.value.errno == errno.EBADF


def test_peer_reset_while_waiting(loop, tcp_pair):
    client, server = tcp_pair

    async def main():
        t = asyncio.create_task(loop.sock_recv(client, 100))
        await asyncio.sleep(0)
        assert not t.done()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        server.close()                               # RST
        return await t

    with pytest.raises(ConnectionResetError) as e:
        run(loop, main())
    assert (e.value.errno, str(e.value)) == (errno.ECONNRESET, '[Errno 104] Connection reset by peer')
    assert not has_reader(loop, client.fileno())


# ----- cancellation and concurrent readers -------------------------------------------

def test_cancel_pending_recv_unregisters_and_loses_nothing(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert not has_reader(loop, a.fileno())
        b.send(b'after cancel')
        return await loop.sock_recv(a, 100)

    assert run(loop, main()) == b'after cancel'


def test_wait_for_timeout_then_recv(loop, pair):
    a, b = pair

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 10), 0.01)
        b.send(b'still here')
        return await loop.sock_recv(a, 100)

    assert run(loop, main()) == b'still here'


def test_second_reader_replaces_the_first(loop, pair):
    """asyncio's behaviour: a second sock_recv on the same fd takes over the fd's
    reader; the first waits forever (until cancelled), and cancelling it must not
    remove the second one's reader."""
    a, b = pair

    async def main():
        first = asyncio.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        second = asyncio.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        b.send(b'for the second')
        return await second

    assert run(loop, main()) == b'for the second'


def test_cancel_pending_connect_and_accept(loop):
    with socket.socket() as listener:
        listener.setblocking(False)
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)

        async def main():
            t = asyncio.create_task(loop.sock_accept(listener))
            await asyncio.sleep(0)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            return has_reader(loop, listener.fileno())

        assert run(loop, main()) is False


def test_cancel_pending_sendall_keeps_stream_usable(loop, pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def main():
        t = asyncio.create_task(loop.sock_sendall(a, b'q' * (4 * 1024 * 1024)))
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return has_writer(loop, a.fileno())

    assert run(loop, main()) is False


# ----- connect / accept --------------------------------------------------------------

def test_connect_and_accept(loop):
    with socket.socket() as listener, socket.socket() as client:
        listener.setblocking(False)
        client.setblocking(False)
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)

        async def main():
            acc = asyncio.create_task(loop.sock_accept(listener))
            await asyncio.sleep(0)
            assert not acc.done()
            assert await loop.sock_connect(client, listener.getsockname()) is None
            return await acc

        conn, addr = run(loop, main())
        with conn:
            assert isinstance(conn, socket.socket)
            assert conn.gettimeout() == 0
            assert addr == client.getsockname()
            assert client.getpeername() == listener.getsockname()


def test_connect_resolves_names(loop):
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)
        client.setblocking(False)
        run(loop, loop.sock_connect(client, ('localhost', listener.getsockname()[1])))
        assert client.getpeername() == listener.getsockname()


def test_connect_refused(loop):
    port = free_port()
    with socket.socket() as s:
        s.setblocking(False)
        with pytest.raises(ConnectionRefusedError) as e:
            run(loop, loop.sock_connect(s, ('127.0.0.1', port)))
    assert e.value.errno == errno.ECONNREFUSED
    assert str(e.value) == f"[Errno 111] Connect call failed ('127.0.0.1', {port})"


def test_connect_unix_missing_path(loop, tmp_path):
    with socket.socket(socket.AF_UNIX) as s:
        s.setblocking(False)
        with pytest.raises(FileNotFoundError) as e:
            run(loop, loop.sock_connect(s, str(tmp_path / 'nope')))
    assert e.value.errno == errno.ENOENT


def test_connect_bad_address(loop):
    with socket.socket() as s:
        s.setblocking(False)
        with pytest.raises(ValueError) as e:
            run(loop, loop.sock_connect(s, ('127.0.0.1',)))
    assert str(e.value) == 'not enough values to unpack (expected 2, got 1)'


def test_accept_unix(loop, tmp_path):
    path = str(tmp_path / 'sock')
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as client:
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
        client.connect(path)
        conn, addr = run(loop, loop.sock_accept(listener))
        with conn:
            assert conn.gettimeout() == 0 and addr == ''


# ----- datagrams ---------------------------------------------------------------------

@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(('127.0.0.1', 0))
        s.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_sendto_recvfrom(loop, udp_pair):
    if not hasattr(loop, 'sock_recvfrom'):
        pytest.skip('sock_recvfrom is new in 3.11')
    a, b = udp_pair

    async def main():
        t = asyncio.create_task(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0)
        assert not t.done()
        n = await loop.sock_sendto(a, b'datagram', b.getsockname())
        return n, await t

    assert run(loop, main()) == (8, (b'datagram', a.getsockname()))


def test_recvfrom_into_default_and_explicit_nbytes(loop, udp_pair):
    if not hasattr(loop, 'sock_recvfrom_into'):
        pytest.skip('sock_recvfrom_into is new in 3.11')
    a, b = udp_pair
    buf = bytearray(8)

    async def main():
        await loop.sock_sendto(a, b'0123456789', b.getsockname())
        first = await loop.sock_recvfrom_into(b, buf)          # nbytes=0: len(buf)
        await loop.sock_sendto(a, b'abcdef', b.getsockname())
        second = await loop.sock_recvfrom_into(b, buf, 3)
        return first, second

    assert run(loop, main()) == ((8, a.getsockname()), (3, a.getsockname()))
    assert buf == b'abc34567'


def test_recvfrom_into_nbytes_too_large(loop, udp_pair):
    if not hasattr(loop, 'sock_recvfrom_into'):
        pytest.skip('sock_recvfrom_into is new in 3.11')
    a, b = udp_pair
    with pytest.raises(ValueError) as e:
        run(loop, loop.sock_recvfrom_into(b, bytearray(4), 10))
    assert str(e.value) == 'nbytes is greater than the length of the buffer'


def test_sendto_bad_address(loop, udp_pair):
    if not hasattr(loop, 'sock_sendto'):
        pytest.skip('sock_sendto is new in 3.11')
    a, b = udp_pair
    with pytest.raises(TypeError) as e:
        run(loop, loop.sock_sendto(a, b'x', 'not an address'))
    assert str(e.value) == 'sendto(): AF_INET address must be tuple, not str'


# ----- sendfile ----------------------------------------------------------------------

DATA = bytes(range(256)) * 4096 + b'tail'            # 1 MiB + 4: several sendfile rounds


@pytest.fixture
def datafile():
    with tempfile.TemporaryFile() as f:
        f.write(DATA)
        f.seek(0)
        yield f


def _sendfile_and_collect(loop, sock, peer, *args, **kwargs):
    async def reader():
        got = bytearray()
        for _ in range(1_000_000):
            chunk = await loop.sock_recv(peer, 256 * 1024)
            if not chunk:
                return bytes(got)
            got += chunk

    async def main():
        r = asyncio.create_task(reader())
        try:
            ret = await loop.sock_sendfile(sock, *args, **kwargs)
        finally:
            sock.shutdown(socket.SHUT_WR)
        return ret, await r

    return run(loop, main())


def test_sendfile_whole_file(loop, tcp_pair, datafile):
    client, server = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    ret, got = _sendfile_and_collect(loop, client, server, datafile)
    assert ret == len(DATA) and got == DATA
    assert datafile.tell() == len(DATA)


def test_sendfile_offset_and_count(loop, pair, datafile):
    a, b = pair
    ret, got = _sendfile_and_collect(loop, a, b, datafile, 1000, 300_000)
    assert ret == 300_000 and got == DATA[1000:301_000]
    assert datafile.tell() == 301_000


def test_sendfile_count_past_eof(loop, pair, datafile):
    a, b = pair
    ret, got = _sendfile_and_collect(loop, a, b, datafile, len(DATA) - 10, 1000)
    assert ret == 10 and got == DATA[-10:]
    assert datafile.tell() == len(DATA)


def test_sendfile_empty_file(loop, pair):
    a, b = pair
    with tempfile.TemporaryFile() as f:
        ret, got = _sendfile_and_collect(loop, a, b, f)
        assert (ret, got, f.tell()) == (0, b'', 0)


def test_sendfile_fallback_for_non_file(loop, pair):
    a, b = pair
    f = io.BytesIO(DATA)
    ret, got = _sendfile_and_collect(loop, a, b, f, 5, 200_000)
    assert ret == 200_000 and got == DATA[5:200_005]
    assert f.tell() == 200_005


def test_sendfile_no_fallback_for_non_file(loop, pair):
    a, b = pair
    with pytest.raises(asyncio.SendfileNotAvailableError) as e:
        run(loop, loop.sock_sendfile(a, io.BytesIO(b'abc'), fallback=False))
    assert str(e.value) == 'not a regular file'


class PipeReader:
    """A binary reader with an fd that sendfile(2) cannot read from, and no seek."""
    mode = 'rb'

    def __init__(self, f):
        self._f = f

    def fileno(self):
        return self._f.fileno()

    def readinto(self, buf):
        return self._f.readinto(buf)


def test_sendfile_syscall_failure_falls_back(loop, pair):
    """A pipe has an fd, but sendfile(2) cannot read from it: 'os.sendfile call
    failed', then the read/send fallback (or the error without fallback)."""
    a, b = pair
    r, w = os.pipe()
    os.write(w, b'through a pipe')
    os.close(w)
    with open(r, 'rb') as f:
        with pytest.raises(asyncio.SendfileNotAvailableError) as e:
            run(loop, loop.sock_sendfile(a, f, count=5, fallback=False))
        assert str(e.value) == 'os.sendfile call failed'
        ret, got = _sendfile_and_collect(loop, a, b, PipeReader(f), count=7)
    assert (ret, got) == (7, b'through')


def test_sendfile_fallback_seeks_after_even_a_pipe(loop, pair):
    """The stdlib's fallback ends with file.seek(offset + sent) whenever the file
    has a seek method; on a pipe that raises, after the data went out."""
    a, b = pair
    r, w = os.pipe()
    os.write(w, b'abc')
    os.close(w)
    with open(r, 'rb') as f:
        with pytest.raises(io.UnsupportedOperation):
            run(loop, loop.sock_sendfile(a, f, count=3))
    assert b.recv(10) == b'abc'


@pytest.mark.parametrize('kwargs, exc, msg', [
    (dict(count=0), ValueError, 'count must be a positive integer (got 0)'),
    (dict(count='1'), TypeError, "count must be a positive integer (got '1')"),
    (dict(count=1.0), TypeError, 'count must be a positive integer (got 1.0)'),
    (dict(offset=-1), ValueError, 'offset must be a non-negative integer (got -1)'),
    (dict(offset=None), TypeError, 'offset must be a non-negative integer (got None)'),
    (dict(offset='0'), TypeError, "offset must be a non-negative integer (got '0')"),
])
def test_sendfile_bad_arguments(loop, pair, datafile, kwargs, exc, msg):
    a, b = pair
    with pytest.raises(exc) as e:
        run(loop, loop.sock_sendfile(a, datafile, **kwargs))
    assert str(e.value) == msg


def test_sendfile_text_file_and_datagram_socket(loop, pair, tmp_path):
    a, b = pair
    p = tmp_path / 'text'
    p.write_text('text')
    with open(p) as f:
        with pytest.raises(ValueError) as e:
            run(loop, loop.sock_sendfile(a, f))
        assert str(e.value) == 'file should be opened in binary mode'
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as d, open(p, 'rb') as f:
        d.setblocking(False)
        with pytest.raises(ValueError) as e:
            run(loop, loop.sock_sendfile(d, f))
        assert str(e.value) == 'only SOCK_STREAM type sockets are supported'


def test_sendfile_to_reset_peer(loop, tcp_pair, datafile):
    client, server = tcp_pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    server.close()
    with pytest.raises(asyncio.SendfileNotAvailableError) as e:
        # Nothing sent yet: the stdlib reports any first failure as "not available".
        run(loop, loop.sock_sendfile(client, datafile, fallback=False))
    assert str(e.value) == 'os.sendfile call failed'
    assert datafile.tell() == 0


# ----- object lifetime ---------------------------------------------------------------

def test_abandoned_pending_ops_are_collected_quietly(loop, pair):
    """A task left waiting forever (its reader replaced by a second one) forms a
    cycle task -> coroutine -> operation -> future -> task; closing the loop and
    dropping it must let the GC free it, with nothing raised while finalising."""
    a, b = pair
    refs = []

    async def waiter():
        await loop.sock_recv(a, 10)

    async def main():
        first = loop.create_task(waiter())
        refs.append(weakref.ref(first))
        await asyncio.sleep(0)
        second = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        b.send(b'x')
        assert await second == b'x'
        pending_send = loop.create_task(loop.sock_sendall(a, b'y' * (16 << 20)))
        refs.append(weakref.ref(pending_send))
        await asyncio.sleep(0)

    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        loop.set_exception_handler(lambda lp, ctx: None)   # "Task was destroyed..."
        run(loop, main())
        loop.close()
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert [r() for r in refs] == [None, None]
    assert unraisable == []


class SocketSubclass(socket.socket):
    """Not exactly socket.socket: ferroloop goes through the socket's own methods."""
    calls = 0

    def recv(self, n):
        SocketSubclass.calls += 1
        return super().recv(n)


def test_socket_subclass_goes_through_its_methods(loop):
    a, b = socket.socketpair()
    with SocketSubclass(fileno=a.detach()) as sa, b:
        sa.setblocking(False)
        b.setblocking(False)
        SocketSubclass.calls = 0

        async def main():
            t = asyncio.create_task(loop.sock_recv(sa, 100))
            await asyncio.sleep(0)
            await loop.sock_sendall(b, b'via method')
            return await t

        assert run(loop, main()) == b'via method'
        assert SocketSubclass.calls == 2          # EAGAIN, then the data


def _cancel_pending_sendfile(loop, sock, file):
    async def main():
        t = asyncio.create_task(loop.sock_sendfile(sock, file))
        await asyncio.sleep(0)
        assert not t.done()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return has_writer(loop, sock.fileno())

    return run(loop, main())


def test_sendfile_cancel_native_leaves_position(loop, pair, datafile):
    a, b = pair                                      # nobody reads b: sendfile blocks
    assert _cancel_pending_sendfile(loop, a, datafile) is False
    assert datafile.tell() == 0


def test_sendfile_cancel_fallback_seeks_what_was_sent(loop, pair):
    a, b = pair
    f = io.BytesIO(DATA)
    assert _cancel_pending_sendfile(loop, a, f) is False
    # The first 256 KiB block was read; its sock_sendall never finished, so nothing
    # counts as sent and the fallback's finally does not seek.
    assert f.tell() == 256 * 1024
