"""Subprocesses (``subprocess_exec``/``subprocess_shell``, ``asyncio.create_subprocess_*``):
every case on the stdlib loop and on ferroloop with the same assertions (the
``loop`` fixture of conftest, which also fails a test that leaks an fd). Where the
stdlib loop is known to behave otherwise (it runs ``preexec_fn`` on the loop
thread), the test says so and checks each loop's own behaviour."""

import asyncio
import gc
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

import ferroloop
from conftest import loop_factory_source, open_fds, run_python

PIPE = asyncio.subprocess.PIPE
PY = sys.executable


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def is_ferroloop(loop):
    return isinstance(loop, ferroloop.Loop)


def zombies_of_ours():
    """Pids of our children that exited and were not reaped."""
    me, found = os.getpid(), []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(')') + 2:].split()
        if fields[0] == 'Z' and int(fields[1]) == me:
            found.append(int(name))
    return found


class Recording(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.events = []
        self.out = {1: bytearray(), 2: bytearray()}
        self.exited = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.events.append('made')

    def pipe_data_received(self, fd, data):
        self.out[fd] += data
        if self.events[-1] != ('data', fd):
            self.events.append(('data', fd))

    def pipe_connection_lost(self, fd, exc):
        self.events.append(('pipe_lost', fd, exc))

    def process_exited(self):
        self.events.append('exited')
        self.exited.set_result(None)

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost.set_result(exc)


def test_exec_callback_order_and_transport(loop):
    async def main():
        proto = Recording(loop)
        tr, p = await loop.subprocess_exec(
            lambda: proto, PY, '-c', 'import sys; sys.stdout.write("out"); sys.stderr.write("err")')
        assert p is proto
        assert isinstance(tr, asyncio.SubprocessTransport)
        assert tr.get_pid() > 0
        stdin = tr.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(tr.get_pipe_transport(1), asyncio.ReadTransport)
        assert tr.get_pipe_transport(3) is None
        stdin.close()
        assert await proto.lost is None
        code = tr.get_returncode()
        tr.close()
        return proto.events, {k: bytes(v) for k, v in proto.out.items()}, code

    events, out, code = run(loop, main())
    assert code == 0
    assert out == {1: b'out', 2: b'err'}
    assert events[0] == 'made' and events[-1] == 'lost'
    lost = [e for e in events if isinstance(e, tuple) and e[0] == 'pipe_lost']
    assert sorted(lost) == [('pipe_lost', 0, None), ('pipe_lost', 1, None), ('pipe_lost', 2, None)]
    # connection_lost only after the exit and every pipe closed
    assert events.index('exited') < events.index('lost')
    assert all(events.index(e) < events.index('lost') for e in lost)


@pytest.mark.parametrize('kwargs,message', [
    ({'universal_newlines': True}, 'universal_newlines must be False'),
    ({'shell': True}, 'shell must be False'),
    ({'bufsize': 4096}, 'bufsize must be 0'),
    ({'text': True}, 'text must be False'),
    ({'encoding': 'utf-8'}, 'encoding must be None'),
    ({'errors': 'strict'}, 'errors must be None'),
])
def test_exec_argument_errors(loop, kwargs, message):
    with pytest.raises(ValueError) as info:
        run(loop, loop.subprocess_exec(asyncio.SubprocessProtocol, 'true', **kwargs))
    assert str(info.value) == message


@pytest.mark.parametrize('cmd,kwargs,message', [
    (['true'], {}, 'cmd must be a string'),
    ('true', {'universal_newlines': True}, 'universal_newlines must be False'),
    ('true', {'shell': False}, 'shell must be True'),
    ('true', {'bufsize': 1}, 'bufsize must be 0'),
    ('true', {'text': True}, 'text must be False'),
    ('true', {'encoding': 'utf-8'}, 'encoding must be None'),
    ('true', {'errors': 'strict'}, 'errors must be None'),
])
def test_shell_argument_errors(loop, cmd, kwargs, message):
    with pytest.raises(ValueError) as info:
        run(loop, loop.subprocess_shell(asyncio.SubprocessProtocol, cmd, **kwargs))
    assert str(info.value) == message


def test_non_string_argument_is_popens_type_error(loop):
    with pytest.raises(TypeError) as info:
        run(loop, asyncio.create_subprocess_exec('echo', 1))
    assert 'int' in str(info.value)


def test_returncodes_and_signals(loop):
    async def main():
        codes = []
        p = await asyncio.create_subprocess_exec(PY, '-c', 'raise SystemExit(3)')
        codes.append(await p.wait())
        p = await asyncio.create_subprocess_shell('kill -9 $$')
        codes.append(await p.wait())
        for method in ('terminate', 'kill'):
            p = await asyncio.create_subprocess_exec('sleep', '30')
            getattr(p, method)()
            codes.append(await p.wait())
        p = await asyncio.create_subprocess_exec('sleep', '30')
        p.send_signal(signal.SIGUSR1)
        codes.append(await p.wait())
        return codes

    assert run(loop, main()) == [3, -signal.SIGKILL, -signal.SIGTERM, -signal.SIGKILL, -signal.SIGUSR1]


@pytest.mark.parametrize('path,exc_type,errno_', [
    ('/nonexistent/program', FileNotFoundError, 2),
    ('/dev/null', PermissionError, 13),
])
def test_failed_exec_raises_popens_error_and_leaks_no_fd(loop, path, exc_type, errno_):
    run(loop, asyncio.sleep(0))  # the loop's own fds (signal wakeup socket) exist from here on
    before = open_fds()
    with pytest.raises(exc_type) as info:
        run(loop, asyncio.create_subprocess_exec(path, stdin=PIPE, stdout=PIPE, stderr=PIPE))
    assert info.value.errno == errno_
    assert info.value.filename == path
    assert open_fds() == before
    assert zombies_of_ours() == []


def test_communicate_above_64k_both_ways(loop):
    size = 1 << 20
    code = f'import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d); sys.stderr.buffer.write(d[:{size // 2}])'

    async def main():
        data = os.urandom(size)
        p = await asyncio.create_subprocess_exec(PY, '-c', code, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await p.communicate(data)
        return out == data, err == data[:size // 2], p.returncode

    assert run(loop, main()) == (True, True, 0)


def test_cat_pipes_100_mib_through(loop):
    chunk = os.urandom(1 << 20)
    total = 100

    async def main():
        p = await asyncio.create_subprocess_exec('cat', stdin=PIPE, stdout=PIPE)

        async def feed():
            for _ in range(total):
                p.stdin.write(chunk)
                await p.stdin.drain()
            p.stdin.close()

        async def digest():
            h, n = hashlib.sha256(), 0
            while True:
                block = await p.stdout.read(1 << 20)
                if not block:
                    return h.hexdigest(), n
                h.update(block)
                n += len(block)

        _, (got, n) = await asyncio.gather(feed(), digest())
        return got, n, await p.wait()

    expected = hashlib.sha256()
    for _ in range(total):
        expected.update(chunk)
    assert run(loop, main(), timeout=120) == (expected.hexdigest(), total << 20, 0)


def test_stdio_choices(loop):
    with tempfile.TemporaryFile() as f:
        async def main():
            results = []
            p = await asyncio.create_subprocess_exec(
                PY, '-c', 'import sys; print("o"); print("e", file=sys.stderr)',
                stdout=PIPE, stderr=subprocess.STDOUT)
            results.append(await p.communicate())
            p = await asyncio.create_subprocess_exec(
                PY, '-c', 'import sys; print(repr(sys.stdin.read())); print("x", file=sys.stderr)',
                stdin=subprocess.DEVNULL, stdout=PIPE, stderr=subprocess.DEVNULL)
            results.append(await p.communicate())
            p = await asyncio.create_subprocess_exec('echo', 'to a file', stdout=f, stderr=f.fileno())
            results.append(await p.wait())
            return results

        results = run(loop, main())
        f.seek(0)
        assert f.read() == b'to a file\n'
    assert results == [(b'o\ne\n', None), (b"''\n", None), 0]


def test_popen_keywords(loop):
    r, w = os.pipe()
    code = ('import os, sys; print(os.getcwd(), os.environ.get("FERRO"), os.getsid(0) == os.getpid(), '
            'oct(os.umask(0)), os.write(int(sys.argv[1]), b"!"))')
    with tempfile.TemporaryDirectory() as d:
        async def main():
            p = await asyncio.create_subprocess_exec(
                PY, '-c', code, str(w), stdout=PIPE, cwd=d, env={'FERRO': 'yes'}, pass_fds=(w,),
                start_new_session=True, umask=0o27, close_fds=True, restore_signals=True,
                user=os.getuid(), group=os.getgid(), extra_groups=list(os.getgroups())[:1])
            return (await p.communicate())[0].decode().split()

        out = run(loop, main())
        assert out == [os.path.realpath(d), 'yes', 'True', '0o27', '1']
    os.close(w)
    assert os.read(r, 1) == b'!'
    os.close(r)


@pytest.mark.skipif(sys.version_info < (3, 11), reason='process_group is new in 3.11')
def test_process_group(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, '-c', 'import os; print(os.getpgid(0) == os.getpid())', stdout=PIPE, process_group=0)
        return (await p.communicate())[0]

    assert run(loop, main()) == b'True\n'


def test_preexec_fn_that_blocks_does_not_block_the_loop(loop):
    # The child's preexec_fn waits until the parent says go; ferroloop says go after
    # its loop ticked while the spawn was in progress. The stdlib runs preexec_fn
    # on the loop thread: its loop cannot tick, and the child goes on by itself
    # after the bound of 10 s... so on the stdlib loop the bound is 0.5 s.
    r, w = os.pipe()
    bound = 10.0 if is_ferroloop(loop) else 0.5

    def preexec():
        import select
        select.select([r], [], [], bound)

    async def main():
        ticks = 0
        gone = False

        def tick():
            nonlocal ticks, gone
            ticks += 1
            if ticks == 20:
                os.write(w, b'g')
                gone = True
            loop.call_soon(tick)

        loop.call_soon(tick)
        p = await asyncio.create_subprocess_exec('true', preexec_fn=preexec)
        ticked_during_spawn = gone
        return ticked_during_spawn, await p.wait()

    try:
        assert run(loop, main()) == (is_ferroloop(loop), 0)
    finally:
        os.close(r)
        os.close(w)


def test_preexec_fn_error_is_popens(loop):
    def preexec():
        raise ValueError('nope')

    with pytest.raises(subprocess.SubprocessError) as info:
        run(loop, asyncio.create_subprocess_exec('true', preexec_fn=preexec, stdout=PIPE))
    assert 'preexec_fn' in str(info.value)


def test_exit_seen_while_a_grandchild_holds_the_pipes(loop):
    async def main():
        proto = Recording(loop)
        tr, _ = await loop.subprocess_exec(
            lambda: proto, 'sh', '-c', 'sleep 60 & echo $!; exit 5', stdin=subprocess.DEVNULL)
        await proto.exited  # the pipes are still open: the grandchild has them
        code = tr.get_returncode()
        grandchild = int(bytes(proto.out[1]).split()[0])
        assert not proto.lost.done()
        os.kill(grandchild, signal.SIGKILL)
        assert await proto.lost is None
        tr.close()
        return code

    assert run(loop, main()) == 5


def test_a_thousand_children_all_reaped(loop):
    async def one():
        p = await asyncio.create_subprocess_exec(
            'true', stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return await p.wait()

    async def main():
        return await asyncio.gather(*[one() for _ in range(1000)])

    assert run(loop, main(), timeout=240) == [0] * 1000
    assert zombies_of_ours() == []


def test_thread_watcher_fallback(loop, monkeypatch):
    # Where pidfd_open is missing (ENOSYS) ferroloop waits in a thread per child.
    monkeypatch.setattr('ferroloop._subprocess._use_pidfd', False)

    async def main():
        p = await asyncio.create_subprocess_exec('sh', '-c', 'exit 4', stdout=PIPE)
        out = await p.stdout.read()
        return out, await p.wait()

    assert run(loop, main()) == (b'', 4)
    assert zombies_of_ours() == []


def test_cancelled_spawn_leaves_no_child(loop):
    async def main():
        task = asyncio.ensure_future(asyncio.create_subprocess_exec('sleep', '30'))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main())


@pytest.mark.parametrize('kind', ['asyncio', 'ferroloop'])
def test_ctrl_c_while_waiting_on_a_child(kind):
    code = f'''
import asyncio, os, signal, ferroloop
procs = []
async def main():
    p = await asyncio.create_subprocess_exec('sleep', '30')
    procs.append(p)
    asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGINT)
    await p.wait()
loop = {loop_factory_source(kind)}
task = loop.create_task(main())
try:
    loop.run_until_complete(task)
except KeyboardInterrupt:
    print('KeyboardInterrupt', task.done(), procs[0].returncode)
procs[0].kill()
print(loop.run_until_complete(task), procs[0].returncode)
loop.close()
'''
    proc = run_python(code, timeout=20)
    assert proc.stdout.split() == ['KeyboardInterrupt', 'False', 'None', 'None', '-9'], proc.stderr


def test_child_still_running_when_the_loop_closes_is_reaped(loop):
    import time
    if not is_ferroloop(loop) and sys.version_info >= (3, 12):
        # ferroloop hands such a child to a thread, as asyncio 3.11's watcher does.
        pytest.skip("asyncio's pidfd watcher (3.12+) ends with its loop: the child "
                    "stays a zombie and the pidfd open")

    async def main():
        p = await asyncio.create_subprocess_exec('sleep', '30')
        return p

    p = run(loop, main())
    pid = p.pid
    p._transport.close()  # kills the child; the loop never sees it exit
    loop.close()
    deadline = time.monotonic() + 10
    while pid in zombies_of_ours() or os.path.exists(f'/proc/{pid}'):
        assert time.monotonic() < deadline, f'child {pid} not reaped'
        time.sleep(0.01)  # waiting for another thread's waitpid, bounded


def test_debug_mode_logs_the_spawn(loop, caplog):
    loop.set_debug(True)

    async def main():
        p = await asyncio.create_subprocess_exec('true', stdout=PIPE)
        await p.communicate()
        p = await asyncio.create_subprocess_shell('exit 2', stdin=subprocess.DEVNULL)
        return await p.wait()

    with caplog.at_level('DEBUG', logger='asyncio'):
        assert run(loop, main()) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert "execute program 'true' stdout=<pipe>" in messages
    assert f"run shell command 'exit 2' stdin={subprocess.DEVNULL}" in messages
    assert any(m.startswith("execute program 'true': <") for m in messages)
    assert any(m.endswith('exited with return code 2') for m in messages)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason='child watchers are deprecated from 3.12 on')
def test_a_watcher_on_the_policy_changes_nothing(loop):
    # asyncio's loop registers its children with the policy's watcher; ferroloop's
    # watches them itself, so a watcher the application set is harmless.
    policy = asyncio.get_event_loop_policy()
    watcher = asyncio.SafeChildWatcher()
    watcher.attach_loop(loop)
    policy.set_child_watcher(watcher)
    try:
        async def main():
            p = await asyncio.create_subprocess_shell('exit 6')
            return await p.wait()

        assert run(loop, main()) == 6
    finally:
        policy.set_child_watcher(None)
        watcher.attach_loop(None)


def test_spawn_cancelled_during_preexec_fn_leaves_no_child_and_no_warning(loop):
    # ferroloop spawns with a preexec_fn in a thread: cancelled meanwhile, the child
    # it made for nobody is killed and reaped, its pipes closed, and its Popen told
    # the return code (else Popen warns "still running" and keeps it to poll later).
    # The stdlib runs preexec_fn on the loop thread (so its bound is short, see
    # test_preexec_fn_that_blocks_does_not_block_the_loop) and is cancelled after.
    import warnings
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    bound = 10.0 if is_ferroloop(loop) else 0.5

    def preexec():
        import select
        os.write(pid_w, str(os.getpid()).encode())
        select.select([go_r], [], [], bound)

    async def main():
        task = asyncio.ensure_future(asyncio.create_subprocess_exec(
            'sleep', '30', preexec_fn=preexec, stdin=PIPE, stdout=PIPE, stderr=PIPE))
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        os.write(go_w, b'g')
        pid = int(os.read(pid_r, 32))
        for _ in range(1000):  # bounded: until the killed child is reaped
            if not os.path.exists(f'/proc/{pid}'):
                break
            await asyncio.sleep(0.01)
        for _ in range(5):
            await asyncio.sleep(0)
        return pid

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            pid = run(loop, main())
            gc.collect()
    finally:
        for fd in (go_r, go_w, pid_r, pid_w):
            os.close(fd)
    assert not os.path.exists(f'/proc/{pid}')
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_exit_seen_when_the_pidfd_gets_the_number_of_an_fd_with_a_stale_reader(loop):
    # An fd closed without remove_reader leaves its number with a reader; the next
    # fd opened (here the child's pidfd) gets that number. The loop cannot watch it,
    # so the child is waited for in a thread, as the stdlib's watcher does.
    if not is_ferroloop(loop) and sys.version_info >= (3, 12):
        pytest.skip("asyncio 3.12+ watches the pidfd with add_reader, where the stale "
                    "reader's selector key hides it: the exit is never seen")

    async def main():
        a, b = socket.socketpair()
        fd = a.fileno()
        loop.add_reader(fd, lambda: None)
        a.close()
        try:
            p = await asyncio.create_subprocess_exec('sh', '-c', 'exit 7')
            return await p.wait()
        finally:
            loop.remove_reader(fd)
            b.close()

    assert run(loop, main(), timeout=10) == 7
    assert zombies_of_ours() == []


def test_sigchld_is_left_to_the_application(loop):
    # Neither loop takes SIGCHLD: the application's handler stays installed and
    # still sees its children exit.
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGCHLD, handler)
    try:
        async def main():
            for _ in range(3):
                p = await asyncio.create_subprocess_exec('true', stdout=PIPE)
                await p.communicate()
            return signal.getsignal(signal.SIGCHLD)

        installed = run(loop, main())
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert installed is handler
    assert seen and set(seen) == {signal.SIGCHLD}
