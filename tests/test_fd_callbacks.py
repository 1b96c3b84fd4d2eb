"""add_reader / add_writer / remove_reader / remove_writer: level-triggered fd
callbacks, with the stdlib selector loop's argument rules and errors."""

import asyncio
import contextvars
import os
import socket

import pytest

VAR = contextvars.ContextVar('VAR', default='default')



def run_iterations(loop, n):
    """Run exactly ``n`` loop iterations (each with a zero poll timeout)."""
    for _ in range(n):
        loop.stop()
        loop.run_forever()


def fail_fast(loop, seconds=10):
    fired = []
    loop.call_later(seconds, lambda: (fired.append(True), loop.stop()))
    return fired


def test_reader_called_when_readable(loop, pair):
    a, b = pair
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))
        loop.stop()

    assert loop.add_reader(a.fileno(), on_readable, 'tag') is None
    fired = fail_fast(loop)
    loop.call_soon(b.send, b'hello')
    loop.run_forever()
    assert got == [('tag', b'hello')]
    assert not fired
    assert loop.remove_reader(a.fileno()) is True


def test_reader_is_level_triggered(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(1)))
    b.send(b'xyz')
    run_iterations(loop, 6)
    # One byte per call: called three times, then no more data, no more calls.
    assert got == [b'x', b'y', b'z']
    assert loop.remove_reader(a)


def test_reader_not_draining_keeps_being_called(loop, pair):
    a, b = pair
    calls = []
    loop.add_reader(a, lambda: calls.append(1))
    b.send(b'data')
    run_iterations(loop, 5)
    assert len(calls) == 5
    loop.remove_reader(a)


def test_writer_called_when_writable(loop, pair):
    a, b = pair
    calls = []

    def on_writable():
        calls.append(a.send(b'w'))
        if len(calls) == 3:
            loop.remove_writer(a)

    loop.add_writer(a, on_writable)
    run_iterations(loop, 5)
    assert calls == [1, 1, 1]
    assert b.recv(10) == b'www'


def test_object_with_fileno_and_int_are_the_same_fd(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(10)))
    b.send(b'1')
    run_iterations(loop, 1)
    assert got == [b'1']
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a) is False


def test_replacing_a_reader(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append(('first', a.recv(10))))
    loop.add_reader(a.fileno(), lambda: got.append(('second', a.recv(10))))
    b.send(b'x')
    run_iterations(loop, 2)
    assert got == [('second', b'x')]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_reader_and_writer_on_one_fd(loop, pair):
    a, b = pair
    events = []
    loop.add_reader(a, lambda: events.append(('r', a.recv(10))))
    loop.add_writer(a, lambda: events.append('w'))
    run_iterations(loop, 1)
    assert events == ['w']
    assert loop.remove_writer(a) is True
    b.send(b'in')
    run_iterations(loop, 2)
    assert events == ['w', ('r', b'in')]
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True


def test_remove_returns_false_for_unknown_fd(loop, pair):
    a, b = pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a.fileno()) is False


def test_remove_reader_inside_its_callback(loop, pair):
    a, b = pair
    calls = []

    def once():
        calls.append(1)
        assert loop.remove_reader(a) is True

    loop.add_reader(a, once)
    b.send(b'xx')
    run_iterations(loop, 3)
    assert calls == [1]


def test_removed_reader_not_called_later_in_the_same_iteration(loop, pair):
    a, b = pair
    c, d = socket.socketpair()
    try:
        calls = []
        # Both become ready in one poll; whichever runs first removes the other.
        loop.add_reader(a, lambda: (calls.append('a'), loop.remove_reader(c)))
        loop.add_reader(c, lambda: (calls.append('c'), loop.remove_reader(a)))
        b.send(b'1')
        d.send(b'1')
        run_iterations(loop, 1)
        assert calls in (['a'], ['c'])
        loop.remove_reader(a)
        loop.remove_reader(c)
    finally:
        c.close()
        d.close()


def test_reader_args_and_context(loop, pair):
    a, b = pair
    token = VAR.set('at add_reader')
    try:
        seen = []
        loop.add_reader(a, lambda x, y: (seen.append((x, y, VAR.get())), a.recv(10)), 1, 'two')
    finally:
        VAR.reset(token)
    b.send(b'.')
    run_iterations(loop, 1)
    assert seen == [(1, 'two', 'at add_reader')]
    loop.remove_reader(a)


def test_reader_called_on_peer_close(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(10)))
    b.close()
    run_iterations(loop, 1)
    assert got == [b'']
    loop.remove_reader(a)


def test_exception_in_reader_goes_to_handler_and_reader_stays(loop, pair):
    a, b = pair
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def bad():
        raise ValueError('reader failed')

    loop.add_reader(a, bad)
    b.send(b'x')
    run_iterations(loop, 2)
    assert len(errors) == 2
    assert errors[0]['message'].startswith('Exception in callback ')
    assert 'bad()' in errors[0]['message']
    assert str(errors[0]['exception']) == 'reader failed'
    assert loop.remove_reader(a) is True


