"""run_in_executor and the default executor; getaddrinfo/getnameinfo give what the
socket module gives (loopback names and addresses only, no DNS traffic)."""

import asyncio
import concurrent.futures
import logging
import re
import socket
import sys
import threading

import pytest


def whoami():
    return threading.current_thread().name


def fails():
    raise ZeroDivisionError('in executor')


# ----- run_in_executor -------------------------------------------------------------

def test_run_in_executor_default_thread_pool(loop):
    fut = loop.run_in_executor(None, whoami)
    assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
    name = loop.run_until_complete(fut)
    assert name.startswith('asyncio_') and name != threading.current_thread().name
    assert isinstance(loop._default_executor, concurrent.futures.ThreadPoolExecutor)


def test_run_in_executor_args_and_exception(loop):
    assert loop.run_until_complete(loop.run_in_executor(None, pow, 2, 10)) == 1024
    with pytest.raises(ZeroDivisionError, match='^in executor$'):
        loop.run_until_complete(loop.run_in_executor(None, fails))


def test_run_in_executor_many_concurrent(loop):
    async def main():
        return await asyncio.gather(*[loop.run_in_executor(None, pow, i, 2) for i in range(50)])

    assert loop.run_until_complete(main()) == [i * i for i in range(50)]


def test_run_in_executor_explicit_thread_pool(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='mine') as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, whoami)).startswith('mine')
    assert loop._default_executor is None


def test_run_in_executor_process_pool(loop):
    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, pow, 3, 4)) == 81
        import os
        pid = loop.run_until_complete(loop.run_in_executor(ex, os.getpid))
        assert pid != os.getpid()


def test_run_in_executor_cancel_wrapped_future(loop):
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        blocker = loop.run_in_executor(ex, release.wait, 30)
        queued = loop.run_in_executor(ex, pow, 2, 2)
        queued.cancel()
        release.set()
        assert loop.run_until_complete(blocker) is True
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(queued)


def test_set_default_executor(loop):
    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='custom-default')
    loop.set_default_executor(ex)
    assert loop.run_until_complete(loop.run_in_executor(None, whoami)).startswith('custom-default')
    loop.run_until_complete(loop.shutdown_default_executor())
    ex.shutdown()


@pytest.mark.parametrize('bad', [None, 1, 'executor', 'process pool'])
def test_set_default_executor_type_error(loop, bad):
    if bad == 'process pool':
        bad = concurrent.futures.ProcessPoolExecutor(1)
    try:
        if sys.version_info < (3, 11):
            # 3.10 takes any executor and only warns.
            with pytest.warns(DeprecationWarning, match='^Using the default executor that is not an instance of '
                              'ThreadPoolExecutor is deprecated and will be prohibited in Python 3.9$'):
                loop.set_default_executor(bad)
            assert loop._default_executor is bad
            loop._default_executor = None  # not a pool close() could shut down
        else:
            with pytest.raises(TypeError, match='^executor must be ThreadPoolExecutor instance$'):
                loop.set_default_executor(bad)
    finally:
        if isinstance(bad, concurrent.futures.Executor):
            bad.shutdown()


def test_run_in_executor_debug_rejects_coroutine_functions(loop):
    loop.set_debug(True)

    async def coro():
        pass

    with pytest.raises(TypeError, match=r'^coroutines cannot be used with run_in_executor\(\)$'):
        loop.run_in_executor(None, coro)
    with pytest.raises(TypeError, match=r'^a callable object was expected by run_in_executor\(\), got 1$'):
        loop.run_in_executor(None, 1)


def test_run_in_executor_non_callable_without_debug(loop):
    with pytest.raises(TypeError, match="^'int' object is not callable$"):
        loop.run_until_complete(loop.run_in_executor(None, 1))


def test_run_in_executor_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.run_in_executor(None, int)


def test_close_shuts_default_executor_down_without_waiting(loop):
    release = threading.Event()
    fut = loop.run_in_executor(None, release.wait, 30)
    ex = loop._default_executor
    loop.close()
    assert loop._default_executor is None
    with pytest.raises(RuntimeError, match='cannot schedule new futures after shutdown'):
        ex.submit(int)
    release.set()
    ex.shutdown(wait=True)
    del fut


# ----- getaddrinfo / getnameinfo -------------------------------------------------------

GAI_CASES = [
    ('localhost', 80, {}),
    ('localhost', 'http', {'type': socket.SOCK_STREAM}),
    ('127.0.0.1', 0, {}),
    ('127.0.0.1', 8080, {'family': socket.AF_INET, 'type': socket.SOCK_DGRAM}),
    ('127.0.0.1', 53, {'proto': socket.IPPROTO_UDP}),
    ('::1', 443, {'family': socket.AF_INET6}),
    ('::1', None, {'flags': socket.AI_NUMERICHOST}),
    (None, 0, {'flags': socket.AI_PASSIVE, 'type': socket.SOCK_STREAM}),
    (b'127.0.0.1', b'80', {}),
]


