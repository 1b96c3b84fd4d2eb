"""Unix signals: ``add_signal_handler``/``remove_signal_handler``, and the wakeup fd
that makes a signal (Ctrl-C above all) interrupt a loop asleep in the poller.
The loop reads the wakeup socket and queues the handlers itself (``src/signals.rs``).

Python's C-level signal handler writes the signal number to the wakeup fd; the
loop watches the other end of that socket pair, so the poll returns at once and
Python-level handlers (``KeyboardInterrupt``, ``asyncio.Runner``'s SIGINT handler)
run promptly even when the signal was delivered to another thread."""

import errno
import os
import signal
import socket
import sys
import threading
import warnings

from asyncio import coroutines
from asyncio.log import logger


def _sighandler_noop(signum, frame):
    """Python-level handler for signals handled by the loop: the work is done by
    the wakeup fd."""


# Write ends of every loop's wakeup socket, by fd. A forked child inherits the
# wakeup fd: left in place, the child's signals would be written into its
# parent's loop. The child starts with no wakeup fd instead, as with a fresh
# interpreter, and can run loops of its own.
_wakeup_write_fds = set()


def _forget_parent_wakeup_fd():
    try:
        current = signal.set_wakeup_fd(-1)
        if current not in _wakeup_write_fds:
            signal.set_wakeup_fd(current)
    except ValueError:
        pass  # forked from a thread other than the main one: nothing to undo here
    _wakeup_write_fds.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_parent_wakeup_fd)


class SignalsMixin:
    _signal_handlers = None
    _wakeup_socks = None
    _saved_wakeup_fd = None

    def _ensure_wakeup_socks(self):
        if self._wakeup_socks is None:
            rsock, wsock = socket.socketpair()
            rsock.setblocking(False)
            wsock.setblocking(False)
            self._wakeup_socks = (rsock, wsock)
            self._watch_signal_fd(rsock.fileno())
            _wakeup_write_fds.add(wsock.fileno())
        return self._wakeup_socks[1].fileno()

    def _install_wakeup_fd(self):
        """While running in the main thread, route signals to the poller."""
        if threading.current_thread() is not threading.main_thread():
            return
        fd = self._ensure_wakeup_socks()
        old = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        if old != fd:
            self._saved_wakeup_fd = old
            # Python has one wakeup fd: the one set before us (by the application
            # or a library) gets the signal bytes from the loop while it runs.
            if old >= 0:
                self._forward_signals_to(old)

    def _restore_wakeup_fd(self):
        if self._saved_wakeup_fd is None or self._signal_handlers:
            return
        old, self._saved_wakeup_fd = self._saved_wakeup_fd, None
        if not self.is_closed():
            self._flush_signal_fd()
            self._forward_signals_to(None)
        try:
            signal.set_wakeup_fd(old)
        except (ValueError, OSError) as exc:
            logger.info('set_wakeup_fd(%s) failed: %s', old, exc)

    def _close_wakeup_socks(self):
        if self._wakeup_socks is None:
            return
        rsock, wsock = self._wakeup_socks
        self._wakeup_socks = None
        _wakeup_write_fds.discard(wsock.fileno())
        if not self.is_closed():
            self._watch_signal_fd(None)
        try:
            current = signal.set_wakeup_fd(-1)
            if current != wsock.fileno():
                signal.set_wakeup_fd(current)  # not ours: leave it in place
        except (ValueError, OSError):
            pass  # not the main thread: nothing of ours can be installed
        rsock.close()
        wsock.close()

    @staticmethod
    def _check_signal(sig):
        if not isinstance(sig, int):
            raise TypeError(f'sig must be an int, not {sig!r}')
        if sig not in signal.valid_signals():
            raise ValueError(f'invalid signal number {sig}')

    def add_signal_handler(self, sig, callback, *args):
        """Run ``callback(*args)`` on the loop whenever signal ``sig`` arrives.
        Main thread only, as in asyncio."""
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError('coroutines cannot be used with add_signal_handler()')
        self._check_signal(sig)
        self._check_closed()
        try:
            # set_wakeup_fd() raises ValueError outside the main thread.
            signal.set_wakeup_fd(self._ensure_wakeup_socks(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        if self._signal_handlers is None:
            self._signal_handlers = {}
        self._signal_handlers[sig] = self._set_signal_handler(sig, callback, *args)
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            self._remove_signal_handler(sig)
            if not self._signal_handlers:
                self._reset_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig:d} cannot be caught')
            raise

    def remove_signal_handler(self, sig):
        """Remove the handler for ``sig``; return whether there was one."""
        self._check_signal(sig)
        if not self._signal_handlers or sig not in self._signal_handlers:
            return False
        del self._signal_handlers[sig]
        self._remove_signal_handler(sig)
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig:d} cannot be caught')
            raise
        if not self._signal_handlers and not self.is_running():
            self._reset_wakeup_fd()
        return True

    def _reset_wakeup_fd(self):
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info('set_wakeup_fd(-1) failed: %s', exc)

    def _remove_all_signal_handlers(self):
        if not self._signal_handlers:
            return
        if sys.is_finalizing():
            warnings.warn(f'Closing the loop {self!r} on interpreter shutdown '
                          'stage, skipping signal handlers removal',
                          ResourceWarning, source=self)
            self._signal_handlers.clear()
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
