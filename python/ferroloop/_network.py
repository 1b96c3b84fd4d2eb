"""Stream endpoints of the loop: ``create_connection``, ``create_server``,
``create_unix_connection``, ``create_unix_server``, ``connect_accepted_socket`` and
``sendfile``, with asyncio's arguments, checks and error messages.

This is the glue that is Python by nature (name resolution, the Happy Eyeballs race
from asyncio's own ``staggered`` helper, socket options); the transports and the
accept loops are Rust (``_transports``)."""

import collections.abc
import errno
import functools
import itertools
import os
import socket
import sys

from asyncio import base_events, constants, exceptions, staggered, tasks
from asyncio.log import logger

from ._ferroloop import inode_of, remove_if_socket
from ._tls import make_tls
from ._transports import Server, _StreamTransport, connected, make_listener

_HAS_IPv6 = hasattr(socket, 'AF_INET6')


def remove_stale_unix_socket(path):
    """Before binding a filesystem UNIX socket: remove a socket file left at `path`
    (not any other kind of file), logging what cannot be checked, as asyncio does."""
    try:
        remove_if_socket(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error('Unable to check or remove stale UNIX socket %r: %r', path, err)


def _check_ssl_socket(sock):
    # base_events._check_ssl_socket, which older Pythons lack.
    import ssl as _ssl
    if isinstance(sock, _ssl.SSLSocket):
        raise TypeError('Socket cannot be of type SSLSocket')


def _check_ssl_only_args(has_ssl, ssl_handshake_timeout, ssl_shutdown_timeout):
    """asyncio's rule: the TLS timeouts may only be given together with TLS."""
    if ssl_handshake_timeout is not None and not has_ssl:
        raise ValueError('ssl_handshake_timeout is only meaningful with ssl')
    if ssl_shutdown_timeout is not None and not has_ssl:
        raise ValueError('ssl_shutdown_timeout is only meaningful with ssl')


class NetworkMixin:

    async def _ensure_resolved(self, address, *, family=0, type=socket.SOCK_STREAM,
                               proto=0, flags=0, loop=None):
        host, port = address[:2]
        info = base_events._ipaddr_info(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]  # already a numeric address: no getaddrinfo
        return await self.getaddrinfo(host, port, family=family, type=type,
                                      proto=proto, flags=flags)

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None,
                       backlog=100, ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        listeners = self.__dict__.setdefault('_listeners', {})
        listener = make_listener(self, sock, server, backlog)
        listeners[sock.fileno()] = listener
        listener.start()

    def _stop_serving(self, sock):
        fd = sock.fileno()
        listener = self.__dict__.get('_listeners', {}).pop(fd, None)
        if listener is not None:
            listener.detach()
        elif fd >= 0:
            self.remove_reader(fd)
        sock.close()

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return _StreamTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None,
                            server=None, ssl_handshake_timeout=None,
                            ssl_shutdown_timeout=None, call_connection_made=True):
        """A stream transport whose protocol is the TLS layer; returns the
        application's transport (``waiter`` completes when the handshake did)."""
        tls = make_tls(self, protocol, sslcontext, waiter, server_side, server_hostname,
                       ssl_handshake_timeout, ssl_shutdown_timeout, call_connection_made)
        _StreamTransport(self, rawsock, tls, None, extra, server)
        return tls._app_transport

    async def _create_connection_transport(self, sock, protocol_factory, ssl=None,
                                           server_hostname=None, server_side=False,
                                           ssl_handshake_timeout=None,
                                           ssl_shutdown_timeout=None):
        sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if ssl:
            sslcontext = None if isinstance(ssl, bool) else ssl
            try:
                transport = self._make_ssl_transport(
                    sock, protocol, sslcontext, waiter, server_side=server_side,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout)
            except BaseException:
                # A bad timeout is only found here, after connecting: asyncio
                # leaves the socket to the garbage collector, we close it.
                sock.close()
                raise
        else:
            transport = self._make_socket_transport(sock, protocol, waiter)
        return await connected(transport, protocol, waiter)

    async def _connect_sock(self, exceptions, addr_info, local_addr_infos=None):
        """Create, bind (``local_addr``) and connect one socket; failures are
        recorded in ``exceptions`` for the caller's combined error."""
        my_exceptions = []
        exceptions.append(my_exceptions)
        family, type_, proto, _, address = addr_info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_addr_infos is not None:
                for lfamily, _, _, _, laddr in local_addr_infos:
                    if lfamily != family:
                        continue
                    try:
                        sock.bind(laddr)
                        break
                    except OSError as exc:
                        msg = (f'error while attempting to bind on address '
                               f'{laddr!r}: {exc.strerror.lower()}')
                        my_exceptions.append(OSError(exc.errno, msg))
                else:
                    if my_exceptions:
                        raise my_exceptions.pop()
                    raise OSError(f'no matching local address with {family=} found')
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            my_exceptions.append(exc)
            if sock is not None:
                sock.close()
            raise
        except:
            if sock is not None:
                sock.close()
            raise
        finally:
            exceptions = my_exceptions = None

    async def create_connection(self, protocol_factory, host=None, port=None, *,
                                ssl=None, family=0, proto=0, flags=0, sock=None,
                                local_addr=None, server_hostname=None,
                                ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                                happy_eyeballs_delay=None, interleave=None,
                                all_errors=False):
        """Connect to a TCP server; return ``(transport, protocol)``."""
        if server_hostname is not None and not ssl:
            raise ValueError('server_hostname is only meaningful with ssl')
        if server_hostname is None and ssl:
            if not host:
                raise ValueError('You must set server_hostname when using ssl without a host')
            server_hostname = host
        _check_ssl_only_args(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _check_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError('host/port and sock can not be specified at the same time')
            infos = await self._ensure_resolved(
                (host, port), family=family, type=socket.SOCK_STREAM, proto=proto,
                flags=flags)
            if not infos:
                raise OSError('getaddrinfo() returned empty list')
            if local_addr is not None:
                laddr_infos = await self._ensure_resolved(
                    local_addr, family=family, type=socket.SOCK_STREAM, proto=proto,
                    flags=flags)
                if not laddr_infos:
                    raise OSError('getaddrinfo() returned empty list')
            else:
                laddr_infos = None
            if interleave:
                infos = base_events._interleave_addrinfos(infos, interleave)

            exceptions = []
            if happy_eyeballs_delay is None:
                for addrinfo in infos:
                    try:
                        sock = await self._connect_sock(exceptions, addrinfo, laddr_infos)
                        break
                    except OSError:
                        continue
            else:
                sock, _, _ = await staggered.staggered_race(
                    (functools.partial(self._connect_sock, exceptions, addrinfo, laddr_infos)
                     for addrinfo in infos),
                    happy_eyeballs_delay, loop=self)

            if sock is None:
                exceptions = [exc for sub in exceptions for exc in sub]
                try:
                    if all_errors and sys.version_info >= (3, 11):  # ExceptionGroup is 3.11+
                        raise ExceptionGroup('create_connection failed', exceptions)
                    if len(exceptions) == 1:
                        raise exceptions[0]
                    model = str(exceptions[0])
                    if all(str(exc) == model for exc in exceptions):
                        raise exceptions[0]
                    raise OSError('Multiple exceptions: {}'.format(
                        ', '.join(str(exc) for exc in exceptions)))
                finally:
                    exceptions = None
        else:
            if sock is None:
                raise ValueError('host and port was not specified and no sock specified')
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f'A Stream Socket was expected, got {sock!r}')

        transport, protocol = await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        if self.get_debug():
            sock = transport.get_extra_info('socket')
            logger.debug('%r connected to %s:%r: (%r, %r)', sock, host, port, transport, protocol)
        return transport, protocol

    async def _create_server_getaddrinfo(self, host, port, family, flags):
        infos = await self._ensure_resolved(
            (host, port), family=family, type=socket.SOCK_STREAM, flags=flags)
        if not infos:
            raise OSError(f'getaddrinfo({host!r}) returned empty list')
        return infos

    async def create_server(self, protocol_factory, host=None, port=None, *,
                            family=socket.AF_UNSPEC, flags=socket.AI_PASSIVE, sock=None,
                            backlog=100, ssl=None, reuse_address=None, reuse_port=None,
                            keep_alive=None, ssl_handshake_timeout=None,
                            ssl_shutdown_timeout=None, start_serving=True):
        """Create a TCP server listening on ``host``/``port`` (or ``sock``)."""
        if isinstance(ssl, bool):
            raise TypeError('ssl argument must be an SSLContext or None')
        _check_ssl_only_args(ssl is not None, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _check_ssl_socket(sock)

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError('host/port and sock can not be specified at the same time')
            if reuse_address is None:
                reuse_address = os.name == 'posix' and sys.platform != 'cygwin'
            sockets = []
            if host == '':
                hosts = [None]
            elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
                hosts = [host]
            else:
                hosts = host
            fs = [self._create_server_getaddrinfo(h, port, family=family, flags=flags)
                  for h in hosts]
            infos = await tasks.gather(*fs)
            infos = set(itertools.chain.from_iterable(infos))

            completed = False
            try:
                for res in infos:
                    af, socktype, proto, canonname, sa = res
                    try:
                        sock = base_events.socket.socket(af, socktype, proto)
                    except OSError:
                        if self.get_debug():
                            logger.warning('create_server() failed to create socket.socket(%r, %r, %r)',
                                           af, socktype, proto, exc_info=True)
                        continue
                    sockets.append(sock)
                    if reuse_address:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                    if reuse_port:
                        base_events._set_reuseport(sock)
                    if keep_alive:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                    if _HAS_IPv6 and af == socket.AF_INET6 and hasattr(socket, 'IPPROTO_IPV6'):
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                    try:
                        sock.bind(sa)
                    except OSError as err:
                        msg = ('error while attempting to bind on address %r: %s'
                               % (sa, err.strerror.lower()))
                        if err.errno == errno.EADDRNOTAVAIL:
                            msg += ' (maybe IPv6 is not supported on this system)'
                        raise OSError(err.errno, msg) from None
                completed = True
            finally:
                if not completed:
                    for s in sockets:
                        s.close()
        else:
            if sock is None:
                raise ValueError('Neither host/port nor sock were specified')
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f'A Stream Socket was expected, got {sock!r}')
            sockets = [sock]

        for s in sockets:
            s.setblocking(False)
        server = Server(self, sockets, protocol_factory, ssl, backlog,
                        ssl_handshake_timeout, ssl_shutdown_timeout)
        if start_serving:
            server._start_serving()
            await tasks.sleep(0)
        if self.get_debug():
            logger.info('%r is serving', server)
        return server

    async def connect_accepted_socket(self, protocol_factory, sock, *, ssl=None,
                                      ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        """Wrap an already accepted stream socket in a transport/protocol pair."""
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f'A Stream Socket was expected, got {sock!r}')
        _check_ssl_only_args(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _check_ssl_socket(sock)
        transport, protocol = await self._create_connection_transport(
            sock, protocol_factory, ssl, '', server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        if self.get_debug():
            sock = transport.get_extra_info('socket')
            logger.debug('%r handled: (%r, %r)', sock, transport, protocol)
        return transport, protocol

    # ----- Unix domain sockets ------------------------------------------------------

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None,
                                     sock=None, server_hostname=None,
                                     ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        """Connect to a Unix stream socket at ``path`` (or wrap ``sock``)."""
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError('you have to pass server_hostname when using ssl')
        else:
            if server_hostname is not None:
                raise ValueError('server_hostname is only meaningful with ssl')
            _check_ssl_only_args(False, ssl_handshake_timeout, ssl_shutdown_timeout)
        if path is not None:
            if sock is not None:
                raise ValueError('path and sock can not be specified at the same time')
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError('no path and sock were specified')
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f'A UNIX Domain Stream Socket was expected, got {sock!r}')
            sock.setblocking(False)
        return await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)

    if sys.version_info >= (3, 13):
        async def create_unix_server(self, protocol_factory, path=None, *, sock=None,
                                     backlog=100, ssl=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None, start_serving=True,
                                     cleanup_socket=True):
            """Listen on a Unix stream socket (a filesystem path, or an abstract name
            starting with a NUL). With ``cleanup_socket`` (the default), the socket
            file is removed when the server closes, if it is still the one bound."""
            return await self._create_unix_server(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, cleanup_socket)
    else:
        async def create_unix_server(self, protocol_factory, path=None, *, sock=None,
                                     backlog=100, ssl=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None, start_serving=True):
            """Listen on a Unix stream socket (a filesystem path, or an abstract name
            starting with a NUL). Before 3.13, asyncio leaves the socket file in place
            when the server closes (and has no ``cleanup_socket``): so does this."""
            return await self._create_unix_server(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, False)

    async def _create_unix_server(self, protocol_factory, path, sock, backlog, ssl,
                                  ssl_handshake_timeout, ssl_shutdown_timeout,
                                  start_serving, cleanup_socket):
        if isinstance(ssl, bool):
            raise TypeError('ssl argument must be an SSLContext or None')
        _check_ssl_only_args(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)

        if path is not None:
            if sock is not None:
                raise ValueError('path and sock can not be specified at the same time')
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if path[0] not in (0, '\x00'):
                remove_stale_unix_socket(path)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f'Address {path!r} is already in use') from None
                raise
            except:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError('path was not specified, and no sock specified')
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f'A UNIX Domain Stream Socket was expected, got {sock!r}')

        unix_cleanup = None
        if cleanup_socket:
            bound = sock.getsockname()
            if isinstance(bound, (str, bytes)) and bound and bound[0] not in (0, '\x00'):
                try:
                    unix_cleanup = (bound, inode_of(bound))
                except OSError:
                    pass
        sock.setblocking(False)
        server = Server(self, [sock], protocol_factory, ssl, backlog, ssl_handshake_timeout,
                        ssl_shutdown_timeout, unix_cleanup=unix_cleanup)
        if start_serving:
            server._start_serving()
            await tasks.sleep(0)
        return server

    # ----- TLS upgrade --------------------------------------------------------------

    async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                        server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade ``transport`` to TLS and return the new transport (asyncio's
        ``start_tls``): the TLS layer becomes the transport's protocol, and the
        handshake starts with the data already received."""
        try:
            import ssl as _ssl
        except ImportError:  # pragma: no cover
            _ssl = None
        if _ssl is None:
            raise RuntimeError('Python ssl module is not available')
        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(f'sslcontext is expected to be an instance of ssl.SSLContext, '
                            f'got {sslcontext!r}')
        if not getattr(transport, '_start_tls_compatible', False):
            raise TypeError(f'transport {transport!r} is not supported by start_tls()')
        waiter = self.create_future()
        tls = make_tls(self, protocol, sslcontext, waiter, server_side, server_hostname,
                       ssl_handshake_timeout, ssl_shutdown_timeout, False)
        # Paused first, so that the TLS layer sees no data before connection_made.
        transport.pause_reading()
        transport.set_protocol(tls)
        conmade_cb = self.call_soon(tls.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return tls._app_transport

    # ----- sendfile -----------------------------------------------------------------

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """Send ``file`` over ``transport``: zero-copy ``sendfile(2)`` once the
        transport's buffer is flushed, else (``fallback``) read and write blocks."""
        if transport.is_closing():
            raise RuntimeError('Transport is closing')
        mode = getattr(transport, '_sendfile_compatible', constants._SendfileMode.UNSUPPORTED)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f'sendfile is not supported for transport {transport!r}')
        if mode is constants._SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except exceptions.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(f'fallback is disabled and native sendfile is not '
                               f'supported for transport {transport!r}')
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transp, file, offset, count):
        core = getattr(transp, '_core', None)
        if core is None:
            raise exceptions.SendfileNotAvailableError('sendfile syscall is not supported')
        resume_reading = transp.is_reading()
        transp.pause_reading()
        detached = False
        try:
            # Inside the try: a cancellation while the buffer drains must still
            # reset the waiter and resume reading (asyncio leaves the transport
            # stuck: writes refused, close() never completing).
            await transp._make_empty_waiter()
            core._detach_fd()
            detached = True
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            if detached:
                core._reattach_fd()
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()

    async def _sendfile_fallback(self, transp, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = min(count, 16384) if count else 16384
        buf = bytearray(blocksize)
        total_sent = 0
        proto = base_events._SendfileFallbackProtocol(transp)
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total_sent
                await proto.drain()
                transp.write(view[:read])
                total_sent += read
        finally:
            if total_sent > 0 and hasattr(file, 'seek'):
                file.seek(offset + total_sent)
            await proto.restore()
