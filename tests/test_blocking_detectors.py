"""What a tool that flags blocking calls inside a running loop sees, on the stdlib
loop and on ferroloop.

Such tools (blockbuster, run by aiohttp's and anyio's test suites) wrap `os.read`,
`os.stat`, `os.unlink`... and raise when one is called from a task, unless a frame
on the stack is one of asyncio's own that they allow by file and function name
(`asyncio/base_events.py` `subprocess_exec`, `asyncio/unix_events.py`
`create_unix_server`...). The few blocking calls asyncio itself makes must pass
them on ferroloop too: each either runs under the same stdlib frame, or is not a
Python-level call at all."""

import asyncio
import os
import subprocess
import sys

import pytest

from net_helpers import is_ferroloop, loop, run  # noqa: F401

# blockbuster's allowances for these calls.
ALLOWED = {
    'read': {('asyncio/base_events.py', 'subprocess_exec'), ('asyncio/base_events.py', 'subprocess_shell')},
    'stat': {('asyncio/unix_events.py', 'create_unix_server'), ('asyncio/unix_events.py', '_stop_serving')},
    'unlink': {('asyncio/unix_events.py', '_stop_serving')},
    'remove': set(),
}


@pytest.fixture
def flagged(monkeypatch):
    """Blocking calls made inside a running loop with no allowed frame above them."""
    found = []

    def watch(name):
        real = getattr(os, name)

        def wrapper(*args, **kwargs):
            if name == 'read' and not os.get_blocking(args[0]):
                return real(*args, **kwargs)
            if asyncio._get_running_loop() is not None:
                frame = sys._getframe(1)
                allowed = False
                while frame is not None:
                    where = (frame.f_code.co_filename.replace('\\', '/'), frame.f_code.co_name)
                    allowed |= any(where[0].endswith(f) and where[1] == fn for f, fn in ALLOWED[name])
                    frame = frame.f_back
                if not allowed:
                    found.append((name, args[0]))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)

    for name in ALLOWED:
        watch(name)
    return found


def test_spawning_a_child(loop, flagged):
    """`Popen` waits for the child's exec with a blocking `os.read`."""
    async def main():
        for spawn in (asyncio.create_subprocess_exec(sys.executable, '-c', 'pass'),
                      asyncio.create_subprocess_shell('exit 0')):
            proc = await spawn
            assert await proc.wait() == 0

    run(loop, main())
    assert flagged == []


def test_unix_server_socket_files(loop, flagged, tmp_path):
    """Removing a stale socket file, and (3.13) the server's own at close."""
    path = str(tmp_path / 'sock')

    async def main():
        for _ in range(2):  # the second finds the first one's file
            server = await loop.create_unix_server(asyncio.Protocol, path)
            server.close()
            await server.wait_closed()

    run(loop, main())
    if is_ferroloop(loop):
        assert flagged == []
    else:  # blockbuster does not allow even asyncio's removal of the stale file
        assert {name for name, _ in flagged} <= {'remove'}


def test_a_subprocess_pipe_is_not_read_blocking(loop, flagged):
    async def main():
        proc = await asyncio.create_subprocess_exec(sys.executable, '-c', 'print("hi")',
                                                    stdout=subprocess.PIPE)
        assert await proc.stdout.read() == b'hi\n'
        await proc.wait()

    run(loop, main())
    assert flagged == []