@pytest.mark.parametrize('host,port,kw', GAI_CASES, ids=[f'{h!r}-{p!r}-{sorted(k)}' for h, p, k in GAI_CASES])
def test_getaddrinfo_matches_socket_module(loop, host, port, kw):
    expected = socket.getaddrinfo(host, port, **kw)
    got = loop.run_until_complete(loop.getaddrinfo(host, port, **kw))
    assert got == expected


def test_getaddrinfo_scoped_ipv6_keeps_zone(loop):
    try:
        expected = socket.getaddrinfo('fe80::1%lo', 80, socket.AF_INET6, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        pytest.skip(f'no scoped IPv6 on this machine: {exc}')
    got = loop.run_until_complete(loop.getaddrinfo('fe80::1%lo', 80, family=socket.AF_INET6,
                                                   type=socket.SOCK_STREAM))
    assert got == expected
    sockaddr = got[0][4]
    # The zone survives as the scope id (and in the text form where the C library keeps it).
    assert sockaddr[0] in ('fe80::1', 'fe80::1%lo') and sockaddr[3] == socket.if_nametoindex('lo')
    assert loop.run_until_complete(loop.getnameinfo(sockaddr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)) \
        == socket.getnameinfo(sockaddr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)


ERROR_CASES = [
    ('not-numeric.invalid', 80, {'flags': socket.AI_NUMERICHOST}),
    ('127.0.0.1', 'no-such-service', {}),
    ('127.0.0.1', 80, {'family': 12345}),
    ('127.0.0.1', 80, {'type': 12345}),
    (None, None, {}),
    ('127.0.0.1', 80, {'flags': -1}),
    (1, 80, {}),
    ('127.0.0.1', 1.5, {}),
]


@pytest.mark.parametrize('host,port,kw', ERROR_CASES, ids=[f'{h!r}-{p!r}-{sorted(k)}' for h, p, k in ERROR_CASES])
def test_getaddrinfo_errors_match_socket_module(loop, host, port, kw):
    with pytest.raises(Exception) as expected:
        socket.getaddrinfo(host, port, **kw)
    with pytest.raises(Exception) as got:
        loop.run_until_complete(loop.getaddrinfo(host, port, **kw))
    assert type(got.value) is type(expected.value)
    assert got.value.args == expected.value.args


def test_getaddrinfo_keyword_only(loop):
    with pytest.raises(TypeError):
        loop.getaddrinfo('127.0.0.1', 80, socket.AF_INET)


NAMEINFO_CASES = [
    (('127.0.0.1', 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (('127.0.0.1', 80), 0),
    (('::1', 443, 0, 0), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (('::1', 22), socket.NI_NUMERICHOST),
    (('127.0.0.1', 53), socket.NI_DGRAM | socket.NI_NUMERICHOST),
]


@pytest.mark.parametrize('sockaddr,flags', NAMEINFO_CASES, ids=[f'{a!r}-{f}' for a, f in NAMEINFO_CASES])
def test_getnameinfo_matches_socket_module(loop, sockaddr, flags):
    expected = socket.getnameinfo(sockaddr, flags)
    assert loop.run_until_complete(loop.getnameinfo(sockaddr, flags)) == expected


@pytest.mark.parametrize('sockaddr,flags', [
    (('127.0.0.1',), 0),
    ('127.0.0.1', 0),
    (('127.0.0.1', 'x'), 0),
    (('not-an-ip', 80), socket.NI_NUMERICHOST),
    (('127.0.0.1', 80), 'flags'),
])
def test_getnameinfo_errors_match_socket_module(loop, sockaddr, flags):
    with pytest.raises(Exception) as expected:
        socket.getnameinfo(sockaddr, flags)
    with pytest.raises(Exception) as got:
        loop.run_until_complete(loop.getnameinfo(sockaddr, flags))
    assert type(got.value) is type(expected.value)
    assert got.value.args == expected.value.args


def test_getaddrinfo_debug_log(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 3600
    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        got = loop.run_until_complete(loop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM))
    messages = [r.getMessage() for r in caplog.records if 'address info' in r.getMessage()]
    assert messages[0] == f'Get address info 127.0.0.1:80, type={socket.SOCK_STREAM!r}'
    assert re.sub(r'took \d+\.\d{3}ms', 'took Nms', messages[1]) == \
        f'Getting address info 127.0.0.1:80, type={socket.SOCK_STREAM!r} took Nms: {got!r}'
    assert len(messages) == 2


def test_getaddrinfo_numeric_answers_are_fresh_lists(loop):
    """A caller may change the list it got; the next caller still gets libc's answer."""
    first = loop.run_until_complete(loop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM))
    first.clear()
    again = loop.run_until_complete(loop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM))
    assert again == socket.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM)