def test_fd_closed_while_watched_then_reused(loop, loop_kind):
    a, b = socket.socketpair()
    calls = []
    loop.add_reader(a.fileno(), lambda: calls.append('old'))
    fd = a.fileno()
    a.close()
    b.close()
    run_iterations(loop, 1)
    assert calls == []
    # A new socket may reuse the number: replacing the reader must work.
    c, d = socket.socketpair()
    try:
        if c.fileno() == fd:
            loop.add_reader(c, lambda: calls.append(c.recv(10)))
            d.send(b'new')
            run_iterations(loop, 1)
            if loop_kind == 'ferroloop':
                # The stdlib's selector keeps the stale registration and never
                # watches the new socket; ferroloop re-registers the number.
                assert calls == [b'new']
            else:
                assert calls in ([], [b'new'])
        assert loop.remove_reader(fd) is True
    finally:
        c.close()
        d.close()


# ----- bad inputs --------------------------------------------------------------------

@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
@pytest.mark.parametrize('bad,message', [
    (-1, 'Invalid file descriptor: -1'),
    (1.5, 'Invalid file object: 1.5'),
    ('3', "Invalid file object: '3'"),
    (None, 'Invalid file object: None'),
    (object, "Invalid file object: <class 'object'>"),
])
def test_invalid_fd_value_error(loop, method, bad, message):
    with pytest.raises(ValueError) as exc_info:
        getattr(loop, method)(bad, lambda: None)
    assert str(exc_info.value) == message


@pytest.mark.parametrize('method', ['remove_reader', 'remove_writer'])
@pytest.mark.parametrize('bad,message', [
    (-1, 'Invalid file descriptor: -1'),
    (1.5, 'Invalid file object: 1.5'),
    (None, 'Invalid file object: None'),
])
def test_remove_invalid_fd_value_error(loop, method, bad, message):
    with pytest.raises(ValueError) as exc_info:
        getattr(loop, method)(bad)
    assert str(exc_info.value) == message


def test_fileno_returning_bad_values(loop):
    class NegFileno:
        def fileno(self):
            return -1

    class StrFileno:
        def fileno(self):
            return 'x'

    class RaisingFileno:
        def fileno(self):
            raise ValueError('I/O operation on closed file')

    with pytest.raises(ValueError, match='^Invalid file descriptor: -1$'):
        loop.add_reader(NegFileno(), lambda: None)
    for obj in (StrFileno(), RaisingFileno()):
        with pytest.raises(ValueError) as exc_info:
            loop.add_reader(obj, lambda: None)
        assert str(exc_info.value) == f'Invalid file object: {obj!r}'


def test_closed_socket_object(loop):
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match='^Invalid file descriptor: -1$'):
        loop.add_reader(s, lambda: None)


@pytest.mark.parametrize('method', ['reader', 'writer'])
def test_removing_by_an_object_closed_since_it_was_added(loop, method):
    """selectors find a key by its object once `fileno()` fails: libraries close a
    socket, then remove its callback from a done-callback (anyio). The callback
    is gone; a closed object that was never added is still an error."""
    a, b = socket.socketpair()
    called = []
    getattr(loop, 'add_' + method)(a, called.append, 'called')
    a.close()
    assert a.fileno() == -1
    assert getattr(loop, 'remove_' + method)(a) is True
    other = socket.socket()
    other.close()
    for closed in (a, other):  # removed already; never added
        with pytest.raises(ValueError, match='^Invalid file descriptor: -1$'):
            getattr(loop, 'remove_' + method)(closed)
    # The fd number, reused, is free for a new callback and fires for it alone.
    c, d = socket.socketpair()
    loop.add_reader(c, lambda: (called.append('new'), loop.stop()))
    d.send(b'x')
    loop.run_forever()
    assert called == ['new']
    loop.remove_reader(c)
    for s in (b, c, d):
        s.close()


def test_removing_by_a_negative_fd_from_a_closed_loop(loop):
    """asyncio's closed loop has nothing to remove and says so, before any lookup
    (a done-callback removing a closed socket's reader at shutdown)."""
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()
    loop.close()
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(-1) is False
    b.close()


def test_removing_by_a_file_closed_since_it_was_added(loop):
    """Unlike a socket's, a closed file's `fileno()` raises, and asyncio's check for
    a transport on the fd refuses it before any lookup."""
    rfd, wfd = os.pipe()
    f = os.fdopen(rfd, 'rb', 0)
    loop.add_reader(f, lambda: None)
    f.close()
    with pytest.raises(ValueError, match=r'^Invalid file object: <_io.FileIO \[closed\]>$'):
        loop.remove_reader(f)
    os.close(wfd)


