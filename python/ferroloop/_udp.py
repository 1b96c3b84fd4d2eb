"""Datagram endpoints: ``loop.create_datagram_endpoint`` with asyncio's arguments,
checks and error messages, and the datagram transport.

``_DatagramTransport`` is an ``asyncio.DatagramTransport`` (and an
``asyncio.Transport``, as asyncio's own is) whose work is done by the Rust
``DatagramTransportCore``; like the stream transport it holds its core, and its
``sendto`` is a C method calling the core directly (see ``_transports``)."""

import socket
import sys
import warnings

from asyncio import base_events, transports
from asyncio.log import logger

from ._ferroloop import DatagramTransportCore, install_transport_method
from ._network import remove_stale_unix_socket
from ._transports import _CoreTransport, connected

# 3.13 sends empty datagrams and counts 8 header bytes per queued datagram.
_PY313 = sys.version_info >= (3, 13)


class _DatagramTransport(_CoreTransport, transports.DatagramTransport):
    __slots__ = ()

    max_size = 256 * 1024

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        self._init_extra(loop, sock, extra)
        core = DatagramTransportCore(loop, sock, protocol, self, address,
                                     bool(self._extra['peername']), _PY313, 8 if _PY313 else 0)
        self._start(core, protocol, waiter)

    @property
    def _address(self):
        return self._core._address


install_transport_method(_DatagramTransport, 'sendto')

_unset = object()


class DatagramMixin:

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return _DatagramTransport(self, sock, protocol, address, waiter, extra)

    if sys.version_info >= (3, 11):
        async def create_datagram_endpoint(self, protocol_factory, local_addr=None,
                                           remote_addr=None, *, family=0, proto=0, flags=0,
                                           reuse_port=None, allow_broadcast=None, sock=None):
            """Create a datagram endpoint; return ``(transport, protocol)``."""
            return await self._create_datagram_endpoint(
                protocol_factory, local_addr, remote_addr, family, proto, flags,
                reuse_port, allow_broadcast, sock)
    else:
        async def create_datagram_endpoint(self, protocol_factory, local_addr=None,
                                           remote_addr=None, *, family=0, proto=0, flags=0,
                                           reuse_address=_unset, reuse_port=None,
                                           allow_broadcast=None, sock=None):
            """Create a datagram endpoint; return ``(transport, protocol)``."""
            return await self._create_datagram_endpoint(
                protocol_factory, local_addr, remote_addr, family, proto, flags,
                reuse_port, allow_broadcast, sock, reuse_address)

    async def _create_datagram_endpoint(self, protocol_factory, local_addr, remote_addr,
                                        family, proto, flags, reuse_port, allow_broadcast,
                                        sock, reuse_address=_unset):
        if sock is not None:
            if sys.version_info >= (3, 13):
                if sock.type == socket.SOCK_STREAM:
                    raise ValueError(f'A datagram socket was expected, got {sock!r}')
            elif sock.type != socket.SOCK_DGRAM:
                raise ValueError(f'A UDP Socket was expected, got {sock!r}')
            if (local_addr or remote_addr or family or proto or flags or
                    (reuse_address is not _unset and reuse_address) or
                    reuse_port or allow_broadcast):
                opts = dict(local_addr=local_addr, remote_addr=remote_addr,
                            family=family, proto=proto, flags=flags)
                if reuse_address is not _unset:
                    opts['reuse_address'] = reuse_address
                opts.update(reuse_port=reuse_port, allow_broadcast=allow_broadcast)
                problems = ', '.join(f'{k}={v}' for k, v in opts.items() if v)
                raise ValueError(f'socket modifier keyword arguments can not be used '
                                 f'when sock is specified. ({problems})')
            sock.setblocking(False)
            r_addr = None
        else:
            if not (local_addr or remote_addr):
                if family == 0:
                    raise ValueError('unexpected address family')
                addr_pairs_info = (((family, proto), (None, None)),)
            elif hasattr(socket, 'AF_UNIX') and family == socket.AF_UNIX:
                for addr in (local_addr, remote_addr):
                    if addr is not None and not isinstance(addr, str):
                        raise TypeError('string is expected')
                if local_addr and local_addr[0] not in (0, '\x00'):
                    remove_stale_unix_socket(local_addr)
                addr_pairs_info = (((family, proto), (local_addr, remote_addr)),)
            else:
                # Addresses joined by (family, proto), in resolution order.
                addr_infos = {}
                for idx, addr in ((0, local_addr), (1, remote_addr)):
                    if addr is not None:
                        if sys.version_info >= (3, 11):
                            if not (isinstance(addr, tuple) and len(addr) == 2):
                                raise TypeError('2-tuple is expected')
                        else:
                            assert isinstance(addr, tuple) and len(addr) == 2, '2-tuple is expected'
                        infos = await self._ensure_resolved(
                            addr, family=family, type=socket.SOCK_DGRAM, proto=proto,
                            flags=flags, loop=self)
                        if not infos:
                            raise OSError('getaddrinfo() returned empty list')
                        for fam, _, pro, _, address in infos:
                            key = (fam, pro)
                            if key not in addr_infos:
                                addr_infos[key] = [None, None]
                            addr_infos[key][idx] = address
                # Each given address needs an entry for the (family, proto) pair.
                addr_pairs_info = [
                    (key, addr_pair) for key, addr_pair in addr_infos.items()
                    if not ((local_addr and addr_pair[0] is None) or
                            (remote_addr and addr_pair[1] is None))]
                if not addr_pairs_info:
                    raise ValueError('can not get address information')

            if reuse_address is not _unset:  # 3.10 (bpo-37228)
                if reuse_address:
                    raise ValueError('Passing `reuse_address=True` is no longer supported, '
                                     'as the usage of SO_REUSEPORT in UDP poses a '
                                     'significant security concern.')
                warnings.warn('The *reuse_address* parameter has been deprecated as of '
                              '3.5.10 and is scheduled for removal in 3.11.',
                              DeprecationWarning, stacklevel=3)

            exceptions = []
            for (family, proto), (local_address, remote_address) in addr_pairs_info:
                sock = None
                r_addr = None
                try:
                    sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                    if reuse_port:
                        base_events._set_reuseport(sock)
                    if allow_broadcast:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.setblocking(False)
                    if local_addr:
                        sock.bind(local_address)
                    if remote_addr:
                        if not allow_broadcast:
                            await self.sock_connect(sock, remote_address)
                        r_addr = remote_address
                except OSError as exc:
                    if sock is not None:
                        sock.close()
                    exceptions.append(exc)
                except:
                    if sock is not None:
                        sock.close()
                    raise
                else:
                    break
            else:
                raise exceptions[0]

        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_datagram_transport(sock, protocol, r_addr, waiter)
        if self.get_debug():
            if local_addr:
                logger.info('Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)',
                            local_addr, remote_addr, transport, protocol)
            else:
                logger.debug('Datagram endpoint remote_addr=%r created: (%r, %r)',
                             remote_addr, transport, protocol)
        return await connected(transport, protocol, waiter)
