"""The stream transport (TCP and Unix sockets) and the server object.

``_StreamTransport`` is an ``asyncio.Transport`` whose work is done by the Rust
``StreamTransportCore``. ``asyncio.BaseTransport`` declares an instance slot
(``_extra``), so no class can have both it and a Rust class as bases (CPython
refuses the layout); the transport holds its core instead. ``write`` is a C method
of the class itself (``install_transport_method``) that calls the core in the
``_core`` slot, so ``transport.write(data)`` is one call into Rust, with no Python
frame and no bound method; the other methods are one-line Python methods calling
the core (one frame). It subclasses
``transports._FlowControlMixin`` like asyncio's own socket transport, which
``loop.sendfile``'s fallback protocol insists on.

``Server`` is an ``asyncio.AbstractServer`` with the semantics of 3.13's
``asyncio.Server`` (``close_clients``, ``abort_clients``; ``wait_closed`` waits for
every connection, but for the running Python's rule once closed); its accept
loops are Rust ``Listener`` objects."""

import errno
import sys
import warnings
import weakref

from asyncio import constants, events, exceptions, futures, tasks, transports, trsock
from asyncio.base_events import _set_nodelay
from asyncio.log import logger

from ._ferroloop import Listener, StreamTransportCore, install_transport_method, remove_if_inode

_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

# Before 3.12 `Server.wait_closed()` on a closed server returns at once, whatever
# connections are still open; code written for those versions relies on it
# (aiosmtpd's controller stops its server so, with a connection left open).
_WAIT_CLOSED_RETURNS_ONCE_CLOSED = sys.version_info < (3, 12)


def _name_or_none(query):
    try:
        return query()
    except OSError:
        return None


class _CoreTransport(transports._FlowControlMixin):
    """What the stream and datagram transports share: the socket's extra info, a
    Rust core doing the work, the start-up order asyncio uses, and the private
    attributes, repr and unclosed-transport warning asyncio's selector transports
    have. ``write``/``sendto`` are C methods of the concrete classes, reaching the
    core through the ``_core`` slot (see the module's docstring). No
    ``__getattr__``: it would slow down every attribute lookup. A ``__dict__``, as
    asyncio's transports have, lets code replace a method on an instance
    (``mock.patch.object(transport, 'close')``)."""
    __slots__ = ('_core', '__weakref__', '__dict__')

    def _init_extra(self, loop, sock, extra):
        """asyncio's extra info: the socket, and its name and the peer's unless given."""
        transports.BaseTransport.__init__(self, extra)
        self._loop = loop
        self._extra['socket'] = trsock.TransportSocket(sock)
        if 'sockname' not in self._extra:
            self._extra['sockname'] = _name_or_none(sock.getsockname)
        if 'peername' not in self._extra:
            self._extra['peername'] = _name_or_none(sock.getpeername)

    def _start(self, core, protocol, waiter):
        """Registers ``core`` with the loop, then queues ``connection_made``; reading
        starts after it has run, as in asyncio."""
        loop = self._loop
        self._core = core
        core._register()
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def close(self):
        self._core.close()

    def abort(self):
        self._core.abort()

    def is_closing(self):
        return self._core.is_closing()

    def is_reading(self):
        return self._core.is_reading()

    def pause_reading(self):
        self._core.pause_reading()

    def resume_reading(self):
        self._core.resume_reading()

    def get_protocol(self):
        return self._core.get_protocol()

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    def set_write_buffer_limits(self, high=None, low=None):
        self._core.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    @property
    def _sock(self):
        return self._core._sock

    @property
    def _sock_fd(self):
        return self._core._sock_fd

    @property
    def _protocol(self):
        return self._core.get_protocol()

    @property
    def _protocol_paused(self):
        return self._core._protocol_paused

    @property
    def _closing(self):
        return self._core._closing

    @property
    def _conn_lost(self):
        return self._core._conn_lost

    @property
    def _paused(self):
        return self._core._paused

    def _get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def __repr__(self):
        core = self._core
        info = [type(self).__name__]
        sock = core._sock
        if sock is None:
            info.append('closed')
        elif core._closing:
            info.append('closing')
        info.append(f'fd={core._sock_fd}')
        if sock is not None and not self._loop.is_closed():
            info.append('read=polling' if core._reader_active else 'read=idle')
            bufsize = core.get_write_buffer_size()
            info.append(f"write=<{'polling' if bufsize else 'idle'}, bufsize={bufsize}>")
        return '<{}>'.format(' '.join(info))

    def __del__(self, _warn=warnings.warn):
        try:
            sock = self._core._sock
        except AttributeError:
            return
        if sock is not None:
            try:
                _warn(f'unclosed transport {self!r}', ResourceWarning, source=self)
            finally:  # also when warnings are errors: the loop must let go of the fd
                self._core._detach_fd()
                sock.close()
                server = getattr(self, '_server', None)
                if server is not None:
                    server._detach(self)


class _StreamTransport(_CoreTransport):
    __slots__ = ('_server',)

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        self._init_extra(loop, sock, extra)
        self._server = server
        _set_nodelay(sock)
        self._start(StreamTransportCore(loop, sock, protocol, self, server), protocol, waiter)
        if server is not None:
            server._attach(self)

    @property
    def _empty_waiter(self):
        return self._core._empty_waiter

    def writelines(self, list_of_data):
        self._core.writelines(list_of_data)

    def write_eof(self):
        self._core.write_eof()

    def can_write_eof(self):
        return self._core.can_write_eof()

    def _make_empty_waiter(self):
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self):
        self._core._reset_empty_waiter()

    def _force_close(self, exc):
        self._core._force_close(exc)


install_transport_method(_StreamTransport, 'write')


async def connected(transport, protocol, waiter):
    """Waits for ``connection_made`` (``waiter``) and returns ``(transport, protocol)``
    as the loop's ``create_*`` methods do; if the wait fails or is cancelled the
    transport is closed first, as asyncio does."""
    try:
        await waiter
    except:
        transport.close()
        raise
    return transport, protocol


def make_listener(loop, sock, server, backlog):
    """The Rust accept loop of ``sock``, handing connections to ``server``."""

    def on_error(exc):
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_RESOURCE_ERRORS:
            # Out of fds or memory: report, stop accepting for a while (pending
            # connections stay in the backlog) instead of spinning, then resume.
            loop.call_exception_handler({
                'message': 'socket.accept() out of system resource',
                'exception': exc,
                'socket': trsock.TransportSocket(sock),
            })
            listener.stop()
            loop.call_later(constants.ACCEPT_RETRY_DELAY, resume)
        else:
            raise exc

    def resume():
        if server is None or (server._sockets is not None and server._serving):
            listener.start()

    on_accept = server._on_accept if server is not None else (lambda conn, addr: conn.close())
    listener = Listener(loop, sock, on_accept, on_error, backlog)
    return listener


