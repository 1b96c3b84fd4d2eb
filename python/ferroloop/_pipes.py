"""Pipe transports: ``loop.connect_read_pipe`` and ``loop.connect_write_pipe``.

The checks (which files a pipe transport accepts, with asyncio's messages), the
start-up order (``connection_made``, then watching the fd, then the waiter) and the
transport objects protocols see are here; reading, writing, flow control and
closing are the Rust ``PipeTransportCore`` (``src/pipes.rs``), whose methods the
transports expose as bound builtins in slots, as the stream transport does.

``_ReadPipeTransport`` is an ``asyncio.ReadTransport``; ``_WritePipeTransport`` an
``asyncio.WriteTransport`` (through ``transports._FlowControlMixin``, like asyncio's
own write pipe transport)."""

import os
import stat
import warnings

from asyncio import futures, transports
from asyncio.log import logger

from ._ferroloop import PipeTransportCore

_READ_METHODS = ('close', 'is_closing', 'get_protocol', 'set_protocol')
_WRITE_METHODS = ('write', 'write_eof', 'can_write_eof', 'close', 'abort', 'is_closing',
                  'get_protocol', 'set_protocol', 'set_write_buffer_limits',
                  'get_write_buffer_limits', 'get_write_buffer_size')


class _PipeTransport:
    """What both pipe transports share: the checks, the start-up order, asyncio's
    private attributes, repr and unclosed-transport warning."""
    __slots__ = ()
    CORE_METHODS = ()
    WRITE = False

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        transports.BaseTransport.__init__(self, extra)
        self._extra['pipe'] = pipe
        self._loop = loop
        mode = os.fstat(pipe.fileno()).st_mode
        is_fifo, is_socket = stat.S_ISFIFO(mode), stat.S_ISSOCK(mode)
        if not (is_fifo or is_socket or stat.S_ISCHR(mode)):
            raise ValueError(self.REJECTED)
        os.set_blocking(pipe.fileno(), False)
        core = PipeTransportCore(loop, pipe, protocol, self, self.WRITE, is_fifo or is_socket)
        self._core = core
        for name in self.CORE_METHODS:
            setattr(self, name, getattr(core, name))
        loop.call_soon(protocol.connection_made, self)
        # Only watch the fd once connection_made() has run.
        loop.call_soon(core._start)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    @property
    def _pipe(self):
        return self._core._pipe

    @_pipe.setter
    def _pipe(self, value):
        # asyncio's tests forget a pipe this way (no warning, not closed).
        if value is not None:
            raise ValueError('a pipe transport cannot take another pipe')
        self._core._detach()

    @property
    def _fileno(self):
        return self._core._fileno

    @property
    def _protocol(self):
        return self._core.get_protocol()

    @property
    def _closing(self):
        return self._core._status()[0]

    def __repr__(self):
        core = self._core
        info = [type(self).__name__]
        if core._pipe is None:
            info.append('closed')
        elif core.is_closing():
            info.append('closing')
        info.append(f'fd={core._fileno}')
        if core._pipe is not None and not self._loop.is_closed():
            if self.WRITE:
                bufsize = core.get_write_buffer_size()
                info.append('polling' if bufsize else 'idle')
                info.append(f'bufsize={bufsize}')
            else:
                info.append('polling' if core._status()[4] and self.is_reading() else 'idle')
        elif core._pipe is not None:
            info.append('open')
        else:
            info.append('closed')
        return '<{}>'.format(' '.join(info))

    def __del__(self, _warn=warnings.warn):
        try:
            pipe = self._core._pipe
        except AttributeError:
            return
        if pipe is not None:
            try:
                _warn(f'unclosed transport {self!r}', ResourceWarning, source=self)
            finally:  # also when warnings are errors: the loop must let go of the fd
                self._core._detach()
                pipe.close()


class _ReadPipeTransport(_PipeTransport, transports.ReadTransport):
    CORE_METHODS = _READ_METHODS
    REJECTED = 'Pipe transport is for pipes/sockets only.'
    # A __dict__: pause_reading/resume_reading are Python methods here, and code
    # may replace them on the instance as on asyncio's transports (its tests do).
    __slots__ = ('_loop', '_core', '__weakref__', '__dict__') + _READ_METHODS

    max_size = 256 * 1024  # asyncio's: the most one read takes

    @property
    def _paused(self):
        return self._core._status()[1]

    def is_reading(self):
        closing, paused = self._core._status()[:2]
        return not (paused or closing)

    def pause_reading(self):
        if self._core._set_paused(True) and self._loop.get_debug():
            logger.debug('%r pauses reading', self)

    def resume_reading(self):
        if self._core._set_paused(False) and self._loop.get_debug():
            logger.debug('%r resumes reading', self)


class _WritePipeTransport(_PipeTransport, transports._FlowControlMixin, transports.WriteTransport):
    CORE_METHODS = _WRITE_METHODS
    REJECTED = 'Pipe transport is only for pipes, sockets and character devices'
    WRITE = True
    __slots__ = ('_core', '__weakref__') + _WRITE_METHODS

    @property
    def _protocol_paused(self):
        return self._core._status()[3]

    @property
    def _conn_lost(self):
        return self._core._status()[2]

    def _get_write_buffer_size(self):
        return self._core.get_write_buffer_size()


class PipesMixin:
    """``connect_read_pipe`` / ``connect_write_pipe`` for ``ferroloop.Loop``."""

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def connect_read_pipe(self, protocol_factory, pipe):
        """Register the read end of ``pipe`` (a pipe, FIFO, socket or character
        device) with a new protocol; return ``(transport, protocol)``."""
        return await self._connect_pipe(protocol_factory, pipe, self._make_read_pipe_transport, 'Read')

    async def connect_write_pipe(self, protocol_factory, pipe):
        """Register the write end of ``pipe`` with a new protocol; return
        ``(transport, protocol)``."""
        return await self._connect_pipe(protocol_factory, pipe, self._make_write_pipe_transport, 'Write')

    async def _connect_pipe(self, protocol_factory, pipe, make, kind):
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = make(pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self.get_debug():
            logger.debug('%s pipe %r connected: (%r, %r)', kind, pipe.fileno(), transport, protocol)
        return transport, protocol