def test_closed_fd_os_error(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as exc_info:
        loop.add_reader(fd, lambda: None)
    assert exc_info.value.errno == 9
    assert exc_info.value.args == (9, 'Bad file descriptor')
    # Nothing was registered: removing says so.
    assert loop.remove_reader(fd) is False


def test_regular_file_error(loop, tmp_path):
    path = tmp_path / 'regular'
    path.write_bytes(b'data')
    with open(path, 'rb') as f:
        with pytest.raises(PermissionError) as exc_info:
            loop.add_reader(f, lambda: None)
        assert exc_info.value.args == (1, 'Operation not permitted')
        assert loop.remove_reader(f) is False


def test_add_reader_on_closed_loop(loop, pair):
    a, b = pair
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.add_reader(a, lambda: None)
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.add_writer(a, lambda: None)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_pipe_fds(loop):
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        got = []
        loop.add_reader(r, lambda: got.append(os.read(r, 100)))
        loop.add_writer(w, lambda: (os.write(w, b'piped'), loop.remove_writer(w)))
        run_iterations(loop, 3)
        assert b''.join(got) == b'piped'
        assert loop.remove_reader(r) is True
    finally:
        os.close(r)
        os.close(w)


def _ready_before_next_batch(loop, watch, b):
    """A callback sends to our own socket and schedules B; B schedules C. The
    stdlib polls (timeout 0) before every batch, so the fd's event is found in the
    iteration that runs B and its callback runs between B and C. A loop that
    skipped that poll when work is queued would run it after C."""
    order = []
    done = loop.create_future()

    def c():
        order.append('C')
        loop.call_soon(done.set_result, None)

    def a():
        order.append('A')
        b.send(b'x')
        loop.call_soon(lambda: (order.append('B'), loop.call_soon(c)))

    watch(lambda: order.append('io'))
    loop.call_soon(a)
    loop.run_until_complete(asyncio.wait_for(done, 10))
    return order


def test_io_is_polled_before_every_batch(loop, pair):
    a, b = pair

    def watch(on_io):
        loop.add_reader(a, lambda: (on_io(), a.recv(10), loop.remove_reader(a)))

    assert _ready_before_next_batch(loop, watch, b) == ['A', 'B', 'io', 'C']


def test_transport_io_is_polled_before_every_batch(loop, pair):
    a, b = pair
    transports = []

    def watch(on_io):
        class Proto(asyncio.Protocol):
            def data_received(self, data):
                on_io()

        transport, _ = loop.run_until_complete(loop.create_connection(Proto, sock=a))
        transports.append(transport)

    assert _ready_before_next_batch(loop, watch, b) == ['A', 'B', 'io', 'C']
    transports[0].close()
    run_iterations(loop, 2)


@pytest.mark.parametrize('peer', ['stream', 'datagram'])
def test_what_an_io_callback_sends_is_polled_before_its_callbacks_callbacks(loop, peer):
    """A protocol callback sends to a transport of the same loop and schedules X;
    X schedules Y. The stdlib polls before the batch that runs X, finds the data
    there, and runs the peer's callback between X and Y. (ferroloop skips that poll
    after a batch of I/O alone only when the batch sent nothing.)"""
    order = []
    done = loop.create_future()

    class Recorder(asyncio.Protocol):
        def __init__(self, name, on_data=None):
            self.name, self.on_data = name, on_data

        def data_received(self, data):
            order.append(self.name)
            if self.on_data:
                self.on_data()

        def datagram_received(self, data, addr):
            self.data_received(data)

    def y():
        order.append('Y')
        loop.call_soon(done.set_result, None)

    def x():
        order.append('X')
        loop.call_soon(y)

    trigger_a, trigger_b = socket.socketpair()
    if peer == 'stream':
        src, dst = socket.socketpair()
        make = loop.create_connection
    else:
        src, dst = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (src, dst):
            sock.bind(('127.0.0.1', 0))
        src.connect(dst.getsockname())
        dst.connect(src.getsockname())
        make = loop.create_datagram_endpoint
    out, _ = loop.run_until_complete(make(lambda: Recorder('peer'), sock=dst))
    sender, _ = loop.run_until_complete(make(lambda: Recorder('spare'), sock=src))
    send = sender.write if peer == 'stream' else sender.sendto

    def on_trigger():
        send(b'ping')
        loop.call_soon(x)

    trigger, _ = loop.run_until_complete(loop.create_connection(lambda: Recorder('io', on_trigger), sock=trigger_a))
    try:
        # Sent from a callback of its own, so that the next batch is the trigger's
        # I/O alone.
        loop.call_soon(loop.call_soon, trigger_b.send, b'go')
        loop.run_until_complete(asyncio.wait_for(done, 10))
        assert order == ['io', 'X', 'peer', 'Y']
    finally:
        for t in (trigger, sender, out):
            t.close()
        trigger_b.close()
        run_iterations(loop, 2)