class Server(events.AbstractServer):
    """A listening server (``loop.create_server``/``create_unix_server``)."""

    def __init__(self, loop, sockets, protocol_factory, ssl_context, backlog,
                 ssl_handshake_timeout, ssl_shutdown_timeout=None, *, unix_cleanup=None):
        self._loop = loop
        self._sockets = sockets
        # Weak, as in asyncio 3.12+: a connection the application dropped unclosed
        # is collected (and warned about) rather than kept by its server.
        self._clients = weakref.WeakSet()
        self._waiters = []
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut = None
        self._unix_cleanup = unix_cleanup
        self._last_sockname = None

    def __repr__(self):
        return f'<{self.__class__.__name__} sockets={self.sockets!r}>'

    def _local_name(self, conn):
        """The accepted socket's address, as the previous connection's tuple when equal:
        connections to one listening address then share one tuple instead of keeping
        one each (about 150 bytes per idle connection)."""
        name = _name_or_none(conn.getsockname)
        if name == self._last_sockname:
            return self._last_sockname
        self._last_sockname = name
        return name

    # Called by transports of accepted connections.
    def _attach(self, transport):
        self._clients.add(transport)

    def _detach(self, transport):
        self._clients.discard(transport)
        if not self._clients and self._sockets is None:
            self._wakeup()

    @property
    def _active_count(self):
        return len(self._clients)

    def _wakeup(self):
        waiters = self._waiters
        self._waiters = None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _start_serving(self):
        if self._serving:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop._start_serving(self._protocol_factory, sock, self._ssl_context, self,
                                      self._backlog, self._ssl_handshake_timeout,
                                      self._ssl_shutdown_timeout)

    def _on_accept(self, conn, addr):
        loop = self._loop
        if loop.get_debug():
            logger.debug('%r got a new connection from %r: %r', self, addr, conn)
        conn.setblocking(False)
        protocol = transport = None
        try:
            protocol = self._protocol_factory()
            extra = {'peername': addr, 'sockname': self._local_name(conn)}
            if self._ssl_context:
                waiter = loop.create_future()
                transport = loop._make_ssl_transport(
                    conn, protocol, self._ssl_context, waiter, server_side=True, extra=extra,
                    server=self, ssl_handshake_timeout=self._ssl_handshake_timeout,
                    ssl_shutdown_timeout=self._ssl_shutdown_timeout)
                waiter.add_done_callback(
                    lambda w: self._on_handshake_done(w, protocol, transport))
            else:
                transport = _StreamTransport(loop, conn, protocol, None, extra, self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is not None:
                transport.close()
            else:
                conn.close()
            self._report_accept_error(exc, protocol, transport)

    def _on_handshake_done(self, waiter, protocol, transport):
        """The TLS handshake of an accepted connection ended: on failure the
        transport is closed (and the error reported in debug mode), as asyncio's
        ``_accept_connection2`` does."""
        exc = None if waiter.cancelled() else waiter.exception()
        if exc is None and not waiter.cancelled():
            return
        transport.close()
        if exc is not None:
            self._report_accept_error(exc, protocol, transport)

    def _report_accept_error(self, exc, protocol, transport):
        loop = self._loop
        if loop.get_debug():  # asyncio reports these in debug mode only
            context = {
                'message': 'Error on transport creation for incoming connection',
                'exception': exc,
            }
            if protocol is not None:
                context['protocol'] = protocol
            if transport is not None:
                context['transport'] = transport
            loop.call_exception_handler(context)

    def get_loop(self):
        return self._loop

    def is_serving(self):
        return self._serving

    @property
    def sockets(self):
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def close(self):
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for sock in sockets:
            self._loop._stop_serving(sock)
        if self._unix_cleanup is not None:
            path, ino = self._unix_cleanup
            self._unix_cleanup = None
            try:
                remove_if_inode(path, ino)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error('Unable to clean up listening UNIX socket %r: %r', path, err)
        self._serving = False
        if self._serving_forever_fut is not None and not self._serving_forever_fut.done():
            self._serving_forever_fut.cancel()
            self._serving_forever_fut = None
        if not self._clients:
            self._wakeup()

    def close_clients(self):
        for transport in list(self._clients):
            transport.close()

    def abort_clients(self):
        for transport in list(self._clients):
            transport.abort()

    async def start_serving(self):
        self._start_serving()
        # Let the listeners pick up connections already waiting, as asyncio does.
        await tasks.sleep(0)

    async def serve_forever(self):
        if self._serving_forever_fut is not None:
            raise RuntimeError(f'server {self!r} is already being awaited on serve_forever()')
        if self._sockets is None:
            raise RuntimeError(f'server {self!r} is closed')
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self):
        """Wait until the server is closed and every connection it accepted ended
        (before 3.12: return at once if it is closed already)."""
        if self._waiters is None or (_WAIT_CLOSED_RETURNS_ONCE_CLOSED and self._sockets is None):
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter
