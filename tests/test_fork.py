"""Processes: a child forked while a loop runs starts clean (its own loops work,
the parent's signal wakeup fd is not inherited), and reuse_port servers in forked
workers share one port, as gunicorn/uvicorn --workers run them."""

import asyncio
import os
import signal
import socket
import sys

import pytest

import ferroloop

pytestmark = pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')


def wait_child(pid):
    """Exit status of child ``pid`` (the test's own child, reaped here)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_child_forked_from_a_running_loop_runs_its_own(loop):
    async def child_main():
        await asyncio.sleep(0)
        return 7

    def fork_here():
        pid = os.fork()
        if pid == 0:  # the child: a fresh loop of the same kind must work
            code = 1
            try:
                factory = type(loop) if isinstance(loop, ferroloop.Loop) else asyncio.new_event_loop
                child_loop = factory()
                ok = child_loop.run_until_complete(child_main()) == 7
                child_loop.close()
                code = 0 if ok else 2
            finally:
                os._exit(code)
        return pid

    async def main():
        return fork_here()

    pid = loop.run_until_complete(main())
    assert wait_child(pid) == 0


@pytest.mark.skipif(sys.platform != 'linux', reason='Linux wakeup-fd semantics')
def test_child_does_not_inherit_the_loops_wakeup_fd():
    loop = ferroloop.new_event_loop()
    r, w = os.pipe()
    try:
        async def main():
            pid = os.fork()
            if pid == 0:
                try:
                    os.write(w, b'%d' % signal.set_wakeup_fd(-1))
                finally:
                    os._exit(0)
            return pid, signal.set_wakeup_fd(-1, warn_on_full_buffer=False)

        pid, parent_fd = loop.run_until_complete(main())
        assert wait_child(pid) == 0
        assert parent_fd >= 0  # the running loop had installed its wakeup fd
        assert os.read(r, 32) == b'-1'
    finally:
        signal.set_wakeup_fd(-1)
        loop.close()
        os.close(r)
        os.close(w)


@pytest.mark.skipif(not hasattr(socket, 'SO_REUSEPORT'), reason='needs SO_REUSEPORT')
def test_reuse_port_workers_share_the_load():
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    workers, ready_r, ready_w = [], *os.pipe()
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                async def serve():
                    async def answer(reader, writer):
                        writer.write(b'%d\n' % os.getpid())
                        await writer.drain()
                        writer.close()
                    server = await asyncio.start_server(answer, '127.0.0.1', port, reuse_port=True)
                    os.write(ready_w, b'x')
                    async with server:
                        await server.serve_forever()
                ferroloop.run(serve())
            finally:
                os._exit(code)
        workers.append(pid)
    probe.close()
    try:
        for _ in workers:
            assert os.read(ready_r, 1) == b'x'

        async def ask():
            reader, writer = await asyncio.open_connection('127.0.0.1', port)
            pid = int(await reader.readline())
            writer.close()
            await writer.wait_closed()
            return pid

        async def main():
            return [await ask() for _ in range(60)]
        answered = set(ferroloop.run(main()))
        # The kernel spreads connections by hash: 60 all to one worker would be
        # a 2**-59 chance if both accept.
        assert answered == set(workers)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
            wait_child(pid)
        os.close(ready_r)
        os.close(ready_w)
