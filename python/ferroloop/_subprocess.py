"""Subprocesses: ``loop.subprocess_exec`` and ``loop.subprocess_shell`` (and so
``asyncio.create_subprocess_exec/_shell`` and ``asyncio.subprocess.Process``).

The transport is asyncio's own ``base_subprocess.BaseSubprocessTransport`` (an
``asyncio.SubprocessTransport``): its callback order (``connection_made``,
``pipe_data_received``, ``pipe_connection_lost``, ``process_exited``, then
``connection_lost`` once the child exited and every pipe closed) is the spec, and
each Python version gets its own. What ferroloop provides is the rest:

* the child is created by ``subprocess.Popen`` itself, so every keyword, error
  (``FileNotFoundError`` with errno and filename...) and fd cleanup is the
  stdlib's. Without ``preexec_fn`` it runs on the loop thread (a vfork+exec, the
  loop waits only for the exec); a ``preexec_fn`` runs Python code in the child
  before exec and may take any time, so those spawns run in a thread of their own
  and the loop keeps running (uvloop #118);
* its pipes are ferroloop's pipe transports;
* its exit is watched without ``SIGCHLD`` or a child watcher: a pidfd in the loop's
  poller (``ChildWatch``, ``src/subprocess.rs``), reaped as soon as it is readable;
  where no pidfd can be had or watched (old kernel, seccomp, no fd left), a thread per child
  blocked in ``waitpid`` (asyncio's ``ThreadedChildWatcher``). Child watchers set on the policy are left
  alone: ferroloop's loops never use them."""

import contextvars
import subprocess
import sys
import threading

from asyncio import base_events, base_subprocess
from asyncio.log import logger

from ._ferroloop import ChildWatch, wait_child_blocking

# Whether to try pidfds at all (tests turn it off to exercise the thread fallback).
_use_pidfd = True


class _SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport over a ``Popen`` made before it (in a thread
    when a ``preexec_fn`` is given), watched by ``_watch_exit``."""

    def __init__(self, loop, protocol, args, shell, stdin, stdout, stderr, bufsize, *,
                 popen, waiter=None, extra=None):
        self._popen = popen
        super().__init__(loop, protocol, args, shell, stdin, stdout, stderr, bufsize,
                         waiter=waiter, extra=extra)

    def _start(self, **kwargs):
        self._proc = self._popen
        self._popen = None

    def _on_exit(self, returncode):
        if returncode is None:
            # Reaped by someone else (Popen.poll() in close(), a waitpid(-1)
            # handler): Popen's code if it saw it, else asyncio's watchers' 255.
            returncode = self._proc.returncode if self._proc is not None else None
            if returncode is None:
                logger.warning('child process pid %d exit status already read: '
                               'will report returncode 255', self._pid)
                returncode = 255
        if self._returncode is None:
            self._process_exited(returncode)


def _popen(args, shell, stdin, stdout, stderr, bufsize, kwargs):
    return subprocess.Popen(args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                            universal_newlines=False, bufsize=bufsize, **kwargs)


def _discard(loop, popen):
    """Kills a child made for nobody (its spawn was cancelled, or its transport
    failed), closes its pipes and reaps it; the return code goes to its ``Popen``,
    which would otherwise warn that the child "is still running" when collected and
    keep it in ``subprocess._active``, to be polled by pid long after it was reaped."""
    popen.kill()
    for f in (popen.stdin, popen.stdout, popen.stderr):
        if f is not None:
            f.close()

    def exited(returncode):
        if popen.returncode is None:
            popen.returncode = 255 if returncode is None else returncode

    _watch_exit(loop, popen.pid, exited)


def _watch_exit(loop, pid, callback):
    """Calls ``callback(returncode)`` on ``loop`` once child ``pid`` exited (reaped;
    ``None`` if someone else reaped it), in the context asyncio's default child
    watcher gives it: before 3.12 the threaded watcher's (an empty one), from 3.12
    the pidfd watcher's (a copy of the spawner's)."""
    context = contextvars.copy_context() if sys.version_info >= (3, 12) else contextvars.Context()
    if _use_pidfd and ChildWatch.start(loop, pid, callback, context) is not None:
        return

    def wait():
        returncode = wait_child_blocking(pid)
        try:
            loop.call_soon_threadsafe(callback, returncode, context=context)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    threading.Thread(target=wait, name=f'ferroloop-waitpid-{pid}', daemon=True).start()


async def _spawn_in_thread(loop, spawn):
    """Runs ``spawn()`` (a Popen with a ``preexec_fn``) in a thread of its own; a
    child spawned for a caller that was cancelled meanwhile is killed and reaped."""
    fut = loop.create_future()

    def done(ok, value):
        if fut.cancelled():
            if ok:  # nobody will use it
                _discard(loop, value)
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run():
        try:
            result = (True, spawn())
        except BaseException as exc:  # handed to the awaiting task
            result = (False, exc)
        try:
            loop.call_soon_threadsafe(done, *result)
        except RuntimeError:  # the loop closed meanwhile
            if result[0]:
                result[1].kill()
                result[1].wait()

    threading.Thread(target=run, name='ferroloop-spawn', daemon=True).start()
    return await fut


class SubprocessMixin:
    """``subprocess_exec`` / ``subprocess_shell`` for ``ferroloop.Loop``: the
    stdlib's own methods (its argument checks, messages and debug log, as each
    Python version has them), over ferroloop's ``_make_subprocess_transport``.
    (Tools that flag blocking calls inside a running loop, such as blockbuster,
    allow ``Popen``'s wait for the exec under these methods by name.)"""

    subprocess_shell = base_events.BaseEventLoop.subprocess_shell
    subprocess_exec = base_events.BaseEventLoop.subprocess_exec
    _log_subprocess = base_events.BaseEventLoop._log_subprocess

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, extra=None, **kwargs):
        self._check_closed()
        if kwargs.get('preexec_fn') is not None:
            popen = await _spawn_in_thread(
                self, lambda: _popen(args, shell, stdin, stdout, stderr, bufsize, kwargs))
        else:
            popen = _popen(args, shell, stdin, stdout, stderr, bufsize, kwargs)
        waiter = self.create_future()
        try:
            transport = _SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr,
                                             bufsize, popen=popen, waiter=waiter, extra=extra)
        except BaseException:
            _discard(self, popen)
            raise
        _watch_exit(self, transport.get_pid(), transport._on_exit)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport
